"""``lesion report``: one folder of figures, tables and overlays from training runs, evaluations
and a prepared data set, with an ``index.md`` that links everything.

Inputs (any of the three kinds may be missing, not all of them):

* **Training runs** (``runs``): folders of ``lesion train frcnn`` (``metrics.csv`` one row per
  epoch) or ``lesion train yolo`` (``metrics.csv`` one row per darknet iteration), each with the
  ``args.json`` its command wrote (architecture and options; for darknet the cfg's ``[net]`` keys
  and ``-map``). The run's name is its folder name. Loading rules: :mod:`.inputs`.
* **Evaluations** (``evals``): folders of ``lesion eval --out`` (``metrics.json``; docs/metrics.md
  section 11). Every number of the comparison tables is read from it. A folder of ``lesion eval
  --checkpoint every --out`` (``checkpoints.csv``, with or without a metrics.json) adds its
  mAP-over-training figure and its best checkpoints (:mod:`.checkpoints`).
* **Prepared folder** (``prepared``): ``manifest.json`` and ``coco/<split>.json``
  (docs/formats.md section 3) for the data figures, and images for overlays.

Detection overlays need each run's detection file, the ground truth and the images, found from
``metrics.json`` (rules: :mod:`deeplesion_cli.report.eval_sources`). A run without a recorded,
readable detection file gets no overlays and a warning in :attr:`ReportResult.warnings`. What
"best" and "worst" images are: :mod:`deeplesion_cli.report.overlays`.

Output layout (``out_dir``; every figure a PNG, plus a PDF beside it with ``pdf=True``)::

    index.md                              everything, in reading order, relative links
    report.tex                            LaTeX document inputting every table and figure
    runs/<run>_curves.png                 loss and train/val mAP50, mAP, mean IoU, FROC@4
    data/class_histogram.png              lesions per class and split
    data/box_size_mm.png                  long RECIST diameter per split
    eval/froc.png                         FROC of every evaluated run
    eval/checkpoints.png                  seed mAP and AP50 of every checkpoint, per run and split
    eval/pr_<run>.png                     PR per class at IoU 0.5
    eval/confusion_<run>.png              confusion matrix, counts
    eval/confusion_norm_<run>.png         the same, row-normalised
    overlays/<run>/best_<k>_<image>.png, worst_<k>_<image>.png, image_<image>.png
    overlays/prepared/<split>_<image>.png chosen images, ground truth only (no evaluation given)
    tables/<table>.md .tex .csv           runs, data, backends, per_class, froc, box_size

With several evaluations, each one's files go one folder deeper, ``eval/<eval>/`` and
``overlays/<eval>/<run>/`` (one evaluation: no such folder, so never ``eval/eval/``).

index.md reads top to bottom, one heading per section: Data (data table and histograms),
Training (run table), Results (the runs without detections in words, then the comparison
tables, each with its detection counts), Curves (each run's training curves, the FROC of every
run), Precision-recall and confusion per run, Overlays, Tables (the files), Warnings. No two
headings are the same. Checkpoints (mAP over training and the best checkpoints) comes after
Curves when an evaluation holds checkpoints.csv.

All files are written atomically. Names are made file-safe (anything but letters, digits, ``-``
and ``_`` becomes ``_``) and made unique with ``_2``, ``_3``... . This module lays out the
sections in reading order; the inputs are loaded by :mod:`.inputs`, the run and data tables made
by :mod:`.summaries`, the files written through :class:`.writer.ReportWriter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from deeplesion_cli import __version__, atomic
from deeplesion_cli.formats.groundtruth import EvalInputError, ground_truth_from_dict
from deeplesion_cli.report import checkpoints, latex, overlays, plots, tables
from deeplesion_cli.report.eval_sources import EvalSources
from deeplesion_cli.report.inputs import (EvalInfo, PreparedInfo, ReportInputError, RunInfo,
                                          load_eval, load_prepared, load_run)
from deeplesion_cli.report.summaries import (data_counts, data_table, lesion_diameters_mm,
                                             run_table)
from deeplesion_cli.report.writer import ReportWriter, safe_name, unique_names
from deeplesion_cli.spec.evaluation import REPORT

__all__ = ["build_report", "ReportResult", "ReportInputError"]

#: (label, run name, metrics.json block, metrics.json, evaluation) of each evaluated run.
EvalEntry = tuple[str, str, dict, dict, EvalInfo]


@dataclass
class ReportResult:
    out_dir: Path
    index: Path                 # out_dir / "index.md"
    files: list[Path]           # every file written
    warnings: list[str]


def build_report(runs: Sequence[Path] = (), evals: Sequence[Path] = (),
                 prepared: Path | None = None, out_dir: Path = Path("report"), *,
                 pdf: bool = REPORT["pdf"].default,
                 images: Sequence[str] = REPORT["images"].default,
                 n_overlay: int = REPORT["n_overlay"].default) -> ReportResult:
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
    run_labels = unique_names([safe_name(Path(r).resolve().name) for r in runs])
    run_infos = [load_run(r, label) for r, label in zip(runs, run_labels)]
    eval_labels = unique_names([safe_name(Path(e).resolve().name) for e in evals])
    eval_infos = [load_eval(e, label) for e, label in zip(evals, eval_labels)]
    curve_infos = [ev for ev in eval_infos if ev.checkpoints]   # checkpoints.csv
    eval_infos = [ev for ev in eval_infos if ev.document is not None]   # metrics.json
    prep = load_prepared(Path(prepared)) if prepared is not None else None
    if prep is not None:
        for ev in eval_infos:
            check_same_data(ev, prep)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)
    w = ReportWriter(out_dir, pdf)
    entries: list[EvalEntry] = [
        (name if len(eval_infos) == 1 else f"{ev.label}/{name}", name, block, ev.document, ev)
        for ev in eval_infos for name, block in ev.document["runs"].items()]
    w.md += ["# Lesion detection report\n",
             f"Written by lesion {__version__} (`lesion report`). Inputs: "
             + "; ".join(filter(None, [
                 f"{len(run_infos)} training run(s)" if run_infos else "",
                 f"{len(eval_infos)} evaluation(s)" if eval_infos else "",
                 f"{len(curve_infos)} checkpoint evaluation(s)" if curve_infos else "",
                 f"prepared folder `{prep.path}`" if prep else ""])) + ".\n"]
    if prep is not None:
        _data_section(w, prep)
    if run_infos:
        _runs_section(w, run_infos)
    if eval_infos:
        _results_section(w, eval_infos, entries)
    _curves_section(w, run_infos, entries)
    if curve_infos:
        _checkpoints_section(w, curve_infos)
    if eval_infos:
        _per_run_section(w, eval_infos, entries)
    _overlays_section(w, eval_infos, entries, prep, [str(n) for n in images], n_overlay)
    index = _finish(w)
    return ReportResult(out_dir=out_dir, index=index, files=list(w.files),
                        warnings=list(w.warnings))


def check_same_data(ev: EvalInfo, prep: PreparedInfo) -> None:
    """Refuse an evaluation scored on another prepared folder's data than ``prep``: both
    config hashes (metrics.json's ``prepared.config_hash``, the manifest's ``config_hash``) must
    be known and equal. An evaluation that records none (a plain COCO file, an older lesion) is
    not checked."""
    record = ev.document.get("prepared")
    theirs = record.get("config_hash") if isinstance(record, dict) else None
    ours = prep.manifest.get("config_hash")
    if theirs and ours and theirs != ours:
        raise ReportInputError(
            f"--eval {ev.path} was scored on the prepared folder {record.get('path')} "
            f"(config_hash {str(theirs)[:12]}), but --prepared {prep.path} holds other data "
            f"(config_hash {str(ours)[:12]}): give the prepared folder the evaluation was "
            "scored on, or re-run lesion eval on this one")


# ------------------------------------------------------------------------------------ sections

#: The heading of the per-run section (precision-recall and confusion matrices).
PER_RUN = "Precision-recall and confusion per run"


def eval_base(ev: EvalInfo, n_evals: int, top: str) -> str:
    """The folder of an evaluation's files under ``top`` (``eval``, ``overlays``): ``top/``
    itself for the only evaluation, ``top/<eval label>/`` with several (never
    ``eval/eval/``)."""
    return f"{top}/" if n_evals == 1 else f"{top}/{ev.label}/"


def _data_section(w: ReportWriter, prep: PreparedInfo) -> None:
    """The data table, lesions per class and split, and the lesion size per split."""
    w.md.append("## Data\n")
    w.md.append(f"Prepared folder `{prep.path}`"
                + (f", task {prep.manifest.get('options', {}).get('task')}"
                   if prep.manifest.get("options") else "") + ".\n")
    t = data_table(prep)
    w.add_table("Data", t, heading=None)
    _, counts = data_counts(prep)
    figs: list = []
    p = w.figure("data/class_histogram.png", plots.class_histogram, counts)
    w.md.append(w.image_md(p, "lesions per class and split") + "\n")
    w.tex_fig(p, "Lesions per class and split", figs)
    sizes = {s: lesion_diameters_mm(doc) for s, doc in prep.splits.items()}
    if any(sizes.values()):
        p = w.figure("data/box_size_mm.png", plots.size_histograms, sizes,
                     xlabel="long RECIST diameter (mm)", title="lesion size per split")
        w.md.append(w.image_md(p, "long diameter per split") + "\n")
        w.tex_fig(p, "Long RECIST diameter per split", figs)
    else:
        w.warn(f"{prep.path}: no lesion sizes in mm (no recist_diameters_mm or spacing_mm); "
               "no size histogram")
    w.tex_sections.append(("Data", [f"tables/{t.name}.tex"], figs))


def _runs_section(w: ReportWriter, run_infos: list[RunInfo]) -> None:
    """The run table (the curves come in :func:`_curves_section`)."""
    w.md.append("## Training\n")
    for run in run_infos:
        for note in run.notes:
            w.warn(note)
    w.md.append("Runs: " + "; ".join(f"`{run.label}`: {run.backend} run `{run.path}` "
                                     f"({len(run.rows)} rows in metrics.csv)"
                                     for run in run_infos) + ".\n")
    t = run_table(run_infos)
    w.add_table("Training", t, heading=None)
    w.tex_sections.append(("Training runs", [f"tables/{t.name}.tex"], []))


def _results_section(w: ReportWriter, eval_infos: list[EvalInfo],
                     entries: list[EvalEntry]) -> None:
    """What was evaluated, the runs without detections in words, and the comparison tables."""
    w.md.append("## Results\n")
    for ev in eval_infos:
        o = ev.document.get("options") or {}
        w.md.append(f"- `{ev.label}`: `{ev.path}`, ground truth "
                    f"`{ev.document.get('ground_truth')}`, IoU {o.get('iou')}, score "
                    f"{o.get('score')}, bootstrap {o.get('bootstrap', 0)}; runs: "
                    f"{', '.join(ev.document['runs'])}")
    w.md.append("")
    for ev in eval_infos:
        for message in ev.document.get("warnings") or []:
            w.warn(f"eval {ev.label}: {message}")
    flags = [tables.no_detection_words(lab, b, float((d.get("options") or {}).get("score", 0.25)))
             for lab, _, b, d, _ in entries]
    if any(flags):
        w.md.append("\n".join(f"- **{f}**" for f in flags if f) + "\n")
    blocks = [(lab, b, d) for lab, _, b, d, _ in entries]
    ev_tables = [tables.backend_table(blocks), tables.froc_table(blocks),
                 tables.per_class_table(blocks), tables.box_size_table(blocks)]
    for t in ev_tables:
        w.add_table("Results", t)
    w.tex_sections.append(("Results", [f"tables/{t.name}.tex" for t in ev_tables], []))


def _curves_section(w: ReportWriter, run_infos: list[RunInfo], entries: list[EvalEntry]) -> None:
    """Each run's training curves (loss, train/val mAP50, mAP, mean IoU, FROC@4 for Faster
    R-CNN; loss and mAP50 for darknet), then the FROC of every evaluated run."""
    froc_runs = {lab: b for lab, _, b, _, _ in entries if b.get("froc")}
    drawable = [run for run in run_infos if run.rows]
    for run in run_infos:
        if not run.rows:
            w.warn(f"run {run.label}: metrics.csv has no rows; no curves")
    if not drawable and not froc_runs:
        return
    w.md.append("## Curves\n")
    figs: list = []
    for run in drawable:
        if run.backend == "frcnn":   # every panel, even empty (it says why)
            kwargs = dict(x="epoch", xlabel="epoch", drop_empty=False)
        else:
            kwargs = plots.DARKNET_CURVES
            if not any(r.get("val_mAP50") is not None for r in run.rows):
                w.warn(f"run {run.label}: no val_mAP50 in metrics.csv (darknet trains "
                       "without -map): the curves show the loss only")
        w.md.append(f"### {run.label}: training curves\n")
        p = w.figure(f"runs/{run.label}_curves.png", plots.training_curves, run.rows,
                     title=f"{run.label} ({run.arch})", **kwargs)
        w.md.append(w.image_md(p, f"{run.label} training curves") + "\n")
        w.tex_fig(p, f"{run.label}: training curves (train and val)", figs)
    if froc_runs:
        p = w.figure("eval/froc.png", plots.froc_curves, froc_runs)
        w.md.append("### FROC of every run\n")
        w.md.append(w.image_md(p, "FROC") + "\n")
        w.tex_fig(p, "FROC of every evaluated run", figs)
    w.tex_sections.append(("Curves", [], figs))


def _checkpoints_section(w: ReportWriter, curve_infos: list[EvalInfo]) -> None:
    """Per evaluation with checkpoints.csv: the seed-protocol mAP and COCO AP50 of every
    checkpoint against training progress, and the table of each run's best checkpoints."""
    w.md.append("## Checkpoints: mAP over training\n")
    w.md.append("Every saved checkpoint of each run scored on each split (`lesion eval --run "
                "NAME=RUN --checkpoint every`): train solid, test dashed, val dotted. The best "
                "checkpoint of a run and split has the highest seed-protocol mAP (ties: the "
                "earliest).\n")
    figs: list = []
    tex_tables = []
    for ev in curve_infos:
        rows = ev.checkpoints
        base = eval_base(ev, len(curve_infos), "eval")
        if len(curve_infos) > 1:
            w.md.append(f"### {ev.label}: mAP over training\n")
        runs = ", ".join(dict.fromkeys(r["run"] for r in rows))
        p = w.figure(f"{base}checkpoints.png", checkpoints.checkpoint_curves, rows)
        w.md.append(f"`{ev.path}`: runs {runs}; {len(rows)} rows.\n")
        w.md.append(w.image_md(p, f"{ev.label} mAP over training") + "\n")
        w.tex_fig(p, f"{ev.label}: seed-protocol mAP and COCO AP50 of every checkpoint", figs)
        name = "checkpoints_best" if len(curve_infos) == 1 else f"checkpoints_best_{ev.label}"
        t = checkpoints.best_table(rows, name)
        if len(curve_infos) > 1:   # headings stay unique
            t.title += f" ({ev.label})"
        w.add_table("Checkpoints", t)
        tex_tables.append(f"tables/{t.name}.tex")
    w.tex_sections.append(("Checkpoints: mAP over training", tex_tables, figs))


