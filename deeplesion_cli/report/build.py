"""``lesion report``: one folder of figures, tables and overlays from training runs, evaluations
and a prepared data set, with an ``index.md`` that links everything.

Inputs (any of the three kinds may be missing, not all of them):

* **Training runs** (``runs``): folders of ``lesion train frcnn`` (``args.json`` with
  ``"command": "train frcnn"``, ``metrics.csv`` one row per epoch) or ``lesion train yolo``
  (``darknet.log``, ``metrics.csv`` one row per darknet iteration, the cfg copy). The run's name
  is its folder name.
* **Evaluations** (``evals``): folders of ``lesion eval --out`` (``metrics.json``; docs/metrics.md
  section 11). Every number of the comparison tables is read from it.
* **Prepared folder** (``prepared``): ``manifest.json`` and ``coco/<split>.json``
  (docs/formats.md section 3) for the data figures, and images for overlays.

Detection overlays need each run's detection file. The rule: ``metrics.json`` ->
``runs.<name>.detections`` (a path, or ``{"path": ..., "format": ...}``), else a top-level
``detections: {<name>: path}``; a relative path is tried against the current directory, then the
eval folder. The ground truth is metrics.json's ``ground_truth`` (tried as given, against the eval
folder, then as ``<prepared>/coco/<its file name>``); the images are ``<folder>/<split>/<file
name>`` of the prepared folder that holds it (or of ``prepared``). A run without a recorded,
readable detection file gets no overlays and a warning in :attr:`ReportResult.warnings`. What
"best" and "worst" images are: :mod:`deeplesion_cli.report.overlays`.

Output layout (``out_dir``; every figure a PNG, plus a PDF beside it with ``pdf=True``)::

    index.md                              everything, in reading order, relative links
    report.tex                            LaTeX document inputting every table and figure
    runs/<run>_curves.png                 loss and train/val mAP50, mAP, mean IoU, FROC@4
    data/class_histogram.png              lesions per class and split
    data/box_size_mm.png                  long RECIST diameter per split
    eval/froc.png                         FROC of every evaluated run
    eval/<eval>/pr_<run>.png              PR per class at IoU 0.5
    eval/<eval>/confusion_<run>.png       confusion matrix, counts
    eval/<eval>/confusion_norm_<run>.png  the same, row-normalised
    overlays/<eval>/<run>/best_<k>_<image>.png, worst_<k>_<image>.png, image_<image>.png
    overlays/prepared/<split>_<image>.png chosen images, ground truth only (no evaluation given)
    tables/<table>.md .tex .csv           runs, data, backends, per_class, froc, box_size

All files are written atomically. Names are made file-safe (anything but letters, digits, ``-``
and ``_`` becomes ``_``) and made unique with ``_2``, ``_3``... .
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from deeplesion_cli import __version__, atomic, runlog
from deeplesion_cli.report import latex, overlays, plots, tables
from deeplesion_cli.report.tables import Cell, Table

#: Default learning rates of ``lesion train frcnn`` (``frcnn.engine.DEFAULT_LR``, repeated here
#: so that a report never imports torch).
FRCNN_DEFAULT_LR = {"adam": 1e-4, "sgd": 2e-5}
#: Split order of the data figures; other splits follow in name order.
SPLIT_ORDER = ("train", "val", "test")


class ReportInputError(ValueError):
    """An input folder that cannot be reported on; the message names the path."""


@dataclass
class ReportResult:
    out_dir: Path
    index: Path                 # out_dir / "index.md"
    files: list[Path]           # every file written
    warnings: list[str]


# ------------------------------------------------------------------------------------- inputs


@dataclass
class RunInfo:
    path: Path
    name: str                   # folder name
    label: str                  # unique, file-safe
    backend: str                # "frcnn" | "darknet"
    rows: list[dict]
    args: dict = field(default_factory=dict)        # args.json (frcnn)
    net: dict = field(default_factory=dict)         # [net] options of the cfg (darknet)
    arch: str = ""
    with_map: bool = False                          # darknet -map


@dataclass
class EvalInfo:
    path: Path
    label: str
    document: dict


@dataclass
class PreparedInfo:
    path: Path
    manifest: dict
    splits: dict[str, dict]     # split -> COCO document
    image_dirs: dict[str, Path]


def _safe(name: str) -> str:
    text = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
    return text or "_"


def _unique(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportInputError(f"{path}: {what} is not valid JSON: {exc}") from None


def _darknet_cfg(run: Path, log_first_line: str) -> Path | None:
    cfgs = sorted(run.glob("*.cfg"))
    for token in log_first_line.split():
        token = token.strip("'\"")
        if token.endswith(".cfg"):
            named = run / Path(token).name
            if named.is_file():
                return named
    return cfgs[0] if cfgs else None


def load_run(path: Path, label: str) -> RunInfo:
    """A training run folder (see the module docstring); :class:`ReportInputError` when it is
    not one."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (a run folder of lesion train frcnn or "
                               "lesion train yolo)")
    metrics_path = path / "metrics.csv"
    if not metrics_path.is_file():
        raise ReportInputError(f"{path}: no metrics.csv: not a run folder of lesion train "
                               "frcnn or lesion train yolo")
    try:
        rows = runlog.read_metrics(metrics_path)
    except runlog.MetricsError as exc:
        raise ReportInputError(str(exc)) from None
    args_path, log_path = path / "args.json", path / "darknet.log"
    if args_path.is_file():
        args = _read_json(args_path, "args.json")
        if not isinstance(args, dict) or args.get("command") != "train frcnn":
            command = args.get("command") if isinstance(args, dict) else None
            raise ReportInputError(f"{args_path}: not written by lesion train frcnn (its "
                                   f"command is {command!r})")
        options = args.get("options") or {}
        arch = str(options.get("arch", "?"))
        return RunInfo(path, path.name, label, "frcnn", rows, args=args, arch=arch)
    if log_path.is_file():
        with open(log_path, encoding="utf-8", errors="replace") as f:
            first = f.readline().strip()
        first = first[2:] if first.startswith("$ ") else ""
        net, arch = {}, ""
        cfg_path = _darknet_cfg(path, first)
        if cfg_path is not None:
            from deeplesion_cli.darknet.cfg import parse_cfg

            text = cfg_path.read_text(encoding="utf-8", errors="replace")
            cfg = parse_cfg(text, str(cfg_path))
            if cfg.net is not None:
                net = dict(cfg.net.options)
            m = re.search(r"^#\s*lesion:\s*(\S+)\s+for\b", text, re.M)
            arch = m.group(1) if m else cfg_path.stem
        return RunInfo(path, path.name, label, "darknet", rows, net=net, arch=arch or "?",
                       with_map=" -map" in f" {first}")
    raise ReportInputError(f"{path}: has metrics.csv but neither args.json (lesion train frcnn) "
                           "nor darknet.log (lesion train yolo)")


