"""Run folders as inputs: which backend wrote one, which checkpoint to predict with, and where its
detections are cached.

``lesion eval --run NAME=RUN`` and ``lesion train frcnn|yolo --test`` predict from a run folder
instead of a detections file. This module answers, for :mod:`deeplesion_cli.steps` (which does
the predicting):

* :func:`run_backend`: ``frcnn`` or ``darknet``, from the run's ``args.json`` (both backends write
  one; ``command`` is ``train frcnn`` or ``train yolo``);
* :func:`pick_checkpoint`: the file ``--checkpoint best|last`` means. Faster R-CNN: ``best.pt``
  when the run recorded a best (``last.pt``'s record), else ``last.pt``; darknet:
  ``backup/<cfg base>_best.weights`` (AlexeyAB/hank-ai with ``--map``), else
  ``backup/<cfg base>_final.weights`` (else, for a run that did not finish, its resume weights
  ``_last.weights`` / ``.backup``). A fallback is said in :attr:`RunCheckpoint.note`;
* :func:`list_checkpoints`: every progress point of a run for ``--checkpoint every`` (mAP over
  training, :mod:`deeplesion_cli.curves`): Faster R-CNN ``epochs/epoch_0010.pt`` of
  ``--save-every``, darknet ``backup/<cfg base>_<iteration>.weights`` and ``_final.weights``,
  each with its ``unit`` (epoch, iteration) and ``step``, in training order;
* :func:`cache_path`: ``<run>/detections/<split>-<checkpoint file>-<key>.json``, COCO results
  json. ``key`` is a short hash of what the detections depend on: the checkpoint file's size and
  modification time, the prepared folder (path and ``config_hash``), the split, the prediction
  options that change boxes or scores (score floor, detections per image, NMS IoU, AMP) and, for
  darknet, the cfg file's size and time. A re-run with the same inputs finds the file and
  predicts nothing; a changed checkpoint (a resumed run, a new best) makes another key.
  :func:`stale_caches` lists the older files of the same split and checkpoint, which are removed
  when a new one is written;
* :class:`RunDetections`: what :func:`deeplesion_cli.steps.predict_run` found or predicted, and
  :func:`headline`, a metrics block's figures in one line (``--test`` prints it).

Backends are imported inside the functions (torch only for a Faster R-CNN run's ``last.pt``
record), so that ``lesion --help`` stays light.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from deeplesion_cli.errors import LesionInputError

#: ``--checkpoint`` choices of one checkpoint per run
CHECKPOINTS = ("best", "last")
#: ``--checkpoint every``: each of the run's progress points (:func:`list_checkpoints`)
EVERY = "every"
#: the cache folder inside a run folder
CACHE_DIR = "detections"
#: prediction options that change the detections (the rest, such as device and workers, do not)
_KEY_OPTIONS = ("score_thresh", "max_dets", "nms_iou", "amp", "thresh", "predict_size")


class RunFolderError(LesionInputError):
    """A folder given as a run that is not one, or that holds no checkpoint to predict with."""


@dataclass(frozen=True)
class RunCheckpoint:
    """The checkpoint of a run folder that ``--checkpoint`` chose (``which`` best or last), or
    one of the run's progress points (:func:`list_checkpoints`: ``which`` ``"every"``, with its
    ``unit`` and ``step``)."""

    run_dir: Path
    backend: str                    # "frcnn" or "darknet"
    checkpoint: Path                # the file predicted with
    which: str                      # "best" or "last": what the file is
    asked: str                      # what --checkpoint asked for
    note: str | None = None         # why another file than asked was used
    cfg: Path | None = None         # darknet: the run's cfg
    darknet: str | None = None      # darknet: the binary the run trained with
    unit: str | None = None         # list_checkpoints: "epoch" or "iteration"
    step: int | None = None         # list_checkpoints: the epoch or iteration the file holds


def read_args(run_dir) -> dict:
    """A run folder's args.json; :class:`RunFolderError` when missing or unreadable."""
    path = Path(run_dir) / "args.json"
    if not Path(run_dir).is_dir():
        raise RunFolderError(f"{run_dir}: not a folder; --run takes a `lesion train frcnn` or "
                             "`lesion train yolo` run folder")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir}: no args.json; is it a `lesion train frcnn` or "
                             "`lesion train yolo` run folder?") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(doc, dict):
        raise RunFolderError(f"{path}: not a run record (expected a JSON object)")
    return doc


