"""``last.pt`` / ``best.pt``: what a Faster R-CNN run saves, how a model is rebuilt from it, and
where a resumed run takes up.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read (tensors, numbers,
strings, lists and dicts only: nothing in it executes code when loaded):

``format`` (1), ``tool``/``version``, ``model_args`` (the keyword arguments of
:func:`deeplesion_cli.frcnn.model.build_model` without weights, enough to rebuild the identical
module), ``model`` (its ``state_dict``, unwrapped from DDP), ``classes`` (``names`` and
``category_ids`` in class-index order; model label k + 1 is class k), ``options`` (the run's
:class:`~deeplesion_cli.frcnn.options.TrainOptions` as a dict), ``epoch`` (epochs completed),
``step`` (optimiser steps done), ``images`` (images trained on), ``optimizer``,
``scaler`` (AMP ``GradScaler``; empty when AMP is off), ``sampler`` (its ``state_dict``),
``rng`` (torch CPU and CUDA generator states at the save), ``best`` (selection metric name,
best value and its epoch), ``ema_loss``, ``threads`` (the CPU threads it trained with, kept on
resume), ``prepared_config_hash`` (the prepared folder it trained on; resume refuses another),
``prepared_render`` (how that folder made its pixels: ``windows_hu``, ``context``,
``spacing_mm``; ``lesion predict frcnn`` refuses a folder that makes them otherwise).
There is no scheduler state: the learning rate is a function of ``step``
(:mod:`deeplesion_cli.frcnn.optim`).

``kind`` says which of the two a file is. ``last.pt`` (``"training"``) holds all of the above:
``--resume`` continues it exactly. ``best.pt`` (``"weights"``, :func:`weights_only`) holds the
same dict without ``optimizer``, ``scaler``, ``sampler`` and ``rng``: what ``lesion predict
frcnn`` needs (weights, ``model_args``, ``classes``, ``options``, ``prepared_*``) and the
counters that say which epoch it is; with Adam about a third of ``last.pt`` (docs/formats.md).
Resuming from such a file is refused (:func:`load_for_resume`). Files written before ``kind``
existed count as ``"training"`` when they hold an ``optimizer``.

``epochs/epoch_0010.pt`` (``--save-every N``: every N-th epoch and the last one) is a
``best.pt`` of that epoch: :func:`weights_only` of its state, the same size as ``best.pt``
(:func:`epoch_path`, :func:`epoch_of_name`, :func:`save_epoch_due`).

Saving is atomic and durable (:func:`deeplesion_cli.atomic.write_durable`: temporary file, fsync,
rename): a failed save (disk full, read-only file system) leaves the previous file whole and
raises :class:`CheckpointSaveError` naming the file and the errno.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deeplesion_cli import __version__, atomic
from deeplesion_cli.errors import LesionInputError, LesionRunError

FORMAT = 1
#: the entries that only resuming needs: ``best.pt`` leaves them out (:func:`weights_only`)
TRAINING_ONLY = ("optimizer", "scaler", "sampler", "rng")
#: the folder of a run that holds the ``--save-every`` epoch checkpoints
EPOCHS_DIR = "epochs"
_EPOCH_NAME = re.compile(r"epoch_(\d+)\.pt")


def epoch_path(run_dir: Path, epoch: int) -> Path:
    """``<run>/epochs/epoch_0010.pt``: the kept weights of epoch ``epoch`` (1-based; four
    digits at least, so that the names sort in epoch order up to epoch 9999)."""
    return Path(run_dir) / EPOCHS_DIR / f"epoch_{epoch:04d}.pt"


def epoch_of_name(name: str) -> int | None:
    """The epoch a file name of :func:`epoch_path` carries (``epoch_0010.pt`` -> 10), or None
    for another name."""
    match = _EPOCH_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def save_epoch_due(epoch: int, epochs: int, save_every: int | None) -> bool:
    """Whether epoch ``epoch`` (1-based) of a run of ``epochs`` keeps its weights under
    ``--save-every save_every``: every ``save_every``-th epoch and the last one; never without
    ``--save-every``."""
    return bool(save_every) and (epoch % save_every == 0 or epoch == epochs)


class CheckpointError(LesionInputError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


class CheckpointSaveError(LesionRunError):
    """A checkpoint that could not be written (disk full, read-only...): the message names the
    file and the errno; the previous file of that name is intact. ``errno`` is the OSError's."""

    def __init__(self, message: str, errno_code: int | None = None):
        super().__init__(message)
        self.errno = errno_code


