"""A publication's figures beside ours: the ``reported`` tables of a matrix file and the
"reported vs measured" section of comparison.md.

A matrix file that reproduces a study may keep, per experiment, the figures the study reported
(``[experiment.reported]``, or ``reported = {...}`` inside ``[[experiment]]``) and, once, where
they come from (top-level ``[reported]``)::

    [reported]
    source = "the seed study, Tables 3 and 4"
    iou = 0.21                     # the IoU threshold the study scored at

    [[experiment]]
    name = "frcnn-3"
    ...
    [experiment.reported]
    source = "Table 3, row 3"
    best_epoch = 110
    map_train = 0.79               # fractions, not percent
    map_test = 0.19
    iou_train = 0.77
    iou_test = 0.22

comparison.md then shows, per experiment with reported figures, the study's number next to ours
scored every way this tool scores: the study's own protocol (per-class 11-threshold mAP and mean
IoU of matched boxes at ``[eval] iou``; docs/metrics.md 3), darknet's ``detector map``-equal mAP
(section 2), COCO AP50, and, for a darknet experiment whose predict step ran darknet's own
``detector map`` (``darknet_map = true``; AlexeyAB/hank-ai), that program's figure; the train
figures come from the per-checkpoint curves (top-level ``curves``): the checkpoint with the best
test mAP, read on train. Torch-free; no I/O but reading the files named.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

#: per-experiment keys: name -> (kind, what it is)
EXPERIMENT_KEYS = {
    "source": ("str", "where in the publication (table, row)"),
    "best_epoch": ("int", "the epoch (or darknet epoch) the figures are from"),
    "map_train": ("fraction", "mAP on the training split, as the publication computed it"),
    "map_test": ("fraction", "mAP on the test split, as the publication computed it"),
    "iou_train": ("fraction", "mean IoU on the training split"),
    "iou_test": ("fraction", "mean IoU on the test split"),
    "map50": ("fraction", "mAP at IoU 0.5"),
    "map75": ("fraction", "mAP at IoU 0.75"),
}
#: top-level ``[reported]`` keys
TOP_KEYS = {
    "source": ("str", "the publication and tables the figures come from"),
    "iou": ("fraction", "the IoU threshold the publication scored at"),
    "note": ("str", "anything a reader should know when comparing"),
}


def check_table(table, keys: dict, fail) -> dict:
    """``table`` (parsed TOML) checked against ``keys``; ``fail(message, key)`` makes the error
    (a MatrixError naming file, experiment and key). Fractions must lie in [0, 1]: a
    publication's 19% is written 0.19."""
    from deeplesion_cli.matrix.options import unknown_key

    if not isinstance(table, dict):
        raise fail(f"expected a table of reported figures ({', '.join(keys)}), got "
                   f"{type(table).__name__}", None)
    out = {}
    for key, value in table.items():
        if key not in keys:
            raise fail(unknown_key(key, tuple(keys), "reported figure"), key)
        kind = keys[key][0]
        if kind == "str":
            if not isinstance(value, str):
                raise fail(f"expected text, got {value!r}", key)
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail(f"expected a whole number >= 0, got {value!r}", key)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise fail(f"expected a number in [0, 1], got {value!r}", key)
            if not 0 <= value <= 1:
                hint = f" (write {value / 100:g} for {value:g}%)" if 1 < value <= 100 else ""
                raise fail(f"expected a fraction in [0, 1], got {value!r}{hint}", key)
            value = float(value)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------ reading

def darknet_map_path(run_dir: Path, split: str) -> Path:
    """Where ``lesion predict yolo -o RUN/SPLIT.json --darknet-map`` leaves darknet's own
    ``detector map`` figures."""
    return Path(run_dir) / f"{split}.darknet_map.json"


def read_darknet_map(run_dir: Path, split: str) -> dict | None:
    """darknet's own figures of a run (``map``, ``iou_thresh``, ``average_iou`` ...), or None."""
    try:
        doc = json.loads(darknet_map_path(run_dir, split).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_curves(curves_dir: Path) -> list[dict]:
    """The rows of ``curves_dir/checkpoints.csv`` (every run x checkpoint x split), numbers as
    floats; [] when there is none."""
    try:
        text = (Path(curves_dir) / "checkpoints.csv").read_text()
    except OSError:
        return []
    rows = []
    for row in csv.DictReader(text.splitlines()):
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value) if value not in ("", None) else None
            except ValueError:
                parsed[key] = value
        rows.append(parsed)
    return rows


def best_checkpoint(rows: list[dict], run: str, metric: str = "seed_map",
                    by_split: str = "test") -> dict | None:
    """The checkpoint of ``run`` with the best ``metric`` on ``by_split`` (ties: the earliest)
    and its figures on every split: ``{"step", "unit", "<split>": row}``; None without rows."""
    mine = [r for r in rows if r.get("run") == run]
    scored = [r for r in mine if r.get("split") == by_split and r.get(metric) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r[metric], -r["step"]))
    out = {"step": int(best["step"]), "unit": best.get("unit")}
    for r in mine:
        if r.get("checkpoint") == best.get("checkpoint"):
            out[r["split"]] = r
    return out