def _per_run_section(w: ReportWriter, eval_infos: list[EvalInfo],
                     entries: list[EvalEntry]) -> None:
    """Per evaluated run: its PR curves and confusion matrices (counts, row-normalised)."""
    w.md.append(f"## {PER_RUN}\n")
    figs: list = []
    # file-safe run names, unique within each evaluation (a/b and a_b must not share a figure)
    safe_of = {id(ev): dict(zip(ev.document["runs"],
                                unique_names([safe_name(n) for n in ev.document["runs"]])))
               for ev in eval_infos}
    for lab, name, block, doc, ev in entries:
        base, safe = eval_base(ev, len(eval_infos), "eval"), safe_of[id(ev)][name]
        w.md.append(f"### {lab}: precision-recall and confusion\n")
        flag = tables.no_detection_words(lab, block,
                                         float((doc.get("options") or {}).get("score", 0.25)))
        if flag:
            w.md.append(f"**{flag}**\n")
        items = []
        if block.get("per_class"):
            p = w.figure(f"{base}pr_{safe}.png", plots.pr_curves, lab, block)
            items.append(w.image_md(p, f"{lab} PR"))
            w.tex_fig(p, f"{lab}: precision-recall per class at IoU 0.5", figs)
        if (block.get("confusion") or {}).get("matrix"):
            for suffix, norm, what in (("", False, "counts"), ("_norm", True, "row-normalised")):
                p = w.figure(f"{base}confusion{suffix}_{safe}.png", plots.confusion_matrix,
                             lab, block, normalize=norm)
                items.append(w.image_md(p, f"{lab} confusion {what}"))
                w.tex_fig(p, f"{lab}: confusion matrix ({what})", figs)
        w.md.append("\n".join(i for i in items if i) + "\n")
    w.tex_sections.append((PER_RUN, [], figs))


