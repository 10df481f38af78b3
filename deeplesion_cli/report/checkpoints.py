"""mAP over training: ``checkpoints.csv`` / ``checkpoints.json`` (one row per run, checkpoint and
split, written by ``lesion eval --run NAME=RUN --checkpoint every --out DIR``), read back, drawn
(``checkpoints.png``) and tabulated (the best checkpoint of each run and split).

The scoring itself (list the run's checkpoints, predict each split through the run's detection
cache, evaluate) is :func:`deeplesion_cli.curves.score_checkpoints`; this module only turns its
rows into files, a figure and a table, as :mod:`.eval_outputs` does for ``metrics.json``.

A row (:data:`COLUMNS`): ``run``, ``backend`` (frcnn, darknet), ``checkpoint`` (the file's
name), ``unit`` (epoch, iteration), ``step`` (the epoch or iteration it holds), ``split``,
``n_images``, ``n_detections`` and the metrics of :data:`METRICS`, each read from the run's
``metrics.json`` block of that evaluation (docs/metrics.md): fractions in [0, 1], an empty cell
(None) where the metric is undefined (COCO's -1, no true positive for the mean IoU).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.report.tables import Table

CSV_NAME = "checkpoints.csv"
JSON_NAME = "checkpoints.json"
FIGURE_NAME = "checkpoints.png"

#: metric column -> (path into a run's metrics.json block, what it is)
METRICS = {
    "coco_ap50": (("coco", "AP50"), "COCO AP at IoU 0.5 (pycocotools' rule)"),
    "coco_ap": (("coco", "AP"), "COCO AP averaged over IoU 0.50:0.95"),
    "voc_ap": (("voc", "map_all"), "VOC all-point mAP at --iou (classes with lesions)"),
    "darknet_map": (("voc", "darknet_map"), "darknet `detector map` mAP at --iou (every class)"),
    "seed_map": (("seed_protocol", "map"),
                 "the seed study's mAP: per-class AP over its 11 score thresholds, averaged over "
                 "the classes, at --iou (docs/metrics.md section 3)"),
    "mean_iou_tp": (("at_score", "mean_iou_tp"),
                    "mean IoU of the true positives at --score and --iou"),
    "froc_sens_4fp": (("froc", "sens@4"), "DeepLesion FROC sensitivity at 4 FP/image"),
}
#: checkpoints.csv's columns in order, with what each holds
COLUMNS = {
    "run": "the --run name",
    "backend": "frcnn or darknet",
    "checkpoint": "the checkpoint file's name (epoch_0010.pt, <cfg>_1000.weights, "
                  "<cfg>_final.weights)",
    "unit": "what step counts: epoch (Faster R-CNN) or iteration (darknet)",
    "step": "the epoch or iteration the checkpoint holds",
    "split": "the prepared split scored",
    "n_images": "images of the split",
    "n_detections": "detections of the checkpoint on the split, any score",
    **{name: what for name, (_, what) in METRICS.items()},
}
_INTS = ("step", "n_images", "n_detections")
#: the metric that picks a run's best checkpoint (the study's), and the figure's other panel
BEST_BY = "seed_map"
PANELS = (("seed_map", "seed-protocol mAP"), ("coco_ap50", "COCO AP50"))
#: how a split's line is drawn
SPLIT_STYLES = {"train": "-", "test": "--", "val": ":"}


class CheckpointsFileError(LesionInputError):
    """A checkpoints.csv that cannot be read back; the message names the file, row and field."""


def _metric(block: dict, path) -> float | None:
    if path == ("froc", "sens@4"):
        froc = block.get("froc") or {}
        fps, sens = froc.get("fps") or [], froc.get("sens") or []
        value = sens[fps.index(4)] if 4 in fps and fps.index(4) < len(sens) else None
    else:
        value = block
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
    if value is None or (isinstance(value, float) and (math.isnan(value) or value < 0)):
        return None   # undefined (COCO writes -1)
    return float(value)


def metrics_of(block: dict) -> dict:
    """The :data:`METRICS` of one run's metrics.json block, plus ``n_images`` and
    ``n_detections``."""
    out = {"n_images": block.get("n_images"), "n_detections": block.get("n_detections")}
    out.update({name: _metric(block, path) for name, (path, _) in METRICS.items()})
    return out


def best_rows(rows: list[dict], by: str = BEST_BY) -> dict[str, dict[str, dict | None]]:
    """``{run: {split: row}}``: each run's checkpoint with the highest ``by`` on each split
    (ties: the earliest step); None for a run and split where ``by`` is undefined at every
    checkpoint."""
    best: dict[str, dict[str, dict | None]] = {}
    for row in sorted(rows, key=lambda r: r["step"]):
        here = best.setdefault(row["run"], {})
        current = here.get(row["split"])
        value = row.get(by)
        if value is not None and (current is None or value > current[by]):
            here[row["split"]] = row
        else:
            here.setdefault(row["split"], None)
    return best


def csv_text(rows: list[dict]) -> str:
    """checkpoints.csv: a header of :data:`COLUMNS`, then the rows (metrics at full precision,
    an undefined one as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(COLUMNS))
    for row in rows:
        writer.writerow(["" if row.get(c) is None else
                         repr(row[c]) if isinstance(row[c], float) else str(row[c])
                         for c in COLUMNS])
    return buffer.getvalue()


