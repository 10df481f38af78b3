"""Tables of evaluation results: the comparison table (a column per run), Markdown and CSV."""

from __future__ import annotations

import csv
import io
import math

#: (label, path into a run's metrics block, bootstrap metric name or None)
SUMMARY_ROWS = [
    ("COCO AP@[.5:.95]", ("coco", "AP"), "coco.AP"),
    ("COCO AP50", ("coco", "AP50"), "coco.AP50"),
    ("COCO AP75", ("coco", "AP75"), None),
    ("COCO AP small", ("coco", "APs"), None),
    ("COCO AP medium", ("coco", "APm"), None),
    ("COCO AP large", ("coco", "APl"), None),
    ("COCO AR@1", ("coco", "AR1"), None),
    ("COCO AR@10", ("coco", "AR10"), None),
    ("COCO AR@100", ("coco", "AR100"), None),
    ("VOC mAP 11-point", ("voc", "map11"), None),
    ("VOC mAP all-point", ("voc", "map_all"), "voc.map_all"),
    ("darknet mAP", ("voc", "darknet_map"), None),
    ("seed protocol area", ("seed_protocol", "area"), None),
    ("FROC sens @0.5 FP/img", ("froc", "sens", 0), None),
    ("FROC sens @1", ("froc", "sens", 1), None),
    ("FROC sens @2", ("froc", "sens", 2), None),
    ("FROC sens @4", ("froc", "sens", 3), "froc.sens@4"),
    ("FROC sens @8", ("froc", "sens", 4), None),
    ("FROC sens @16", ("froc", "sens", 5), None),
    ("FROC mean @0.5-4", ("froc", "mean_sens_0.5_4"), "froc.mean_sens_0.5_4"),
    ("precision @score", ("at_score", "precision"), None),
    ("recall @score", ("at_score", "recall"), None),
    ("F1 @score", ("at_score", "f1"), "at_score.f1"),
    ("TP / FP / FN @score", None, None),
    ("mean IoU of TPs @score", ("at_score", "mean_iou_tp"), None),
    ("images without detections @score", ("at_score", "images_without_detections"), None),
    ("best F1", ("best_f1", "f1"), None),
    ("best-F1 score threshold", ("best_f1", "score"), None),
]


def _get(block: dict, path):
    value = block
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            return None
        if value is None:
            return None
    return value


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return "-1" if value == -1 else f"{value:.4f}"
    return str(value)


def summary_rows(document: dict) -> tuple[list[str], list[list[str]]]:
    """Header (``metric`` + run names) and rows of formatted cells for the comparison table."""
    runs = document["runs"]
    header = ["metric"] + list(runs)
    rows = []
    for label, path, boot in SUMMARY_ROWS:
        cells = [label.replace("@score", f"@score {document['options']['score']:g}")]
        for block in runs.values():
            if path is None:
                at = block["at_score"]
                cells.append(f"{at['tp']} / {at['fp']} / {at['fn']}")
                continue
            text = _fmt(_get(block, path))
            ci = block.get("bootstrap", {}).get("ci95", {}).get(boot) if boot else None
            if ci:
                text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
            cells.append(text)
        rows.append(cells)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summary_markdown(document: dict) -> str:
    """summary.md: the comparison table, the per-class AP table, and the paired difference."""
    options = document["options"]
    parts = [f"# Evaluation of {', '.join(document['runs'])}\n",
             f"Ground truth: `{document['ground_truth']}`. IoU {options['iou']:g} for VOC, seed "
             f"protocol and at-score metrics; score threshold {options['score']:g}; COCO metrics "
             f"as pycocotools; FROC as the official DeepLesion evaluation. Definitions: "
             f"docs/metrics.md.\n"]
    header, rows = summary_rows(document)
    parts.append(markdown(header, rows))
    parts.append("\n## Per class (COCO AP@[.5:.95] / AP50 / VOC all-point AP)\n")
    per_header = ["class"] + list(document["runs"])
    per_rows = []
    for cat_id, name in document["categories"].items():
        cells = [f"{name} ({cat_id})"]
        for block in document["runs"].values():
            c = block["per_class"][cat_id]
            cells.append(f"{_fmt(c['AP'])} / {_fmt(c['AP50'])} / {_fmt(c.get('voc_ap_all'))}")
        per_rows.append(cells)
    parts.append(markdown(per_header, per_rows))
    paired = document.get("paired_difference")
    if paired:
        a, b = paired["runs"]
        parts.append(f"\n## Paired difference {a} - {b} ({paired['n']} patient resamples)\n")
        parts.append(markdown(["metric", "difference", "95% interval"], [
            [m, f"{d:.4f}", f"[{paired['ci95'][m][0]:.4f}, {paired['ci95'][m][1]:.4f}]"]
            for m, d in paired["difference"].items()]))
    return "\n".join(parts)


def per_class_csv(document: dict) -> str:
    """per_class.csv: one line per (run, category)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "category_id", "name", "n_gt", "AP", "AP50", "AP75", "AR100",
                     "voc_ap11", "voc_ap_all"])
    for run, block in document["runs"].items():
        for cat_id, c in block["per_class"].items():
            writer.writerow([run, cat_id, c["name"], c["n_gt"], c["AP"], c["AP50"], c["AP75"],
                             c["AR100"], c.get("voc_ap11"), c.get("voc_ap_all")])
    return buffer.getvalue()