# -------------------------------------------------------------------------------- comparison

def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def reported_rows(matrix, document: dict | None) -> list[dict]:
    """One dict per experiment with reported figures: the reported ones (``reported_*``) and
    ours (``ours_*``: fractions, None when not measured), in file order."""
    from deeplesion_cli.matrix.compare import metric_at

    runs = (document or {}).get("runs", {})
    curves = read_curves(matrix.curves_dir) if matrix.curves else []
    rows = []
    for exp in matrix.experiments:
        if not exp.reported:
            continue
        block = runs.get(exp.name)
        row = {"experiment": exp.name, "backend": exp.backend}
        row.update({f"reported_{k}": v for k, v in exp.reported.items()})
        row["ours_seed_map"] = metric_at(block, ("seed_protocol", "map"))
        row["ours_mean_iou"] = metric_at(block, ("seed_protocol", "mean_iou"))
        row["ours_darknet_map"] = metric_at(block, ("voc", "darknet_map"))
        row["ours_coco_ap50"] = metric_at(block, ("coco", "AP50"))
        own = read_darknet_map(exp.run_dir, matrix.split) if exp.backend == "yolo" else None
        row["darknet_own_map"] = own.get("map") if own else None
        best = best_checkpoint(curves, exp.name, "seed_map", matrix.split) if curves else None
        row["best_step"] = best["step"] if best else None
        row["best_unit"] = best["unit"] if best else None
        for split in ("train", "test"):
            r = (best or {}).get(split)
            row[f"best_{split}_seed_map"] = r.get("seed_map") if r else None
            row[f"best_{split}_mean_iou"] = r.get("mean_iou_tp") if r else None
        rows.append(row)
    return rows


def reported_markdown(matrix, document: dict | None) -> str:
    """The "reported vs measured" section of comparison.md ("" when no experiment has reported
    figures)."""
    from deeplesion_cli.report.tables import markdown

    rows = reported_rows(matrix, document)
    if not rows:
        return ""
    iou = matrix.eval_options.iou
    top = matrix.reported
    parts = ["## Reported by the publication, measured here\n"]
    if top.get("source"):
        parts.append(f"Reported figures: {top['source']}.")
    said_iou = top.get("iou")
    if said_iou is not None and abs(said_iou - iou) > 1e-9:
        parts.append(f"**The publication scored at IoU {said_iou:g}; this evaluation at "
                     f"{iou:g}** (`[eval] iou`): the columns are not comparable until they "
                     "agree.")
    parts.append(f"Ours at IoU {iou:g} on `{matrix.split}`, from the final (or best) checkpoint "
                 "each experiment predicted with: the study's protocol (per-class mAP over 11 "
                 "score thresholds, mean IoU of matched boxes at score >= "
                 f"{matrix.eval_options.score:g}), darknet's `detector map` rule computed by "
                 "lesion, and COCO AP50; `darknet map` is darknet's own program where the "
                 "predict step ran it (AlexeyAB/hank-ai, `darknet_map = true`). Definitions: "
                 "docs/metrics.md.")
    if top.get("note"):
        parts.append(top["note"])
    parts.append("")
    header = ["experiment", "reported best epoch", "reported mAP test", "ours mAP (study's)",
              "ours mAP (darknet rule)", "darknet map", "ours COCO AP50", "reported IoU test",
              "ours IoU"]
    table = [[r["experiment"], str(r.get("reported_best_epoch", "–")),
              _pct(r.get("reported_map_test")), _pct(r["ours_seed_map"]),
              _pct(r["ours_darknet_map"]),
              _pct(r["darknet_own_map"]) if r["backend"] == "yolo" else "n/a",
              _pct(r["ours_coco_ap50"]), _pct(r.get("reported_iou_test")),
              _pct(r["ours_mean_iou"])] for r in rows]
    parts.append(markdown(header, table))
    if matrix.curves:
        parts.append("\nOver training (`curves`: every saved checkpoint scored on "
                     f"{', '.join(matrix.curves)}; the checkpoint with the best `{matrix.split}` "
                     "mAP of the study's protocol):\n")
        header = ["experiment", "reported best epoch", "our best checkpoint",
                  "reported mAP train", "ours mAP train", "reported mAP test", "ours mAP test",
                  "reported IoU train", "ours IoU train"]
        table = []
        for r in rows:
            step = "–" if r["best_step"] is None else f"{r['best_unit']} {r['best_step']}"
            table.append([r["experiment"], str(r.get("reported_best_epoch", "–")), step,
                          _pct(r.get("reported_map_train")), _pct(r["best_train_seed_map"]),
                          _pct(r.get("reported_map_test")), _pct(r["best_test_seed_map"]),
                          _pct(r.get("reported_iou_train")), _pct(r["best_train_mean_iou"])])
        parts.append(markdown(header, table))
    return "\n".join(parts) + "\n"