def run_backend(run_dir, args: dict | None = None) -> str:
    """``frcnn`` or ``darknet``: the backend that wrote ``run_dir`` (its args.json)."""
    args = read_args(run_dir) if args is None else args
    command = args.get("command")
    if command == "train frcnn":
        return "frcnn"
    if command == "train yolo":
        return "darknet"
    raise RunFolderError(f"{Path(run_dir) / 'args.json'}: command {command!r} is neither "
                         "'train frcnn' nor 'train yolo'")


def _frcnn_checkpoint(run_dir: Path, which: str) -> RunCheckpoint:
    last = run_dir / "last.pt"
    if which == "last":
        if not last.is_file():
            raise RunFolderError(f"{last}: missing; the run saved no epoch yet (--checkpoint "
                                 "last)")
        return RunCheckpoint(run_dir, "frcnn", last, "last", which)
    from deeplesion_cli.frcnn.predict import resolve_checkpoint

    path = resolve_checkpoint(run_dir)   # best.pt when the run recorded a best, else last.pt
    if path.name == "best.pt":
        return RunCheckpoint(run_dir, "frcnn", path, "best", which)
    return RunCheckpoint(run_dir, "frcnn", path, "last", which,
                         note=f"{run_dir} recorded no best epoch (no val metric yet): using "
                              "last.pt")


def darknet_cfg(run_dir: Path, args: dict) -> Path:
    """The run's cfg: its copy in the run folder (args.json's ``cfg`` names it; the folder may
    have moved since), else the recorded path."""
    recorded = args.get("cfg")
    if not recorded:
        raise RunFolderError(f"{run_dir / 'args.json'}: no cfg recorded")
    here = run_dir / Path(recorded).name
    if here.is_file():
        return here
    if Path(recorded).is_file():
        return Path(recorded)
    raise RunFolderError(f"{run_dir}: its cfg {Path(recorded).name} is missing (args.json names "
                         f"{recorded})")


def _darknet_checkpoint(run_dir: Path, args: dict, which: str) -> RunCheckpoint:
    from deeplesion_cli.formats.darknet_results import darknet_id

    cfg = darknet_cfg(run_dir, args)
    binary = (args.get("darknet") or {}).get("binary")
    backup = run_dir / "backup"
    base = darknet_id(cfg.name)
    best, final = backup / f"{base}_best.weights", backup / f"{base}_final.weights"

    def found(path: Path, kind: str, note: str | None = None) -> RunCheckpoint:
        return RunCheckpoint(run_dir, "darknet", path, kind, which, note, cfg, binary)

    if which == "best" and best.is_file():
        return found(best, "best")
    note = None
    if which == "best":
        note = (f"{run_dir} recorded no best ({best.name} is written by AlexeyAB/hank-ai "
                "darknet trained with --map): using the last weights")
    if final.is_file():
        return found(final, "last", note)
    partial = [p for p in (backup / f"{base}_last.weights", backup / f"{base}.backup")
               if p.is_file()]
    if partial:
        newest = max(partial, key=lambda p: p.stat().st_mtime_ns)
        return found(newest, "last", (note + "; " if note else "")
                     + f"the run did not finish ({final.name} missing): using {newest.name}")
    raise RunFolderError(f"{backup}: no {final.name} (nor {best.name}, {base}_last.weights, "
                         f"{base}.backup); has the run trained?")


def pick_checkpoint(run_dir, which: str = "best") -> RunCheckpoint:
    """The checkpoint ``--checkpoint which`` means in ``run_dir`` (module docstring)."""
    if which not in CHECKPOINTS:
        raise RunFolderError(f"--checkpoint {which!r}: one of {', '.join(CHECKPOINTS)}")
    run_dir = Path(run_dir)
    args = read_args(run_dir)
    if run_backend(run_dir, args) == "frcnn":
        return _frcnn_checkpoint(run_dir, which)
    return _darknet_checkpoint(run_dir, args, which)