# ------------------------------------------------------------------------------------ overlays

def _overlays_section(w: ReportWriter, eval_infos: list[EvalInfo], entries: list[EvalEntry],
                      prep: PreparedInfo | None, wanted: list[str], n_overlay: int) -> None:
    """Best, worst and chosen images of every evaluated run; without evaluations, the chosen
    images of the prepared splits with their ground truth."""
    md: list[str] = []
    figs: list = []
    found: set[str] = set()
    for ev in eval_infos:
        runs_here = [(lab, name, b) for lab, name, b, _, e in entries if e is ev]
        if runs_here and (n_overlay > 0 or wanted):
            _eval_overlays(w, ev, runs_here, prep, wanted, n_overlay, found, md, figs,
                           n_evals=len(eval_infos))
    if wanted and not eval_infos and prep is not None:
        _prepared_overlays(w, prep, wanted, found, md, figs)
    for n in wanted:
        if n not in found:
            w.warn(f"image {n}: in no evaluated ground truth"
                   + (" or prepared split" if prep is not None and not eval_infos else "")
                   + "; no overlay")
    if md:
        w.md.append("## Overlays\n")
        w.md.append(f"Green: ground truth; orange: true positive, red: false positive, each with "
                    f"its score (detections at or above the evaluation's score threshold, at "
                    f"most {overlays.MAX_BOXES} per image). Best / worst: the {n_overlay} images "
                    "with the highest / lowest per-image F1 at that threshold (ties: mean IoU of "
                    "the true positives, then fewer false positives); rules in "
                    "`deeplesion_cli/report/overlays.py`.\n")
        w.md += md
        w.tex_sections.append(("Overlays", [], figs))