def load_eval(path: Path, label: str) -> EvalInfo:
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (an output folder of lesion eval --out)")
    metrics = path / "metrics.json"
    if not metrics.is_file():
        raise ReportInputError(f"{path}: no metrics.json: not an output folder of lesion eval "
                               "--out")
    document = _read_json(metrics, "metrics.json")
    if not isinstance(document, dict) or not isinstance(document.get("runs"), dict):
        raise ReportInputError(f"{metrics}: not a metrics.json of lesion eval (no 'runs' object)")
    for name, block in document["runs"].items():
        if not isinstance(block, dict):
            raise ReportInputError(f"{metrics}: runs.{name} is not an object")
    return EvalInfo(path, label, document)


def _split_key(split: str):
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def load_prepared(path: Path) -> PreparedInfo:
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (a prepared folder of lesion prepare)")
    manifest_path = path / "manifest.json"
    manifest = _read_json(manifest_path, "manifest.json") if manifest_path.is_file() else {}
    files = (manifest.get("files") or {}) if isinstance(manifest, dict) else {}
    coco_files = {s: path / p for s, p in (files.get("coco") or {}).items()}
    if not coco_files:
        coco_files = {p.stem: p for p in sorted((path / "coco").glob("*.json"))}
    if not manifest and not coco_files:
        raise ReportInputError(f"{path}: neither manifest.json nor coco/*.json: not a prepared "
                               "folder of lesion prepare")
    splits = {}
    for split in sorted(coco_files, key=_split_key):
        if coco_files[split].is_file():
            doc = _read_json(coco_files[split], "COCO json")
            if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
                raise ReportInputError(f"{coco_files[split]}: not a COCO instances file")
            splits[split] = doc
    image_dirs = {s: path / p for s, p in (files.get("images") or {}).items()}
    for split in splits:
        image_dirs.setdefault(split, path / split)
    return PreparedInfo(path, manifest if isinstance(manifest, dict) else {}, splits, image_dirs)


