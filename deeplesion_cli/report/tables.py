"""Tables of evaluation results: the comparison table (a column per run), Markdown and CSV; and
the tables of ``lesion report`` (:class:`Table`, written as Markdown, LaTeX and CSV)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

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
    ("seed mAP (per class, 11 thresholds)", ("seed_protocol", "map"), None),
    ("seed mean IoU of matches @score", ("seed_protocol", "mean_iou"), None),
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
    """A summary cell: undefined values (None, NaN) as ``–``, COCO's -1 as ``-1``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return "-1" if value == -1 else f"{value:.4f}"
    return str(value)


def detection_counts(block: dict) -> dict:
    """A run's detection counts from its metrics.json block: ``total`` (every detection, any
    score), ``per_image`` (total / images), ``kept`` (at or above the evaluation's score: TP + FP
    of ``at_score``) and ``empty`` (None, ``"none"``: no detection at all, or ``"none kept"``:
    none at or above the score)."""
    total = block.get("n_detections")
    images = block.get("n_images")
    at = block.get("at_score") or {}
    kept = at["tp"] + at["fp"] if at.get("tp") is not None and at.get("fp") is not None \
        else None
    empty = "none" if total == 0 else "none kept" if kept == 0 else None
    return {"total": total, "kept": kept, "empty": empty,
            "per_image": total / images if total is not None and images else None}


def no_detection_words(name: str, block: dict, score: float) -> str | None:
    """The sentence that flags run ``name`` when it has no detections (at all, or none at or
    above ``score``); None when it has some."""
    counts = detection_counts(block)
    if counts["empty"] == "none":
        return (f"{name}: no detections (the detection file holds no box on any of the "
                f"{block.get('n_images')} images; every metric of this run is 0 or undefined)")
    if counts["empty"] == "none kept":
        return (f"{name}: no detections at score >= {score:g} ({counts['total']} below it): "
                "precision, recall and F1 at the score threshold count nothing")
    return None


def _flag(text: str, markup: bool) -> str:
    return f"[bold red]{text}[/bold red]" if markup else text


def _detection_rows(document: dict, markup: bool) -> list[list[str]]:
    """The comparison table's first rows: detections (all scores), per image, and at the score
    threshold; a run without any is flagged ("no detections", in red with ``markup``)."""
    score = document["options"]["score"]
    rows = [["detections (all scores)"], ["detections per image"],
            [f"detections @score {score:g}"]]
    for block in document["runs"].values():
        c = detection_counts(block)
        total = _fmt(c["total"])
        rows[0].append(_flag(f"{total} (no detections)", markup) if c["empty"] == "none"
                       else total)
        rows[1].append("–" if c["per_image"] is None else f"{c['per_image']:.2f}")
        kept = _fmt(c["kept"])
        rows[2].append(_flag(f"{kept} (none kept)", markup) if c["empty"] else kept)
    return rows


def summary_rows(document: dict, markup: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header (``metric`` + run names) and rows of formatted cells for the comparison table;
    the first rows count the detections of each run (:func:`detection_counts`). ``markup``:
    the console's table (rich markup): a run without detections in red."""
    runs = document["runs"]
    header = ["metric"] + list(runs)
    rows = _detection_rows(document, markup)
    for label, path, boot in SUMMARY_ROWS:
        cells = [label.replace("@score", f"@score {document['options']['score']:g}")]
        for block in runs.values():
            if path is None:
                at = block["at_score"]
                cells.append(f"{at['tp']} / {at['fp']} / {at['fn']}")
                continue
            value = _get(block, path)
            text = _fmt(value)
            ci = block.get("bootstrap", {}).get("ci95", {}).get(boot) if boot else None
            if ci and text != "–":
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
    flags = [no_detection_words(name, block, options["score"])
             for name, block in document["runs"].items()]
    if any(flags):
        parts.append("\n".join(f"**{f}**" for f in flags if f) + "\n")
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
    if document.get("warnings"):
        parts.append("\n## Warnings\n")
        parts.append("\n".join(f"- {m}" for m in document["warnings"]) + "\n")
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


# ------------------------------------------------------------------------------ report tables
#
# ``lesion report`` writes every table three ways from one :class:`Table`: Markdown and LaTeX
# for reading (numbers rounded, a 95% interval as ``0.812 [0.790, 0.833]``) and CSV for machines
# (full precision, an interval as two extra columns ``<column> ci95 low`` / ``high``).

#: FP/image rates of the DeepLesion FROC (docs/metrics.md section 4).
FROC_FPS = (0.5, 1, 2, 4, 8, 16)
#: Display text of an undefined value (None) in Markdown.
MISSING = "–"


@dataclass
class Cell:
    """A table value with an optional 95% interval and its display precision."""

    value: object
    ci: tuple[float, float] | None = None
    digits: int = 3


@dataclass
class Table:
    """``name``: file stem; ``rows``: raw values (float, int, str, None) or :class:`Cell`."""

    name: str
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)
    note: str = ""