def _index_of(gt, name: str) -> int | None:
    """The ground-truth image named ``name`` (file name, basename or stem), or None."""
    return gt.image_index_of_name.get(name, gt.image_index_of_name.get(Path(name).stem))


def _eval_overlays(w: ReportWriter, ev: EvalInfo, runs_here: list[tuple[str, str, dict]],
                   prep: PreparedInfo | None, wanted: list[str], n_overlay: int,
                   found: set[str], md: list[str], figs: list, n_evals: int = 1) -> None:
    """Each run's best and worst ``n_overlay`` images and the ``wanted`` ones, at the
    evaluation's score threshold and IoU (``n_evals``: how many evaluations the report has,
    for :func:`eval_base`)."""
    data = EvalSources(ev, prep.path if prep else None, w)
    if data.gt is None:
        return
    chosen = []
    for n in wanted:
        idx = _index_of(data.gt, n)
        if idx is not None:
            found.add(n)
            chosen.append(idx)
    o = ev.document.get("options") or {}
    score, iou = float(o.get("score", 0.25)), float(o.get("iou", 0.5))
    safe_runs = dict(zip(ev.document["runs"],
                         unique_names([safe_name(n) for n in ev.document["runs"]])))
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
        md.append(f"### {lab}: overlays\n")
        line: list[str] = []
        current = None
        for prefix, kind, s in picks:
            if kind != current:
                if line:
                    md.append(" ".join(line) + "\n")
                md.append(f"{kind.capitalize()} images:\n")
                line, current = [], kind
            image_path = data.image_path(s.index)
            if image_path is None:
                w.warn(f"eval {ev.label}: image {s.name} not found (looked in "
                       f"{', '.join(str(d) for d in data.image_dirs)}); no overlay")
                continue
            gt_boxes, preds = overlays.boxes_of_image(data.gt, dets, s.index, score, iou,
                                                      matched)
            rel = (f"{eval_base(ev, n_evals, 'overlays')}{safe_runs[name]}/{prefix}_"
                   f"{safe_name(Path(s.name).stem)}.png")
            p = w.figure(rel, overlays_draw, image_path, gt_boxes, preds,
                         _overlay_caption(lab, s.name, kind, s, score, iou))
            line.append(w.image_md(p, f"{lab} {kind} {s.name}"))
            w.tex_fig(p, f"{lab}: {kind} image {s.name}", figs)
        if line:
            md.append(" ".join(line) + "\n")