def read_checkpoints_csv(path) -> list[dict]:
    """The rows of a checkpoints.csv (``step``, ``n_images``, ``n_detections`` as int, the
    metrics as float or None); :class:`CheckpointsFileError` naming the file, the row and the
    field of anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointsFileError(f"{path}: cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CheckpointsFileError(f"{path}: not a checkpoints.csv of lesion eval --checkpoint "
                                   f"every (no column {', '.join(missing)})")
    rows = []
    for number, raw in enumerate(reader, start=2):
        row = {}
        for column in COLUMNS:
            text = (raw.get(column) or "").strip()
            try:
                if column in _INTS:
                    row[column] = int(text)
                elif column in METRICS:
                    row[column] = float(text) if text else None
                else:
                    row[column] = text
            except ValueError:
                kind = "an integer" if column in _INTS else "a number or empty"
                raise CheckpointsFileError(f"{path}: row {number}, {column} {text!r} is not "
                                           f"{kind}") from None
        rows.append(row)
    return rows


def checkpoint_figure(rows: list[dict]):
    """The figure of :func:`checkpoint_curves`, not yet saved."""
    from deeplesion_cli.report.plots import _pyplot, integer_ticks

    plt = _pyplot()
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(max(len(runs), 1), len(PANELS), squeeze=False,
                             figsize=(4.6 * len(PANELS), 3.4 * max(len(runs), 1)))
    for ax_row, run in zip(axes, runs):
        mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
        unit = mine[0]["unit"] if mine else "step"
        for ax, (metric, label) in zip(ax_row, PANELS):
            for split in dict.fromkeys(r["split"] for r in mine):
                pts = [(r["step"], r[metric]) for r in mine
                       if r["split"] == split and r[metric] is not None]
                if pts:
                    ax.plot(*zip(*pts), SPLIT_STYLES.get(split, "-."), marker="o",
                            markersize=3, label=split)
            ax.set(title=f"{run}: {label}", xlabel=unit, ylabel=label, ylim=(0, 1.02))
            steps = [r["step"] for r in mine]
            if steps and min(steps) == max(steps):
                ax.set_xlim(steps[0] - 0.5, steps[0] + 0.5)
            integer_ticks(ax.xaxis)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def checkpoint_curves(rows: list[dict], path: Path, pdf: bool = False) -> list[Path]:
    """Per run (a row of panels), the seed-protocol mAP and COCO AP50 against the run's step
    (x axis: its unit, epoch or iteration, at whole numbers), one line per split (train solid,
    test dashed, val dotted). Returns the paths written (PNG, and PDF with ``pdf``)."""
    from deeplesion_cli.report.plots import _pyplot, _save

    plt = _pyplot()
    fig = checkpoint_figure(rows)
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written


def best_table(rows: list[dict], name: str = "checkpoints_best") -> Table:
    """The best checkpoint of each run and split by :data:`BEST_BY` (:func:`best_rows`)."""
    table = Table(name, "Best checkpoint per run and split (by the seed-protocol mAP)",
                  ["run", "split", "checkpoint", "unit", "step", "seed mAP", "COCO AP50",
                   "COCO AP", "FROC sens @4", "checkpoints scored"],
                  note="Ties go to the earliest checkpoint; every checkpoint's figures are in "
                       "checkpoints.csv.")
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["run"], r["split"])] = counts.get((r["run"], r["split"]), 0) + 1
    for run, splits in best_rows(rows).items():
        for split, row in splits.items():
            if row is None:
                table.rows.append([run, split, None, None, None, None, None, None, None,
                                   counts[(run, split)]])
                continue
            table.rows.append([run, split, row["checkpoint"], row["unit"], row["step"],
                               row["seed_map"], row["coco_ap50"], row["coco_ap"],
                               row["froc_sens_4fp"], counts[(run, split)]])
    return table


def write_checkpoint_outputs(document: dict, out_dir: Path) -> list[Path]:
    """Write ``document`` (:func:`deeplesion_cli.curves.score_checkpoints`'s: ``rows`` and the
    settings) into ``out_dir``: checkpoints.csv, checkpoints.json and checkpoints.png, each
    atomically; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / CSV_NAME, csv_text(document["rows"]))
    atomic.write_text(out_dir / JSON_NAME,
                      json.dumps(document, indent=1, allow_nan=False) + "\n")
    written = [out_dir / CSV_NAME, out_dir / JSON_NAME]
    if document["rows"]:
        written += checkpoint_curves(document["rows"], out_dir / FIGURE_NAME)
    return written