def _as_cell(value) -> Cell:
    return value if isinstance(value, Cell) else Cell(value)


def format_value(value, digits: int = 3, missing: str = MISSING) -> str:
    """Display text: floats with ``digits`` decimals (COCO's -1 as ``-1``), ints as they are,
    undefined values (None, NaN) as ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == -1:
            return "-1"
        return f"{value:.{digits}f}"
    return str(value)


def format_cell(value, missing: str = MISSING) -> str:
    """A cell's display text; with an interval ``0.812 [0.790, 0.833]``."""
    cell = _as_cell(value)
    text = format_value(cell.value, cell.digits, missing)
    if cell.ci is not None and text != missing:
        lo, hi = cell.ci
        text += f" [{lo:.{cell.digits}f}, {hi:.{cell.digits}f}]"
    return text


def table_markdown(table: Table, heading: str | None = "###") -> str:
    """The table as Markdown (``heading`` + title first, the note after)."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    parts = []
    if heading:
        parts.append(f"{heading} {table.title}\n")
    parts.append(markdown([esc(h) for h in table.header],
                          [[esc(format_cell(v)) for v in row] for row in table.rows]))
    if table.note:
        parts.append(f"\n{table.note}\n")
    return "\n".join(parts)


def _ci_columns(table: Table) -> list[bool]:
    return [any(isinstance(r[j], Cell) and r[j].ci is not None for r in table.rows)
            for j in range(len(table.header))]


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def table_csv(table: Table) -> str:
    """The table as CSV: full-precision values; a column with intervals is followed by
    ``<column> ci95 low`` and ``<column> ci95 high``."""
    with_ci = _ci_columns(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = []
    for h, ci in zip(table.header, with_ci):
        header += [h, f"{h} ci95 low", f"{h} ci95 high"] if ci else [h]
    writer.writerow(header)
    for row in table.rows:
        out = []
        for value, ci in zip(row, with_ci):
            cell = _as_cell(value)
            out.append(_csv_value(cell.value))
            if ci:
                lo, hi = cell.ci if cell.ci is not None else (None, None)
                out += [_csv_value(lo), _csv_value(hi)]
        writer.writerow(out)
    return buffer.getvalue()


def _get_ci(block: dict, metric: str | None):
    if not metric:
        return None
    ci = ((block.get("bootstrap") or {}).get("ci95") or {}).get(metric)
    return (float(ci[0]), float(ci[1])) if ci else None


def _froc_at(froc: dict | None, fp: float):
    if not froc:
        return None
    fps = [float(f) for f in froc.get("fps", [])]
    sens = froc.get("sens", [])
    return sens[fps.index(float(fp))] if float(fp) in fps and fps.index(float(fp)) < len(sens) \
        else None


def _fp_label(fp: float) -> str:
    return f"{fp:g}"


def backend_table(runs: list[tuple[str, dict, dict]]) -> Table:
    """One row per evaluated run: ``runs`` = (label, run block, its metrics.json document)."""
    header = (["run", "images", "detections", "per image", "kept @score", "COCO AP", "AP50",
               "AP75", "VOC mAP"]
              + [f"FROC@{_fp_label(f)}" for f in FROC_FPS]
              + ["FROC mean@0.5-4", "score", "precision", "recall", "F1"])
    rows = []
    for label, b, _doc in runs:
        coco, voc, froc, at = b.get("coco", {}), b.get("voc", {}), b.get("froc", {}), \
            b.get("at_score", {})
        n = detection_counts(b)
        row = [label, b.get("n_images"), n["total"], Cell(n["per_image"], digits=2), n["kept"],
               Cell(coco.get("AP"), _get_ci(b, "coco.AP")),
               Cell(coco.get("AP50"), _get_ci(b, "coco.AP50")),
               coco.get("AP75"),
               Cell(voc.get("map_all"), _get_ci(b, "voc.map_all"))]
        for f in FROC_FPS:
            row.append(Cell(_froc_at(froc, f), _get_ci(b, "froc.sens@4") if f == 4 else None))
        row += [Cell(froc.get("mean_sens_0.5_4"), _get_ci(b, "froc.mean_sens_0.5_4")),
                Cell(at.get("score"), digits=2), at.get("precision"), at.get("recall"),
                Cell(at.get("f1"), _get_ci(b, "at_score.f1"))]
        rows.append(row)
    note = ("detections: every detection of the run (any score), per image: their mean per "
            "image, kept @score: those at or above the `score` column (0: no detections, said "
            "in words above the table). "
            "COCO AP = AP@[.5:.95] (pycocotools); VOC mAP = all-point at the evaluation's IoU; "
            "FROC = sensitivity at FP/image (official DeepLesion protocol); precision, recall, "
            "F1 at score >= the `score` column (–: undefined, e.g. precision when no detection is kept). Brackets: patient-level bootstrap 95% interval "
            "(`lesion eval --bootstrap`). Definitions: docs/metrics.md.")
    return Table("backends", "Backend comparison", header, rows, note)


def per_class_table(runs: list[tuple[str, dict, dict]]) -> Table:
    header = ["run", "category_id", "class", "n_gt", "AP", "AP50", "AP75", "AR100",
              "VOC AP all-point", "VOC AP 11-point"]
    rows = []
    for label, b, _doc in runs:
        for cat_id, c in (b.get("per_class") or {}).items():
            rows.append([label, int(cat_id), c.get("name"), c.get("n_gt"), c.get("AP"),
                         c.get("AP50"), c.get("AP75"), c.get("AR100"), c.get("voc_ap_all"),
                         c.get("voc_ap11")])
    note = "COCO AP per class (-1: no ground truth of that class); VOC AP at the evaluation's IoU."
    return Table("per_class", "Average precision per class", header, rows, note)


def froc_table(runs: list[tuple[str, dict, dict]]) -> Table:
    """FROC sensitivity at every FP rate: all lesions (and the strict variant when computed),
    then each size and type stratum."""
    header = (["run", "lesions", "subset"] + [f"@{_fp_label(f)} FP/img" for f in FROC_FPS]
              + ["mean@0.5-4"])
    rows = []

    def add(label, subset, froc, n, cis=False):
        row = [label, n, subset]
        for f in FROC_FPS:
            row.append(Cell(_froc_at(froc, f), _get_ci(b, "froc.sens@4") if cis and f == 4
                            else None))
        row.append(Cell((froc or {}).get("mean_sens_0.5_4"),
                        _get_ci(b, "froc.mean_sens_0.5_4") if cis else None))
        rows.append(row)

    for label, b, _doc in runs:
        froc = b.get("froc") or {}
        add(label, "all", froc, froc.get("n_lesions"), cis=True)
        if b.get("froc_strict"):
            add(label, "all (strict)", b["froc_strict"], b["froc_strict"].get("n_lesions"))
        for kind in ("size", "type"):
            for name, s in ((b.get("strata") or {}).get(kind) or {}).items():
                add(label, f"{kind} {name}", s.get("froc"), s.get("n_lesions"))
    note = ("Sensitivity at 0.5-16 false positives per image (official DeepLesion FROC). Strata "
            "keep every detection and restrict the lesions (docs/metrics.md section 8).")
    return Table("froc", "FROC sensitivity", header, rows, note)


def box_size_table(runs: list[tuple[str, dict, dict]]) -> Table:
    """The seed study's tables 6-7 from ``box_size``: predictions bigger / smaller than their
    ground truth and by how much (area factors >= 1)."""
    header = ["run", "score", "IoU", "matched", "bigger share", "bigger mean", "bigger median",
              "bigger min", "bigger max", "smaller share", "smaller mean", "smaller median",
              "smaller min", "smaller max", "equal share", "pred/gt mean", "pred/gt median",
              "pred/gt geo. mean"]
    rows = []
    for label, b, _doc in runs:
        s = b.get("box_size") or {}
        big, small = s.get("bigger") or {}, s.get("smaller") or {}
        ratio = s.get("ratio_pred_over_gt") or {}
        rows.append([label, Cell(s.get("score"), digits=2), Cell(s.get("iou"), digits=2),
                     s.get("n_matched"), big.get("share"), big.get("mean"), big.get("median"),
                     big.get("min"), big.get("max"), small.get("share"), small.get("mean"),
                     small.get("median"), small.get("min"), small.get("max"),
                     (s.get("equal") or {}).get("share"), ratio.get("mean"), ratio.get("median"),
                     ratio.get("geometric_mean")])
    note = ("True positives at the score threshold and IoU; box areas w x h. Factors: "
            "pred/gt for bigger, gt/pred for smaller (both >= 1).")
    return Table("box_size", "Box size agreement", header, rows, note)