def _prepared_overlays(w: ReportWriter, prep: PreparedInfo, wanted: list[str], found: set[str],
                       md: list[str], figs: list) -> None:
    """The ``wanted`` images of every prepared split with their ground truth only."""
    split_gts = {}
    for split, doc in prep.splits.items():
        try:
            split_gts[split] = ground_truth_from_dict(doc, f"{prep.path}/coco/{split}.json")
        except EvalInputError as exc:
            w.warn(f"{exc}; no overlays of split {split}")
    for n in wanted:
        for split, gt in split_gts.items():
            idx = _index_of(gt, n)
            if idx is None:
                continue
            found.add(n)
            file_name = gt.image_names[idx]
            image_path = prep.image_dirs[split] / file_name
            if not image_path.is_file():
                w.warn(f"{prep.path}: image {file_name} of split {split} not found "
                       f"({image_path}); no overlay")
                continue
            gt_boxes, _ = overlays.boxes_of_image(gt, None, idx, 1.0, 0.5)
            rel = f"overlays/prepared/{safe_name(split)}_{safe_name(Path(file_name).stem)}.png"
            p = w.figure(rel, overlays_draw, image_path, gt_boxes, [],
                         [f"{split}  |  {file_name}  |  ground truth", "green: ground truth"])
            md.append(w.image_md(p, f"{split} {file_name}") + "\n")
            w.tex_fig(p, f"{split}: {file_name} (ground truth)", figs)


