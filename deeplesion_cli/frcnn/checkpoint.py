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
resume), ``prepared_config_hash`` (the prepared folder it trained on; resume refuses another).
There is no scheduler state: the learning rate is a function of ``step``
(:mod:`deeplesion_cli.frcnn.optim`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from deeplesion_cli import __version__, atomic
from deeplesion_cli.errors import LesionInputError

FORMAT = 1


class CheckpointError(LesionInputError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a run killed while saving
    keeps its previous checkpoint whole."""
    atomic.write_with(Path(path), lambda tmp: torch.save(state, tmp))


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


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise a torch device string (``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"--device {name}: CUDA is not available on this machine")
    return device


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


def training_state(*, model, model_args: dict, classes, options, counters: Counters, optimizer,
                   scaler, sampler, threads: int, prepared_config_hash) -> dict:
    """The checkpoint dict of a run after ``counters.epoch`` epochs (module docstring);
    ``model`` unwrapped from DDP, ``classes`` a :class:`~deeplesion_cli.frcnn.data.ClassMap`."""
    return {
        "format": FORMAT, "tool": "lesion", "version": __version__,
        "model_args": model_args, "model": model.state_dict(),
        "classes": {"names": list(classes.names), "category_ids": list(classes.category_ids)},
        "options": options.to_json(), "epoch": counters.epoch, "step": counters.step,
        "images": counters.images, "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "sampler": sampler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "best": counters.best, "ema_loss": counters.ema_loss, "threads": threads,
        "prepared_config_hash": prepared_config_hash}
