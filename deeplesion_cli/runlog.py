"""``metrics.csv``: the training log shared by ``lesion train yolo`` and ``lesion train frcnn``.

``train yolo`` writes one row per darknet iteration; ``train frcnn`` one row per epoch (its
``step`` is then the optimiser steps done so far, ``loss`` the epoch's mean loss).

The file is a plain CSV with the header :data:`METRICS_COLUMNS`, written by :class:`MetricsWriter`
and read back by :func:`read_metrics`. Every row is flushed to disk as soon as it is written, so a
crashed or killed run keeps every step it finished. A cell is empty when the trainer did not measure
that value at that step (mAP columns are filled only at the steps where an evaluation ran).

Columns and units:

``step``
    Training step, counted from 1: a darknet iteration (one weight update over ``batch`` images)
    or one optimiser step of ``train frcnn``. Integer.
``epoch``
    Images seen so far divided by the number of training images. Fractional for darknet, which
    draws images at random with replacement, so an "epoch" is nominal there.
``loss``
    The loss of this step as the trainer reports it (darknet: sum over its ``[yolo]`` layers;
    torchvision: sum of the detection losses). Unitless.
``avg_loss``
    Running average of ``loss`` (darknet's ``avg = 0.9 * avg + 0.1 * loss``). Unitless.
``lr``
    Learning rate in effect at this step.
``images``
    Images seen since the start of training (including earlier runs this one resumed from).
``seconds``
    Wall-clock seconds of this step's computation (darknet's own per-iteration timer; it excludes
    image loading). ``train frcnn``: the epoch's training time, loader waits included,
    evaluation excluded.
``images_per_s``
    Images of this step divided by ``seconds``.
``train_mAP50``, ``train_mAP75``, ``train_mAP``
    Detection AP on the training set at IoU 0.5, IoU 0.75 and averaged over IoU 0.5:0.95
    (COCO), as fractions in [0, 1].
``train_mean_iou``
    Mean IoU of the matched detections on the training set, fraction in [0, 1] (``train frcnn``:
    the true positives at score >= 0.25, ``at_score.mean_iou_tp`` of docs/metrics.md).
``train_froc_sens4``
    DeepLesion FROC sensitivity at 4 false positives per image on the training set, fraction.
``val_mAP50``, ``val_mAP75``, ``val_mAP``, ``val_mean_iou``, ``val_froc_sens4``
    The same on the validation set. (darknet's ``-map`` gives ``val_mAP50`` only.)
``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``
    torchvision Faster R-CNN's four loss parts (their sum is ``loss``), epoch means. Empty for
    darknet.
``data_wait``
    Share of the epoch's step time spent waiting for the data loader, fraction in [0, 1]
    (``train frcnn`` only).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.errors import LesionInputError

METRICS_COLUMNS = ["step", "epoch", "loss", "avg_loss", "lr", "images", "seconds",
                   "images_per_s", "train_mAP50", "train_mAP75", "train_mAP", "train_mean_iou",
                   "train_froc_sens4", "val_mAP50", "val_mAP75", "val_mAP", "val_mean_iou",
                   "val_froc_sens4", "loss_classifier", "loss_box_reg", "loss_objectness",
                   "loss_rpn_box_reg", "data_wait"]

#: Columns holding whole numbers; :func:`read_metrics` returns them as ``int``.
INTEGER_COLUMNS = frozenset({"step", "images"})


class MetricsError(LesionInputError):
    """A metrics.csv that cannot be appended to or read."""


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError(f"a metrics cell cannot be a boolean ({value!r})")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip text
    try:  # numpy scalars and the like
        return _cell(value.item())
    except AttributeError:
        pass
    return str(value)


class MetricsWriter:
    """Append rows to a metrics.csv, writing the header first if the file is new or empty.

    An existing file is appended to (a resumed run continues its predecessor's log); its header
    must be :data:`METRICS_COLUMNS`, else :class:`MetricsError`; half a row left by a killed run
    is removed. ``write(row)`` takes a dict with
    any subset of the columns (missing ones stay empty cells; an unknown key is an error, to catch
    typos) and flushes the row to disk at once. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self.rows_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.path.read_bytes() if self.path.exists() else b""
        if existing.strip():
            header = existing.decode("utf-8", "replace").splitlines()[0]
            if next(csv.reader([header])) != METRICS_COLUMNS:
                raise MetricsError(f"{self.path}: not a metrics.csv of this version (its header "
                                   f"is {header[:120]!r}); move it away or choose another run "
                                   "folder")
        if existing.strip() and not existing.endswith(b"\n"):
            # a run killed mid-row left half a row: drop it so the next row starts cleanly
            with open(self.path, "r+b") as f:
                f.truncate(existing.rfind(b"\n") + 1)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if not existing.strip():
            self._writer.writerow(METRICS_COLUMNS)
            self._flush()

    def write(self, row: dict) -> None:
        unknown = set(row) - set(METRICS_COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics column(s): {', '.join(sorted(unknown))} "
                           f"(known: {', '.join(METRICS_COLUMNS)})")
        self._writer.writerow([_cell(row.get(c)) for c in METRICS_COLUMNS])
        self._flush()
        self.rows_written += 1

    def _flush(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _value(column: str, text: str, where: str):
    if text == "":
        return None
    try:
        if column in INTEGER_COLUMNS:
            return int(text)
        return float(text)
    except ValueError:
        raise MetricsError(f"{where}: column {column!r}: {text!r} is not a number") from None


def read_metrics(path) -> list[dict]:
    """Rows of a metrics.csv as dicts keyed by :data:`METRICS_COLUMNS`.

    ``step`` and ``images`` come back as ``int``, every other column as ``float``; an empty cell
    is ``None``. A last line cut short by a crash (fewer cells than columns) is ignored.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MetricsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    unknown = [c for c in header if c not in METRICS_COLUMNS]
    if unknown:
        raise MetricsError(f"{path}: unknown column(s) {unknown} in the header")
    lines = list(reader)
    rows = []
    for number, cells in enumerate(lines, 2):
        if not cells:
            continue
        if len(cells) != len(header):
            if number == len(lines) + 1 and len(cells) < len(header):
                break  # the row a killed run was writing
            raise MetricsError(f"{path}:{number}: {len(cells)} cells, expected {len(header)}")
        row = dict.fromkeys(METRICS_COLUMNS)
        for column, cell in zip(header, cells):
            row[column] = _value(column, cell, f"{path}:{number}")
        rows.append(row)
    return rows


def truncate_metrics(path, from_step: int) -> int:
    """Drop the rows of ``path`` whose step is ``>= from_step`` (a resumed run re-does them);
    return how many were dropped. The file is rewritten atomically; a missing file is a no-op."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = read_metrics(path)
    keep = [r for r in rows if r["step"] is None or r["step"] < from_step]
    if len(keep) == len(rows):
        return 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for row in keep:
        writer.writerow([_cell(row.get(c)) for c in METRICS_COLUMNS])
    atomic.write_text(path, buffer.getvalue())
    return len(rows) - len(keep)