# ---------------------------------------------------------------------------------- the report


class _Writer:
    """Collects written files and warnings; paths relative to the report folder."""

    def __init__(self, out_dir: Path, pdf: bool):
        self.out = out_dir
        self.pdf = pdf
        self.files: list[Path] = []
        self.warnings: list[str] = []

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out)).as_posix()

    def path(self, rel: str) -> Path:
        p = self.out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def text(self, rel: str, content: str) -> Path:
        p = self.path(rel)
        atomic.write_text(p, content)
        self.files.append(p)
        return p

    def figure(self, rel: str, draw, *args, **kwargs) -> Path | None:
        """``draw(*args, path, pdf=...)``; a figure that fails becomes a warning."""
        p = self.path(rel)
        try:
            written = draw(*args, p, pdf=self.pdf, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one bad figure must not sink the report
            self.warn(f"{rel}: figure not drawn: {type(exc).__name__}: {exc}")
            return None
        self.files += list(written)
        return p

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def _median(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def _int_if_whole(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def run_summary(run: RunInfo) -> dict:
    """The run table's values of one run (see :func:`run_table`)."""
    rows = run.rows
    unit = "epoch" if run.backend == "frcnn" else "iteration"
    where = "epoch" if run.backend == "frcnn" else "step"
    if run.backend == "frcnn":
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
        planned = o.get("epochs")
        backend = "torchvision Faster R-CNN"
        length = _int_if_whole(rows[-1]["epoch"]) if rows and rows[-1]["epoch"] is not None \
            else None
    else:
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
        backend = "darknet YOLO"
        length = rows[-1]["step"] if rows else None
    best_value, best_at = None, None
    for r in rows:
        v = r.get("val_mAP50")
        if v is not None and math.isfinite(v) and (best_value is None or v > best_value):
            best_value, best_at = v, _int_if_whole(r.get(where))
    last = rows[-1] if rows else {}
    final_loss = last.get("loss")
    if run.backend == "darknet" and last.get("avg_loss") is not None:
        final_loss = last["avg_loss"]
    return {"run": run.label, "backend": backend, "arch": run.arch, "options": ", ".join(parts),
            "trained": length, "planned": planned, "unit": unit,
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


def _diameters(doc: dict) -> list[float]:
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
            d = _diameters(doc)
        else:
            images, lesions, patients, d = m.get("images"), m.get("lesions"), m.get("patients"), []
        rows.append([split, images, lesions, patients] + [per.get(c, 0) for c in classes]
                    + [Cell(statistics.median(d) if d else None, digits=1),
                       Cell(statistics.fmean(d) if d else None, digits=1)])
    note = ("Lesions per class from coco/<split>.json; long diameter: the first value of "
            "`recist_diameters_mm` (DeepLesion's long RECIST axis).")
    return Table("data", "Prepared data", header, rows, note)


def _eval_runs(evals: list[EvalInfo]) -> list[tuple[str, str, dict, dict, EvalInfo]]:
    """(label, run name, block, document, eval): labels are the run names, or ``eval/run``
    when more than one evaluation is reported."""
    out = []
    for ev in evals:
        for name, block in ev.document["runs"].items():
            label = name if len(evals) == 1 else f"{ev.label}/{name}"
            out.append((label, name, block, ev.document, ev))
    return out


def _resolve(path_text: str, *bases: Path) -> Path | None:
    p = Path(path_text)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p] + [b / p for b in bases]
    return next((c for c in candidates if c.exists()), None)


class _EvalData:
    """The ground truth of one evaluation, its images, and the detections of its runs."""

    def __init__(self, ev: EvalInfo, prepared: Path | None, w: _Writer):
        from deeplesion_cli.evaluation.data import EvalInputError, load_ground_truth

        self.ev, self.w = ev, w
        self.gt = None
        self.image_dirs: list[Path] = []
        self.names_path: Path | None = None
        gt_text = str(ev.document.get("ground_truth") or "")
        gt_path = _resolve(gt_text, ev.path) if gt_text else None
        if gt_path is None and gt_text and prepared is not None:
            candidate = Path(prepared) / "coco" / Path(gt_text).name
            gt_path = candidate if candidate.is_file() else None
        if gt_path is None or not gt_path.is_file():
            w.warn(f"eval {ev.label}: ground truth {gt_text!r} not found (from {ev.path}); "
                   "no overlays for it")
            return
        try:
            self.gt = load_ground_truth(gt_path)
        except EvalInputError as exc:
            w.warn(f"eval {ev.label}: {exc}; no overlays for it")
            return
        split = gt_path.stem
        folder = gt_path.parent.parent if gt_path.parent.name == "coco" else gt_path.parent
        roots = [folder] + ([Path(prepared)] if prepared is not None else [])
        for root in roots:
            manifest = root / "manifest.json"
            rel = None
            if manifest.is_file():
                try:
                    rel = (json.loads(manifest.read_text()).get("files") or {}).get(
                        "images", {}).get(split)
                except (ValueError, AttributeError, OSError):
                    rel = None
            self.image_dirs += [root / rel] if rel else []
            self.image_dirs.append(root / split)
            if self.names_path is None and (root / "obj.names").is_file():
                self.names_path = root / "obj.names"
        self.image_dirs.append(gt_path.parent)

    def image_path(self, index: int) -> Path | None:
        name = self.gt.image_names[index]
        for d in self.image_dirs:
            for candidate in (d / name, d / Path(name).name):
                if candidate.is_file():
                    return candidate
        return None

    def detections(self, name: str, block: dict):
        from deeplesion_cli.evaluation.data import EvalInputError
        from deeplesion_cli.formats.detections import read_detections, read_names

        entry = block.get("detections")
        if entry is None:
            entry = (self.ev.document.get("detections") or {}).get(name)
        fmt = block.get("detections_format")
        if isinstance(entry, dict):
            fmt = entry.get("format", fmt)
            entry = entry.get("path")
        if not entry:
            self.w.warn(f"eval {self.ev.label}: run {name}: metrics.json records no detection "
                        "file (runs.<name>.detections); no overlays for it")
            return None
        path = _resolve(str(entry), self.ev.path)
        if path is None:
            self.w.warn(f"eval {self.ev.label}: run {name}: detection file {entry} not found; "
                        "no overlays for it")
            return None
        try:
            names = read_names(self.names_path) if self.names_path else None
            dets = read_detections(path, self.gt, fmt=None if fmt in (None, "auto") else fmt,
                                   names=names)
        except (EvalInputError, OSError) as exc:
            self.w.warn(f"eval {self.ev.label}: run {name}: {exc}; no overlays for it")
            return None
        if block.get("n_detections") is not None and len(dets) != block["n_detections"]:
            self.w.warn(f"eval {self.ev.label}: run {name}: {path} holds {len(dets)} detections, "
                        f"metrics.json counted {block['n_detections']}: the file changed since "
                        "the evaluation; overlays show the file as it is now")
        return dets


def _overlay_caption(run_label: str, name: str, what: str, s: overlays.ImageScore | None,
                     score: float, iou: float) -> list[str]:
    lines = [f"{run_label}  |  {name}  |  {what}"]
    if s is not None:
        miou = f"{s.mean_iou:.2f}" if s.mean_iou is not None else "-"
        lines.append(f"F1 {s.f1:.2f} (TP {s.tp}, FP {s.fp}, FN {s.fn}), mean IoU {miou}, "
                     f"score >= {score:g}, IoU >= {iou:g}")
    lines.append(overlays.LEGEND)
    return lines


def build_report(runs: Sequence[Path] = (), evals: Sequence[Path] = (), prepared: Path | None = None,
                 out_dir: Path = Path("report"), *, pdf: bool = False, images: Sequence[str] = (),
                 n_overlay: int = 4) -> ReportResult:
    """Write the report of ``runs``, ``evals`` and ``prepared`` into ``out_dir`` (layout and
    input rules in the module docstring). Raises :class:`ReportInputError` naming the path of an
    input that is not what it should be (a run folder without metrics.csv, an eval folder without
    metrics.json, ...), or when no input is given at all. Problems that only cost a figure or
    the overlays of a run are returned as warnings."""
    runs = [Path(r) for r in runs]
    evals = [Path(e) for e in evals]
    if not runs and not evals and prepared is None:
        raise ReportInputError("nothing to report: give training run folders, lesion eval "
                               "folders (--eval) or a prepared folder (--prepared)")
    run_labels = _unique([_safe(Path(r).resolve().name) for r in runs])
    run_infos = [load_run(r, label) for r, label in zip(runs, run_labels)]
    eval_labels = _unique([_safe(Path(e).resolve().name) for e in evals])
    eval_infos = [load_eval(e, label) for e, label in zip(evals, eval_labels)]
    prep = load_prepared(Path(prepared)) if prepared is not None else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)
    w = _Writer(out_dir, pdf)
    md: list[str] = ["# Lesion detection report\n",
                     f"Written by lesion {__version__} (`lesion report`). Inputs: "
                     + "; ".join(filter(None, [
                         f"{len(run_infos)} training run(s)" if run_infos else "",
                         f"{len(eval_infos)} evaluation(s)" if eval_infos else "",
                         f"prepared folder `{prep.path}`" if prep else ""])) + ".\n"]
    all_tables: list[tuple[str, Table]] = []
    tex_sections: list[tuple[str, list[str], list[tuple[str, str]]]] = []

    def table_links(t: Table) -> str:
        return " · ".join(f"[{kind}](tables/{t.name}.{ext})"
                          for kind, ext in (("Markdown", "md"), ("LaTeX", "tex"), ("CSV", "csv")))

    def add_table(section: str, t: Table) -> None:
        w.text(f"tables/{t.name}.md", tables.table_markdown(t, heading="#"))
        w.text(f"tables/{t.name}.tex", latex.table_latex(t))
        w.text(f"tables/{t.name}.csv", tables.table_csv(t))
        all_tables.append((section, t))
        md.append(tables.table_markdown(t, heading="###"))
        md.append(f"Table files: {table_links(t)}\n")

    def image_md(p: Path | None, alt: str) -> str:
        if p is None:
            return ""
        rel = w.rel(p)
        text = f"![{alt}]({rel})"
        if pdf and p.with_suffix(".pdf").is_file():
            text += f" ([PDF]({w.rel(p.with_suffix('.pdf'))}))"
        return text

    def tex_fig(p: Path | None, caption: str, figs: list) -> None:
        if p is not None:
            figs.append((w.rel(p.with_suffix(".pdf") if pdf else p), caption))

    # -- training runs
    if run_infos:
        md.append("## Training runs\n")
        t = run_table(run_infos)
        add_table("Training runs", t)
        figs: list = []
        for run in run_infos:
            md.append(f"### {run.label}\n")
            md.append(f"{run.backend} run `{run.path}` ({len(run.rows)} rows in metrics.csv).\n")
            if not run.rows:
                w.warn(f"run {run.label}: metrics.csv has no rows; no curves")
                continue
            if run.backend == "frcnn":
                kwargs = dict(x="epoch", xlabel="epoch")
            else:
                kwargs = dict(x="step", xlabel="iteration",
                              panels=(("loss", None), ("mAP50", "mAP50")),
                              loss_columns=("loss", "avg_loss"))
                if not any(r.get("val_mAP50") is not None for r in run.rows):
                    w.warn(f"run {run.label}: no val_mAP50 in metrics.csv (darknet trains "
                           "without -map): the curves show the loss only")
            p = w.figure(f"runs/{run.label}_curves.png", plots.training_curves, run.rows,
                         title=f"{run.label} ({run.arch})", drop_empty=True, **kwargs)
            md.append(image_md(p, f"{run.label} training curves") + "\n")
            tex_fig(p, f"{run.label}: training curves (train and val)", figs)
        tex_sections.append(("Training runs", [f"tables/{t.name}.tex"], figs))

    # -- data
    if prep is not None:
        md.append("## Data\n")
        md.append(f"Prepared folder `{prep.path}`"
                  + (f", task {prep.manifest.get('options', {}).get('task')}"
                     if prep.manifest.get("options") else "") + ".\n")
        t = data_table(prep)
        add_table("Data", t)
        classes, counts = data_counts(prep)
        figs = []
        p = w.figure("data/class_histogram.png", plots.class_histogram, counts)
        md.append(image_md(p, "lesions per class and split") + "\n")
        tex_fig(p, "Lesions per class and split", figs)
        sizes = {s: _diameters(doc) for s, doc in prep.splits.items()}
        if any(sizes.values()):
            p = w.figure("data/box_size_mm.png", plots.size_histograms, sizes,
                         xlabel="long RECIST diameter (mm)", title="lesion size per split")
            md.append(image_md(p, "long diameter per split") + "\n")
            tex_fig(p, "Long RECIST diameter per split", figs)
        else:
            w.warn(f"{prep.path}: no lesion sizes in mm (no recist_diameters_mm or spacing_mm); "
                   "no size histogram")
        tex_sections.append(("Data", [f"tables/{t.name}.tex"], figs))

    # -- evaluation
    entries = _eval_runs(eval_infos)
    if eval_infos:
        md.append("## Evaluation\n")
        for ev in eval_infos:
            o = ev.document.get("options") or {}
            md.append(f"- `{ev.label}`: `{ev.path}`, ground truth "
                      f"`{ev.document.get('ground_truth')}`, IoU {o.get('iou')}, score "
                      f"{o.get('score')}, bootstrap {o.get('bootstrap', 0)}; runs: "
                      f"{', '.join(ev.document['runs'])}")
        md.append("")
        ev_tables = [tables.backend_table([(lab, b, d) for lab, _, b, d, _ in entries]),
                     tables.froc_table([(lab, b, d) for lab, _, b, d, _ in entries]),
                     tables.per_class_table([(lab, b, d) for lab, _, b, d, _ in entries]),
                     tables.box_size_table([(lab, b, d) for lab, _, b, d, _ in entries])]
        for t in ev_tables:
            add_table("Evaluation", t)
        figs = []
        froc_runs = {lab: b for lab, _, b, _, _ in entries if b.get("froc")}
        if froc_runs:
            p = w.figure("eval/froc.png", plots.froc_curves, froc_runs)
            md.append("### FROC of every run\n")
            md.append(image_md(p, "FROC") + "\n")
            tex_fig(p, "FROC of every evaluated run", figs)
        for lab, name, block, _doc, ev in entries:
            base = f"eval/{ev.label}/"
            safe = _safe(name)
            md.append(f"### {lab}: precision-recall and confusion\n")
            items = []
            if block.get("per_class"):
                p = w.figure(f"{base}pr_{safe}.png", plots.pr_curves, lab, block)
                items.append(image_md(p, f"{lab} PR"))
                tex_fig(p, f"{lab}: precision-recall per class at IoU 0.5", figs)
            if (block.get("confusion") or {}).get("matrix"):
                for suffix, norm, what in (("", False, "counts"),
                                           ("_norm", True, "row-normalised")):
                    p = w.figure(f"{base}confusion{suffix}_{safe}.png", plots.confusion_matrix,
                                 lab, block, normalize=norm)
                    items.append(image_md(p, f"{lab} confusion {what}"))
                    tex_fig(p, f"{lab}: confusion matrix ({what})", figs)
            md.append("\n".join(i for i in items if i) + "\n")
        tex_sections.append(("Evaluation", [f"tables/{t.name}.tex" for t in ev_tables], figs))

    # -- overlays
    overlay_md: list[str] = []
    overlay_figs: list = []
    wanted = [str(n) for n in images]
    found_names: set[str] = set()
    for ev in eval_infos:
        runs_here = [(lab, name, b) for lab, name, b, _, e in entries if e is ev]
        if not runs_here or (n_overlay <= 0 and not wanted):
            continue
        data = _EvalData(ev, prep.path if prep else None, w)
        if data.gt is None:
            continue
        chosen = []
        for n in wanted:
            idx = data.gt.image_index_of_name.get(n, data.gt.image_index_of_name.get(Path(n).stem))
            if idx is None:
                continue
            found_names.add(n)
            chosen.append(idx)
        o = ev.document.get("options") or {}
        score, iou = float(o.get("score", 0.25)), float(o.get("iou", 0.5))
        for lab, name, block in runs_here:
            dets = data.detections(name, block)
            if dets is None:
                continue
            matched = overlays.match_at(data.gt, dets, score, iou)
            per_image = overlays.image_scores(data.gt, dets, score, iou)
            best, worst = overlays.best_and_worst(per_image, n_overlay)
            picks = [(f"best_{k}", "best", s) for k, s in enumerate(best, 1)]
            picks += [(f"worst_{k}", "worst", s) for k, s in enumerate(worst, 1)]
            picks += [("image", "chosen", per_image[i]) for i in chosen]
            overlay_md.append(f"### {lab}\n")
            line: list[str] = []
            current = None
            for prefix, kind, s in picks:
                if kind != current:
                    if line:
                        overlay_md.append(" ".join(line) + "\n")
                    overlay_md.append(f"{kind.capitalize()} images:\n")
                    line, current = [], kind
                image_path = data.image_path(s.index)
                if image_path is None:
                    w.warn(f"eval {ev.label}: image {s.name} not found (looked in "
                           f"{', '.join(str(d) for d in data.image_dirs)}); no overlay")
                    continue
                gt_boxes, preds = overlays.boxes_of_image(data.gt, dets, s.index, score, iou,
                                                          matched)
                rel = (f"overlays/{ev.label}/{_safe(name)}/{prefix}_"
                       f"{_safe(Path(s.name).stem)}.png")
                p = w.figure(rel, overlays_draw, image_path, gt_boxes, preds,
                             _overlay_caption(lab, s.name, kind, s, score, iou))
                line.append(image_md(p, f"{lab} {kind} {s.name}"))
                tex_fig(p, f"{lab}: {kind} image {s.name}", overlay_figs)
            if line:
                overlay_md.append(" ".join(line) + "\n")
    if wanted and not eval_infos and prep is not None:
        from deeplesion_cli.evaluation.data import EvalInputError, ground_truth_from_dict

        split_gts = {}
        for split, doc in prep.splits.items():
            try:
                split_gts[split] = ground_truth_from_dict(doc, f"{prep.path}/coco/{split}.json")
            except EvalInputError as exc:
                w.warn(f"{exc}; no overlays of split {split}")
        for n in wanted:
            for split, gt in split_gts.items():
                idx = gt.image_index_of_name.get(n, gt.image_index_of_name.get(Path(n).stem))
                if idx is None:
                    continue
                found_names.add(n)
                file_name = gt.image_names[idx]
                image_path = prep.image_dirs[split] / file_name
                if not image_path.is_file():
                    w.warn(f"{prep.path}: image {file_name} of split {split} not found "
                           f"({image_path}); no overlay")
                    continue
                gt_boxes, _ = overlays.boxes_of_image(gt, None, idx, 1.0, 0.5)
                rel = f"overlays/prepared/{_safe(split)}_{_safe(Path(file_name).stem)}.png"
                p = w.figure(rel, overlays_draw, image_path, gt_boxes, [],
                             [f"{split}  |  {file_name}  |  ground truth",
                              "green: ground truth"])
                overlay_md.append(image_md(p, f"{split} {file_name}") + "\n")
                tex_fig(p, f"{split}: {file_name} (ground truth)", overlay_figs)
    for n in wanted:
        if n not in found_names:
            w.warn(f"image {n}: in no evaluated ground truth"
                   + (" or prepared split" if prep is not None and not eval_infos else "")
                   + "; no overlay")
    if overlay_md:
        md.append("## Overlays\n")
        md.append(f"Green: ground truth; orange: true positive, red: false positive, each with "
                  f"its score (detections at or above the evaluation's score threshold, at most "
                  f"{overlays.MAX_BOXES} per image). Best / worst: the {n_overlay} images with "
                  "the highest / lowest per-image F1 at that threshold (ties: mean IoU of the "
                  "true positives, then fewer false positives); rules in "
                  "`deeplesion_cli/report/overlays.py`.\n")
        md += overlay_md
        tex_sections.append(("Overlays", [], overlay_figs))

    # -- tables, LaTeX document, warnings, index
    md.append("## Tables\n")
    md.append("Each table in Markdown (rounded; `[low, high]` = bootstrap 95% interval), LaTeX "
              "(booktabs) and CSV (full precision; intervals as `ci95 low` / `ci95 high` "
              "columns).\n")
    for section, t in all_tables:
        md.append(f"- {section}: {t.title}: {table_links(t)}")
    md.append("")
    w.text("report.tex", latex.document("Lesion detection report", tex_sections))
    md.append(f"LaTeX document with every table and figure: [report.tex](report.tex) (pdflatex, "
              f"{'PDF' if pdf else 'PNG'} figures).\n")
    if w.warnings:
        md.append("## Warnings\n")
        md += [f"- {m}" for m in w.warnings]
        md.append("")
    index = w.text("index.md", "\n".join(md))
    return ReportResult(out_dir=out_dir, index=index, files=list(w.files),
                        warnings=list(w.warnings))


def overlays_draw(image_path, gt_boxes, preds, caption, path, pdf=False):
    """:func:`overlays.draw_overlay` in the argument order of ``_Writer.figure``."""
    return overlays.draw_overlay(image_path, path, gt_boxes, preds, caption, pdf=pdf)