def _frcnn_progress(run_dir: Path) -> list[RunCheckpoint]:
    """``epochs/epoch_*.pt`` of a Faster R-CNN run, each at the epoch its name carries (a file
    named otherwise: the ``epoch`` its small fields record, read through a memory map)."""
    from deeplesion_cli.frcnn import checkpoint as ckpt

    found = []
    for path in sorted((run_dir / ckpt.EPOCHS_DIR).glob("epoch_*.pt")):
        epoch = ckpt.epoch_of_name(path.name)
        if epoch is None:
            epoch = ckpt.peek(path).get("epoch")
        if epoch is None:
            raise RunFolderError(f"{path}: records no epoch; is it a `lesion train frcnn "
                                 "--save-every` checkpoint?")
        found.append(RunCheckpoint(run_dir, "frcnn", path, EVERY, EVERY, unit="epoch",
                                   step=int(epoch)))
    return found


def _darknet_final_iteration(run_dir: Path, args: dict, cfg: Path) -> int | None:
    """The iteration of a darknet run's ``_final.weights``: the ``max_batches`` the run trained
    to (args.json's ``options.max_batches``, else the run's cfg). All three forks write
    ``_final`` once their iteration counter reaches ``max_batches`` (a run stopped earlier has
    none), so this is the file's iteration whatever the fork and the number of GPUs. Not the
    weights header's ``seen`` divided by the batch: AlexeyAB counts ``seen`` over every GPU,
    so the quotient depends on ``-gpus``; nor metrics.csv's last row, which a run that printed
    no iteration line (or lost its log) lacks."""
    options = args.get("options") or {}
    value = options.get("max_batches") if isinstance(options, dict) else None
    if value is None:
        from deeplesion_cli.darknet.cfg import CfgFileError, read_cfg_file

        try:
            value = read_cfg_file(cfg).net.get("max_batches")
        except (CfgFileError, OSError, ValueError, AttributeError):
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _darknet_progress(run_dir: Path, args: dict) -> list[RunCheckpoint]:
    """``backup/<base>_<N>.weights`` (iteration N, as darknet names it) and
    ``<base>_final.weights`` (:func:`_darknet_final_iteration`); ``_last``, ``_best`` and
    ``.backup`` are resume or selection files, not progress points. A numbered file at the
    final's iteration (AlexeyAB saves ``_1000`` and ``_final`` at ``max_batches=1000``: the same
    weights) is left out for ``_final``."""
    import re

    from deeplesion_cli.formats.darknet_results import darknet_id

    cfg = darknet_cfg(run_dir, args)
    binary = (args.get("darknet") or {}).get("binary")
    backup = run_dir / "backup"
    base = darknet_id(cfg.name)
    numbered = re.compile(re.escape(base) + r"_(\d+)\.weights")
    by_step: dict[int, Path] = {}
    for path in sorted(backup.glob(f"{base}_*.weights")):
        match = numbered.fullmatch(path.name)
        if match:
            by_step[int(match.group(1))] = path
    final = backup / f"{base}_final.weights"
    if final.is_file():
        step = _darknet_final_iteration(run_dir, args, cfg)
        if step is None:
            raise RunFolderError(f"{final}: its iteration is unknown (no max_batches in "
                                 f"{run_dir / 'args.json'} nor in {cfg})")
        by_step[step] = final
    return [RunCheckpoint(run_dir, "darknet", path, EVERY, EVERY, None, cfg, binary,
                          unit="iteration", step=step)
            for step, path in sorted(by_step.items())]