def describe_os_error(exc: OSError) -> str:
    """``No space left on device (errno ENOSPC)``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    return f"{reason} (errno {name})" if name else reason


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or what torch's writer wrapped), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def save(path: Path, state: dict) -> None:
    """``torch.save`` into a temporary file beside ``path``, fsync, rename (module docstring): a
    run killed or failing while saving keeps its previous checkpoint whole.
    :class:`CheckpointSaveError` naming ``path`` and the errno when it cannot be written."""
    path = Path(path)
    try:
        atomic.write_durable(path, lambda file: torch.save(state, file))
    except (OSError, RuntimeError) as exc:
        os_error = _os_error_in(exc)
        if os_error is None:
            # torch's zip writer may report a failed write as RuntimeError without the errno
            if "write" not in str(exc).lower():
                raise
            raise CheckpointSaveError(f"cannot write {path}: {exc}") from None
        raise CheckpointSaveError(f"cannot write {path}: {describe_os_error(os_error)}",
                                  os_error.errno) from None


def load(path: Path) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable lesion checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model_args" not in state:
        raise CheckpointError(f"{path}: not a `lesion train frcnn` checkpoint (no model_args); "
                              "torchvision weights go to `lesion train frcnn --weights`")
    return state


def weights_only(state: dict) -> dict:
    """``state`` (a :func:`training_state`) without :data:`TRAINING_ONLY`, marked ``kind``
    ``"weights"``: what ``best.pt`` holds. The tensors are shared, not copied."""
    small = {k: v for k, v in state.items() if k not in TRAINING_ONLY}
    small["kind"] = "weights"
    return small


def is_weights_only(state: dict) -> bool:
    """Whether a loaded (or peeked) checkpoint lacks the training state ``--resume`` needs."""
    kind = state.get("kind")
    return kind == "weights" if kind is not None else "optimizer" not in state


def load_for_resume(path: Path) -> dict:
    """:func:`load` of a checkpoint a run resumes from: :class:`CheckpointError` naming the file
    when it holds the weights only (a ``best.pt``, or a copy of one)."""
    state = load(path)
    if is_weights_only(state):
        raise CheckpointError(
            f"{path} holds model weights only (a best.pt: no optimiser, AMP scaler or sampler "
            "state), so a run cannot resume from it: --resume needs the run's last.pt. Predict "
            f"with it (`lesion predict frcnn {path} ...`), or start a new run from its weights "
            f"(`lesion train frcnn ... --weights {path}`)")
    return state


def load_for_predict(path: Path) -> dict:
    """:func:`load` without :data:`TRAINING_ONLY` (``best.pt`` or ``last.pt`` alike), read
    through a memory map so that a ``last.pt``'s optimiser state is never read from disk."""
    state = _load_mapped(path)
    return {k: v for k, v in state.items() if k not in TRAINING_ONLY}


