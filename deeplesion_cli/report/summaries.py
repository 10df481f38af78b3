"""The report's tables of its inputs: one row per training run (:func:`run_table`) and one per
split of the prepared data (:func:`data_table`). Numbers are read from the run's metrics.csv and
args.json and from the prepared folder's COCO files and manifest; nothing is recomputed.
"""

from __future__ import annotations

import math
import statistics

from deeplesion_cli.prepared import SPLITS
from deeplesion_cli.spec.frcnn import DEFAULT_LR
from deeplesion_cli.report.inputs import PreparedInfo, RunInfo
from deeplesion_cli.report.tables import Cell, Table

#: Default learning rates of ``lesion train frcnn`` (declared with its options; torch-free)
FRCNN_DEFAULT_LR = DEFAULT_LR


def _split_key(split: str):
    """Data tables list train, val, test first, then other splits by name."""
    return (SPLITS.index(split), "") if split in SPLITS else (len(SPLITS), split)


def _median(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def _int_if_whole(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _frcnn_setup(run: RunInfo) -> tuple[list[str], int | None, float | None]:
    """(option words, planned epochs, last logged epoch) of a Faster R-CNN run's args.json."""
    o = run.args.get("options") or {}
    lr = o.get("lr") if o.get("lr") is not None else FRCNN_DEFAULT_LR.get(o.get("optimizer"))
    parts = [f"pretrained {o.get('pretrained', '?')}",
             f"{o.get('optimizer', '?')} lr {lr:g}" if lr is not None
             else f"{o.get('optimizer', '?')}",
             f"batch {o.get('batch_size', '?')}x{run.args.get('world_size', 1)}",
             f"size {o.get('size_px') or 'auto'}", f"augment {o.get('augment', '?')}",
             f"scheduler {o.get('scheduler', '?')}"]
    if o.get("weight_decay"):
        parts.append(f"wd {o['weight_decay']:g}")
    parts += [flag for flag in ("balanced", "amp") if o.get(flag)]
    rows = run.rows
    length = _int_if_whole(rows[-1]["epoch"]) if rows and rows[-1]["epoch"] is not None \
        else None
    return parts, o.get("epochs"), length


def _darknet_setup(run: RunInfo) -> tuple[list[str], int | None, int | None]:
    """(option words, planned iterations, last logged iteration) of a darknet run, from the cfg's
    ``[net]`` keys recorded in args.json (strings, as the cfg writes them)."""
    n = run.net
    parts = []
    if n.get("width") and n.get("height"):
        parts.append(f"size {n['width']}x{n['height']}")
    if n.get("batch"):
        parts.append(f"batch {n['batch']}/{n.get('subdivisions', 1)}")
    if n.get("learning_rate"):
        parts.append(f"lr {n['learning_rate']}")
    if run.with_map:
        parts.append("-map")
    planned = int(n["max_batches"]) if str(n.get("max_batches", "")).isdigit() else None
    return parts, planned, run.rows[-1]["step"] if run.rows else None


def run_summary(run: RunInfo) -> dict:
    """The run table's values of one run (see :func:`run_table`)."""
    rows = run.rows
    frcnn = run.backend == "frcnn"
    parts, planned, length = _frcnn_setup(run) if frcnn else _darknet_setup(run)
    where = "epoch" if frcnn else "step"
    best_value, best_at = None, None
    for r in rows:
        v = r.get("val_mAP50")
        if v is not None and math.isfinite(v) and (best_value is None or v > best_value):
            best_value, best_at = v, _int_if_whole(r.get(where))
    last = rows[-1] if rows else {}
    final_loss = last.get("loss")
    if not frcnn and last.get("avg_loss") is not None:
        final_loss = last["avg_loss"]
    return {"run": run.label,
            "backend": "torchvision Faster R-CNN" if frcnn else "darknet YOLO",
            "arch": run.arch, "options": ", ".join(parts),
            "trained": length, "planned": planned, "unit": "epoch" if frcnn else "iteration",
            "best_val_mAP50": best_value, "best_at": best_at, "final_loss": final_loss,
            "images_per_s": _median(r.get("images_per_s") for r in rows)}


def run_table(runs: list[RunInfo]) -> Table:
    header = ["run", "backend", "arch", "options", "trained", "planned", "unit",
              "best val mAP50", "at", "final loss", "images/s"]
    rows = []
    for run in runs:
        s = run_summary(run)
        rows.append([s["run"], s["backend"], s["arch"], s["options"], s["trained"], s["planned"],
                     s["unit"], s["best_val_mAP50"], s["best_at"], Cell(s["final_loss"], digits=4),
                     Cell(s["images_per_s"], digits=1)])
    note = ("`trained`: last epoch (Faster R-CNN) or darknet iteration logged in metrics.csv; "
            "`planned`: --epochs or the cfg's max_batches. Best val mAP50: the highest logged "
            "value and the epoch or iteration where it was reached. Final loss: the last "
            "epoch's mean loss (Faster R-CNN) or darknet's running average loss at the last "
            "iteration. images/s: median over the logged rows.")
    return Table("runs", "Training runs", header, rows, note)


def lesion_diameters_mm(doc: dict) -> list[float]:
    """Long diameter in mm of every lesion of a COCO document: its first ``recist_diameters_mm``,
    else the box's longer side times the image's ``spacing_mm`` when known."""
    spacing = {im.get("id"): im.get("spacing_mm") for im in doc.get("images", [])}
    out = []
    for a in doc.get("annotations") or []:
        d = a.get("recist_diameters_mm")
        if isinstance(d, list) and d and isinstance(d[0], (int, float)):
            out.append(float(d[0]))
        else:  # a COCO file without RECIST: the box's longer side in mm, when spacing is known
            sp = spacing.get(a.get("image_id"))
            box = a.get("bbox")
            if isinstance(sp, list) and sp and isinstance(box, list) and len(box) == 4:
                out.append(float(max(box[2] * sp[0], box[3] * sp[-1])))
    return out


def data_counts(prep: PreparedInfo) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Class names (category order) and lesions per class per split, from the COCO files (the
    manifest's counts when a split has no COCO file)."""
    classes: list[str] = []
    for doc in prep.splits.values():
        for c in doc.get("categories") or []:
            if c.get("name") not in classes:
                classes.append(str(c.get("name")))
    counts: dict[str, dict[str, int]] = {}
    for split, doc in prep.splits.items():
        names = {c.get("id"): str(c.get("name")) for c in doc.get("categories") or []}
        per = dict.fromkeys(classes, 0)
        for a in doc.get("annotations") or []:
            name = names.get(a.get("category_id"), str(a.get("category_id")))
            per[name] = per.get(name, 0) + 1
        counts[split] = per
    for split, c in sorted((prep.manifest.get("counts") or {}).items(),
                           key=lambda kv: _split_key(kv[0])):
        if split not in counts and isinstance(c, dict):
            counts[split] = dict(c.get("per_class") or {})
            for name in counts[split]:
                if name not in classes:
                    classes.append(name)
    return classes, counts


def data_table(prep: PreparedInfo) -> Table:
    classes, counts = data_counts(prep)
    manifest_counts = prep.manifest.get("counts") or {}
    header = ["split", "images", "lesions", "patients"] + classes + [
        "long diameter median (mm)", "long diameter mean (mm)"]
    rows = []
    for split, per in counts.items():
        doc = prep.splits.get(split)
        m = manifest_counts.get(split) or {}
        if doc is not None:
            images = len(doc["images"])
            lesions = len(doc.get("annotations") or [])
            patients = len({im.get("patient_index") for im in doc["images"]
                            if im.get("patient_index") is not None}) or m.get("patients")
            d = lesion_diameters_mm(doc)
        else:
            images, lesions, patients, d = m.get("images"), m.get("lesions"), m.get("patients"), []
        rows.append([split, images, lesions, patients] + [per.get(c, 0) for c in classes]
                    + [Cell(statistics.median(d) if d else None, digits=1),
                       Cell(statistics.fmean(d) if d else None, digits=1)])
    note = ("Lesions per class from coco/<split>.json; long diameter: the first value of "
            "`recist_diameters_mm` (DeepLesion's long RECIST axis).")
    return Table("data", "Prepared data", header, rows, note)
