"""What a ``lesion train frcnn`` run folder says in words and rows (rank 0 writes them):
``args.json`` (what the run was started with), a ``metrics.csv`` row and a ``train.log`` line per
epoch (:class:`EpochStats`), and the ``train.log`` writer itself.

``metrics.csv`` is the format every training backend shares (:mod:`deeplesion_cli.runlog`);
this module only says which columns a Faster R-CNN epoch fills.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deeplesion_cli import __version__


@dataclass
class EpochStats:
    """One finished epoch (all ranks together): training figures, then evaluation metrics."""

    epoch: int                      # 1-based
    step: int                       # optimiser steps done after this epoch
    images: int                     # images trained on, all ranks, since the run's start
    loss: float
    parts: dict
    lr: float
    seconds: float                  # training time of the epoch (evaluation excluded)
    images_per_s: float
    data_wait: float                # share of the epoch's step time spent waiting for data
    train_eval: dict | None         # metrics of the fixed training sample (evaluate.py)
    val_eval: dict | None           # metrics of the val split; None when it is empty
    eval_seconds: float


class TrainLog:
    """``train.log`` (rank 0): plain lines, flushed at once; lines logged with ``echo=True``
    (start, epoch summaries) also go to stderr when ``echo`` is enabled. With ``path`` None
    (ranks other than 0) it writes nothing."""

    def __init__(self, path: Path | None, echo: bool):
        self.path = path
        self.file = open(path, "a", encoding="utf-8") if path is not None else None
        self.echo = echo
        self.failed = False         # a write failed (disk full...): lines go to stderr

    def __call__(self, message: str, echo: bool = False) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.file is not None and not self.failed:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except OSError as exc:
                self.failed = True
                print(f"warning: cannot write {self.path} ({exc}); its lines follow here",
                      file=sys.stderr, flush=True)
        if self.failed or (self.echo and echo):
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass


def metrics_row(stats: EpochStats, ema_loss) -> dict:
    """The metrics.csv row of an epoch (``epoch`` a float: the column is shared with backends
    that log fractions of an epoch)."""
    row = {"step": stats.step, "epoch": float(stats.epoch), "loss": stats.loss,
           "avg_loss": ema_loss, "lr": stats.lr, "images": stats.images,
           "seconds": stats.seconds, "images_per_s": stats.images_per_s,
           "data_wait": stats.data_wait}
    row.update(stats.parts)
    for prefix, block in (("train", stats.train_eval), ("val", stats.val_eval)):
        if block:
            for key, value in block.items():
                row[f"{prefix}_{key}"] = value
    return row


def fmt(v) -> str:
    """A metric for a log line: 4 decimals, ``-`` when missing."""
    return "-" if v is None else f"{v:.4f}"


def epoch_line(stats: EpochStats, epochs: int, improved: bool) -> str:
    """The train.log (and stderr) summary of an epoch of ``epochs``."""
    val = stats.val_eval or {}
    tr = stats.train_eval or {}
    mark = " (best)" if improved else ""
    return (f"epoch {stats.epoch}/{epochs} step {stats.step} loss {stats.loss:.4f} "
            f"lr {stats.lr:.4g} {stats.images_per_s:.1f} img/s data wait "
            f"{100 * stats.data_wait:.1f}% | train mAP50 {fmt(tr.get('mAP50'))} | val mAP50 "
            f"{fmt(val.get('mAP50'))} mAP {fmt(val.get('mAP'))} FROC@4 "
            f"{fmt(val.get('froc_sens4'))}{mark} | {stats.seconds:.1f} s + eval "
            f"{stats.eval_seconds:.1f} s")


def args_doc(*, prepared: Path, config_hash, options, model_args: dict, class_names,
             world_size: int, device, steps_per_epoch: int, train_images: int, val_images: int,
             train_eval_images: int, threads: int, render: dict | None = None) -> dict:
    """``args.json``: the options, the data and the software a run was (re)started with."""
    import torch

    return {"tool": "lesion", "version": __version__, "command": "train frcnn",
            "prepared": str(Path(prepared).resolve()), "prepared_config_hash": config_hash,
            "prepared_render": render,
            "options": options.to_json(), "model_args": _jsonable(model_args),
            "classes": list(class_names), "world_size": world_size,
            "device": str(device), "torch": torch.__version__,
            "torchvision": _tv_version(), "steps_per_epoch": steps_per_epoch,
            "train_images": train_images, "val_images": val_images,
            "train_eval_images": train_eval_images, "threads": threads}


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _tv_version() -> str:
    import torchvision

    return torchvision.__version__