def _load_mapped(path) -> dict:
    """The checkpoint through a memory map (tensors are read only when used); an old or odd
    file is read whole by :func:`load`, which names what is wrong with it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old or odd file: read it whole (CheckpointError naming it)
        return load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model_args" not in state:
        return load(path)
    return state


def peek(path: Path) -> dict:
    """The small fields of a checkpoint (``epoch``, ``best``, ``prepared_config_hash``...; no
    weights), read through a memory map so that the tensors are not read."""
    state = _load_mapped(path)
    peeked = {k: v for k, v in state.items() if k != "model" and k not in TRAINING_ONLY}
    if "kind" not in peeked:  # a file older than ``kind``: say which it is
        peeked["kind"] = "training" if "optimizer" in state else "weights"
    return peeked


def pick_device(name: str = "auto") -> torch.device:
    """The device of one process for ``--device`` ``name`` (auto, cpu, cuda, cuda:N or N; see
    :func:`deeplesion_cli.frcnn.distributed.device_for_rank`): an input error naming the valid
    forms, or saying that this machine has no GPU."""
    from deeplesion_cli.frcnn.distributed import Dist, device_for_rank

    return device_for_rank(name, Dist())


def model_from_checkpoint(state: dict, **overrides):
    """The checkpoint's model with its weights, on the CPU, in eval mode. ``overrides`` replace
    inference-only arguments of ``build_model`` (``score_thresh``, ``detections_per_img``,
    ``nms_iou``); None keeps the checkpoint's."""
    from deeplesion_cli.frcnn.model import build_model

    args = dict(state["model_args"])
    args.update({k: v for k, v in overrides.items() if v is not None})
    model = build_model(**args, load_pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit its own model_args: {exc}") from None
    return model.eval()


# ------------------------------------------------------------------------ training state

@dataclass
class Counters:
    """Where a run stands after an epoch: what ``last.pt`` records besides the weights and the
    optimiser, and where a resumed run takes up."""

    epoch: int = 0                  # epochs completed
    step: int = 0                   # optimiser steps done
    images: int = 0                 # images trained on, all ranks
    ema_loss: float | None = None   # running loss (train.log's "avg", metrics.csv's avg_loss)
    best: dict = field(default_factory=dict)   # {"metric", "value", "epoch"} of best.pt


def restore(state: dict | None, optimizer, scaler, select: str) -> Counters:
    """The counters of ``state`` (a loaded ``last.pt``), its optimiser and AMP scaler states
    loaded into ``optimizer`` and ``scaler``; a new run (``state`` None) starts at zero with no
    best epoch for metric ``select``."""
    best = {"metric": select, "value": None, "epoch": None}
    if state is None:
        return Counters(best=best)
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Counters(state["epoch"], state["step"], state["images"], state.get("ema_loss"),
                    state.get("best", best))


def check_best(run_dir: Path, counters: Counters, select: str) -> str | None:
    """Make the best record of a resumed run (``counters.best``, from ``last.pt``) agree with
    ``best.pt`` on disk; a message saying what was wrong and what the record now is, or None.

    A record without its file (deleted, or lost by an earlier version) is cleared: selection
    starts again from the next epoch. A ``best.pt`` of another epoch (a run stopped between
    writing ``best.pt`` and ``last.pt``) is a real epoch of this run: the record follows it."""
    path = Path(run_dir) / "best.pt"
    recorded = counters.best.get("epoch")
    on_disk = peek(path) if path.is_file() else None
    if on_disk is None:
        if recorded is None:
            return None
        counters.best = {"metric": select, "value": None, "epoch": None}
        return (f"{path} is missing, though last.pt records the best {select} at epoch "
                f"{recorded}: best-checkpoint selection starts again from the next epoch")
    epoch = on_disk.get("epoch")
    if epoch == recorded:
        return None
    own = on_disk.get("best") or {}
    if own.get("epoch") == epoch and own.get("metric") == select and own.get("value") is not None:
        counters.best = {"metric": select, "value": own["value"], "epoch": epoch}
        return (f"{path} holds epoch {epoch}, but last.pt recorded the best at epoch "
                f"{recorded} (a run stopped between saving best.pt and last.pt): the best is "
                f"now epoch {epoch} ({select} {own['value']:.4f}), as on disk")
    counters.best = {"metric": select, "value": None, "epoch": None}
    return (f"{path} (epoch {epoch}) is not the best last.pt records (epoch {recorded}): "
            "best-checkpoint selection starts again from the next epoch and will replace it")


def training_state(*, model, model_args: dict, classes, options, counters: Counters, optimizer,
                   scaler, sampler, threads: int, prepared_config_hash,
                   prepared_render: dict | None = None) -> dict:
    """The checkpoint dict of a run after ``counters.epoch`` epochs (module docstring), as
    ``last.pt`` holds it (``best.pt``: :func:`weights_only` of it); ``model`` unwrapped from DDP,
    ``classes`` a :class:`~deeplesion_cli.frcnn.data.ClassMap`."""
    return {
        "format": FORMAT, "kind": "training", "tool": "lesion", "version": __version__,
        "model_args": model_args, "model": model.state_dict(),
        "classes": {"names": list(classes.names), "category_ids": list(classes.category_ids)},
        "options": options.to_json(), "epoch": counters.epoch, "step": counters.step,
        "images": counters.images, "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "sampler": sampler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "best": dict(counters.best), "ema_loss": counters.ema_loss, "threads": threads,
        "prepared_config_hash": prepared_config_hash, "prepared_render": prepared_render}