def _overlay_caption(run_label: str, name: str, what: str, s: overlays.ImageScore | None,
                     score: float, iou: float) -> list[str]:
    lines = [f"{run_label}  |  {name}  |  {what}"]
    if s is not None:
        miou = f"{s.mean_iou:.2f}" if s.mean_iou is not None else "-"
        lines.append(f"F1 {s.f1:.2f} (TP {s.tp}, FP {s.fp}, FN {s.fn}), mean IoU {miou}, "
                     f"score >= {score:g}, IoU >= {iou:g}")
    lines.append(overlays.LEGEND)
    return lines


def overlays_draw(image_path, gt_boxes, preds, caption, path, pdf=False):
    """:func:`overlays.draw_overlay` in the argument order of ``ReportWriter.figure``."""
    return overlays.draw_overlay(image_path, path, gt_boxes, preds, caption, pdf=pdf)


# ------------------------------------------------------------------------ tables list and index

def _finish(w: ReportWriter) -> Path:
    """The list of tables, report.tex, the warnings; writes index.md and returns its path."""
    w.md.append("## Tables\n")
    w.md.append("Each table in Markdown (rounded; `[low, high]` = bootstrap 95% interval), LaTeX "
                "(booktabs) and CSV (full precision; intervals as `ci95 low` / `ci95 high` "
                "columns).\n")
    for section, t in w.tables:
        w.md.append(f"- {section}: {t.title}: {w.table_links(t)}")
    w.md.append("")
    w.text("report.tex", latex.document("Lesion detection report", w.tex_sections))
    w.md.append(f"LaTeX document with every table and figure: [report.tex](report.tex) (pdflatex, "
                f"{'PDF' if w.pdf else 'PNG'} figures).\n")
    if w.warnings:
        w.md.append("## Warnings\n")
        w.md += [f"- {m}" for m in w.warnings]
        w.md.append("")
    order = [line[3:].strip() for line in w.md if line.startswith("## ")]
    w.md.insert(2, "Sections, in reading order: " + " · ".join(order) + ".\n")
    return w.text("index.md", "\n".join(w.md))