def list_checkpoints(run_dir) -> list[RunCheckpoint]:
    """Every progress point of run folder ``run_dir``, in training order (``which`` and
    ``asked`` ``"every"``, with ``unit`` and ``step``):

    * Faster R-CNN: ``epochs/epoch_0010.pt``, kept by ``lesion train frcnn --save-every N``
      (every N-th epoch and the last), unit ``epoch``;
    * darknet: ``backup/<base>_<N>.weights``, unit ``iteration`` (AlexeyAB and hank-ai save one
      every 1,000 iterations, every 10,000 once ``max_batches`` >= 10,000; pjreddie every 100
      up to 1,000, then every 10,000: docs/darknet.md section 5), then ``<base>_final.weights``
      at the run's last iteration (:func:`_darknet_final_iteration`).

    :class:`RunFolderError` naming what was looked for, and how to get such files, when there is
    none."""
    run_dir = Path(run_dir)
    args = read_args(run_dir)
    if run_backend(run_dir, args) == "frcnn":
        found = _frcnn_progress(run_dir)
        if not found:
            raise RunFolderError(
                f"{run_dir}: no epochs/epoch_*.pt to score over training: a run keeps its "
                "epochs' weights only when trained with `lesion train frcnn --save-every N` "
                "(a finished run can add them: --resume --epochs MORE --save-every N keeps the "
                "next ones)")
        return found
    found = _darknet_progress(run_dir, args)
    if not found:
        from deeplesion_cli.formats.darknet_results import darknet_id

        base = darknet_id(darknet_cfg(run_dir, args).name)
        raise RunFolderError(
            f"{run_dir / 'backup'}: no {base}_<iteration>.weights nor {base}_final.weights to "
            "score over training (darknet saves <base>_<iteration>.weights every 1,000 "
            "iterations with AlexeyAB/hank-ai, every 100 up to 1,000 then every 10,000 with "
            "pjreddie, and <base>_final.weights when the run ends: train longer, or let the "
            "run finish)")
    return found


def _stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def cache_key(chosen: RunCheckpoint, prepared, split: str,
              values: Mapping | None = None) -> str:
    """A 12-hex-digit hash of what the detections depend on (module docstring)."""
    from deeplesion_cli.prepared import Prepared

    prepared = Prepared(prepared)
    record = {
        "backend": chosen.backend,
        "checkpoint": [chosen.checkpoint.name, *_stamp(chosen.checkpoint)],
        "prepared": str(Path(prepared.path).resolve()),
        "config_hash": prepared.config_hash,
        "split": split,
        "options": {k: (values or {}).get(k) for k in _KEY_OPTIONS if k in (values or {})},
    }
    if chosen.cfg is not None:
        record["cfg"] = _stamp(chosen.cfg)
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(chosen: RunCheckpoint, prepared, split: str, values: Mapping | None = None) -> Path:
    """``<run>/detections/<split>-<checkpoint file>-<key>.json``."""
    key = cache_key(chosen, prepared, split, values)
    return chosen.run_dir / CACHE_DIR / f"{split}-{chosen.checkpoint.name}-{key}.json"


def stale_caches(path: Path) -> list[Path]:
    """Other cached files of the same split and checkpoint as ``path`` (older keys)."""
    prefix = path.name.rsplit("-", 1)[0] + "-"
    return sorted(p for p in path.parent.glob(prefix + "*.json")
                  if p != path and len(p.name) == len(path.name))


@dataclass
class RunDetections:
    """The detections of a run folder's checkpoint over a split (``lesion eval --run``)."""

    run: RunCheckpoint             # the file used, and why
    path: Path                     # the cached COCO results json
    split: str
    reused: bool                   # found in the cache: nothing was predicted
    n_detections: int
    epoch: int | None = None       # Faster R-CNN: the checkpoint's epoch (when predicted now)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``runs/a/best.pt (epoch 3): 412 test detections, cached in ...`` in one line."""
        epoch = f" (epoch {self.epoch})" if self.epoch is not None else ""
        how = "reused from" if self.reused else f"predicted in {self.seconds:.1f} s, cached in"
        note = f"; {self.run.note}" if self.run.note else ""
        return (f"{self.run.checkpoint}{epoch}: {self.n_detections} {self.split} detections "
                f"{how} {self.path}{note}")


def headline(block: dict) -> str:
    """A run's figures of a metrics.json in one line: AP50, AP, FROC sensitivity at 4 FP/image,
    detections and images."""
    coco, froc = block.get("coco") or {}, block.get("froc") or {}
    fps, sens = froc.get("fps") or [], froc.get("sens") or []
    sens4 = sens[fps.index(4)] if 4 in fps and fps.index(4) < len(sens) else None

    def fmt(value):
        return "undefined" if value is None or value < 0 else f"{value:.4f}"

    return (f"AP50 {fmt(coco.get('AP50'))}, AP {fmt(coco.get('AP'))}, FROC@4 {fmt(sens4)}; "
            f"{block.get('n_detections')} detections on {block.get('n_images')} images")
