"""Every metric of one detection run in one pass, and the side-by-side comparison of runs.

``evaluate_run(gt, dets, options)`` returns the block that ``metrics.json`` holds per run (schema
in docs/metrics.md); ``evaluate_runs`` adds patient-level bootstrap intervals and, for two runs,
the paired difference.

Progress: an evaluation that runs longer than :data:`PROGRESS_AFTER_S` shows a bar (plain lines
when piped, :mod:`deeplesion_cli.progress`) counting its stages (run by run, metric by metric),
and the bootstrap another counting its resamples. The bootstrap runs its resamples in
``options.workers`` processes (default: every core this process may use, once the first resample
shows the whole would outlast :data:`POOL_AFTER_S` in one); the patients of
resample ``i`` are drawn from one generator seeded with ``options.seed``, in order, whatever the
number of processes, so the intervals do not depend on it (tested).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict

import numpy as np

from deeplesion_cli import __version__
from deeplesion_cli.deeplesion.schema import LESION_TYPES
from deeplesion_cli.evaluation import (boxstats, coco, confusion, froc, sanity, seed, threshold,
                                       voc)
from deeplesion_cli.evaluation.arrays import concat_ranges
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth
from deeplesion_cli.progress import Progress
from deeplesion_cli.spec.evaluation import EVAL

#: Long-diameter bins in mm of the DeepLesion papers' size analysis (upper ends exclusive).
SIZE_BINS_MM = (("<10mm", 0.0, 10.0), ("10-30mm", 10.0, 30.0), (">30mm", 30.0, np.inf))
#: Metrics the bootstrap resamples: (name, function of one run's metrics block).
BOOTSTRAP_METRICS = {
    "coco.AP": lambda m: m["coco"]["AP"],
    "coco.AP50": lambda m: m["coco"]["AP50"],
    "voc.map_all": lambda m: m["voc"]["map_all"],
    "froc.mean_sens_0.5_4": lambda m: m["froc"]["mean_sens_0.5_4"],
    "froc.sens@4": lambda m: m["froc"]["sens"][m["froc"]["fps"].index(4)],
    "at_score.f1": lambda m: m["at_score"]["f1"],
}


#: an evaluation (and a bootstrap) shows its progress once it has run this long, in seconds ...
PROGRESS_AFTER_S = 3.0
#: ... and, when piped, prints a line at most this often
PROGRESS_EVERY_S = 5.0
#: a bootstrap with the default ``workers`` (every core) starts processes only when its
#: resamples would take longer than this in one, in seconds (the first one is timed)
POOL_AFTER_S = 2.0
#: the stages of :func:`evaluate_run` that the progress bar counts (and ``froc_strict``'s)
STAGES = ("coco", "voc", "seed protocol", "froc", "at score", "best f1", "confusion",
          "box size", "strata")

_ANNOTATIONS = {"float": "float", "int": "int", "bool": "bool"}
#: options that do not change results (``workers``): metrics.json does not record them
_NOT_RECORDED = frozenset(o.name for o in EVAL if not o.compared)


def _to_json(self) -> dict:
    return {k: v for k, v in asdict(self).items() if k not in _NOT_RECORDED}


#: The options of ``lesion eval`` (frozen): fields, types and defaults are those declared once in
#: :data:`deeplesion_cli.spec.evaluation.EVAL` (``iou``: VOC, seed protocol, at-score metrics,
#: confusion and box sizes; ``score``: the at-score threshold; ``froc_strict``; ``bootstrap``:
#: patient-level resamples, 0 for none; ``seed``: the bootstrap's; ``workers``: its processes,
#: None for every core this process may use; not recorded in metrics.json).
EvalOptions = dataclasses.make_dataclass(
    "EvalOptions",
    [(o.name, _ANNOTATIONS[o.kind], dataclasses.field(default=o.default)) for o in EVAL],
    frozen=True,
    namespace={"to_json": _to_json,
               "__doc__": "The options of ``lesion eval`` (fields: the options of "
                          ":data:`deeplesion_cli.spec.evaluation.EVAL`, same names and "
                          "defaults)."},
)
EvalOptions.__module__ = __name__  # pickling and repr find it here


def _core(gt: GroundTruth, dets: Detections, options: EvalOptions) -> dict:
    """The metrics that bootstrap replicates recompute."""
    return {
        "coco": coco.evaluate(gt, dets)["stats"],
        "voc": voc.voc_ap(gt, dets, iou=options.iou),
        "froc": froc.froc(gt, dets),
        "at_score": threshold.at_threshold(gt, dets, score=options.score, iou=options.iou),
    }


def evaluate_run(gt: GroundTruth, dets: Detections, options: EvalOptions = EvalOptions(), *,
                 progress: Progress | None = None, name: str = "") -> dict:
    """All metrics of one run: COCO, VOC/darknet, seed protocol, FROC, at-threshold, best F1,
    confusion matrix, box size agreement and the size/type strata. ``progress`` advances by
    one per stage of :data:`STAGES` (and ``froc_strict``), its text naming run ``name`` and the
    stage done."""

    def done(stage: str) -> None:
        if progress is not None:
            progress.advance(1, info=f"{name}: {stage}" if name else stage)

    coco_result = coco.evaluate(gt, dets)
    done("coco")
    voc_result = voc.voc_ap(gt, dets, iou=options.iou)
    done("voc")
    per_class = coco_result["per_class"]
    for cat_id, block in per_class.items():
        v = voc_result["per_class"].get(cat_id, {})
        block["voc_ap11"] = v.get("ap11")
        block["voc_ap_all"] = v.get("ap_all")
        k = coco_result["category_ids"].index(int(cat_id))
        block["pr_curve_iou50"] = {
            "recall": [round(float(r), 2) for r in coco.RECALL_THRESHOLDS],
            "precision": [float(p) for p in coco_result["precision"][0, :, k, 0, -1]],
        }
    out = {
        "n_images": int(gt.n_images),
        "n_ground_truth": int(len(gt.image)),
        "n_detections": int(len(dets)),
        "coco": coco_result["stats"],
        "per_class": per_class,
        "voc": voc_result,
    }
    stages = (
        ("seed_protocol", "seed protocol",
         lambda: seed.seed_protocol(gt, dets, iou=options.iou, score=options.score)),
        ("froc", "froc", lambda: froc.froc(gt, dets)),
        ("at_score", "at score",
         lambda: threshold.at_threshold(gt, dets, score=options.score, iou=options.iou)),
        ("best_f1", "best f1", lambda: threshold.best_f1(gt, dets, iou=options.iou)),
        ("confusion", "confusion",
         lambda: confusion.confusion_matrix(gt, dets, score=options.score, iou=options.iou)),
        ("box_size", "box size",
         lambda: boxstats.box_size_agreement(gt, dets, score=options.score, iou=options.iou)),
        ("strata", "strata", lambda: strata(gt, dets, options)),
    )
    for key, stage, compute in stages:
        out[key] = compute()
        done(stage)
    if options.froc_strict:
        out["froc_strict"] = froc.froc(gt, dets, strict=True)
        done("froc strict")
    out["warnings"] = sanity.run_warnings(gt, dets, out, options.score)
    return out


def class_agnostic(gt: GroundTruth, dets: Detections) -> tuple[GroundTruth, Detections]:
    """The same boxes with every class merged into one, ``0 lesion``."""
    return (dataclasses.replace(gt, category=np.zeros_like(gt.category), categories=[(0, "lesion")]),
            dataclasses.replace(dets, category=np.zeros_like(dets.category)))


def strata(gt: GroundTruth, dets: Detections, options: EvalOptions) -> dict:
    """Class-agnostic FROC and recall at the score threshold per lesion-size bin (long RECIST
    diameter) and per lesion type, keeping every detection and restricting the ground truth, as
    the DeepLesion papers do (so a hit on a lesion outside the stratum counts as a false
    positive). Types are DeepLesion's ``lesion_type``, or the categories when the file has none."""
    masks: dict[str, dict[str, np.ndarray]] = {"size": {}, "type": {}}
    if np.isfinite(gt.diameter_mm).any():
        for name, lo, hi in SIZE_BINS_MM:
            masks["size"][name] = (gt.diameter_mm >= lo) & (gt.diameter_mm < hi)
    if (gt.lesion_type != 0).any():
        for code in sorted(set(gt.lesion_type.tolist())):
            masks["type"][LESION_TYPES.get(code, "unlabelled")] = gt.lesion_type == code
    else:
        for cat_id, name in gt.categories:
            masks["type"][name] = gt.category == cat_id
    agnostic_gt, agnostic_dets = class_agnostic(gt, dets)
    out: dict[str, dict] = {}
    for kind, by_name in masks.items():
        out[kind] = {}
        for name, mask in by_name.items():
            sub = agnostic_gt.subset(mask)
            at = threshold.at_threshold(sub, agnostic_dets, score=options.score, iou=options.iou)
            out[kind][name] = {"n_lesions": int(mask.sum()), "froc": froc.froc(sub, agnostic_dets),
                               "recall_at_score": at["recall"]}
    return out


# ------------------------------------------------------------------------------------ bootstrap


def resample(gt: GroundTruth, dets: Detections, patients: np.ndarray) -> tuple[GroundTruth, Detections]:
    """The ground truth and detections of the images of ``patients`` (with repeats): a patient
    drawn twice contributes its images twice, as distinct images."""
    _, patient_of_image = np.unique(gt.image_patients, return_inverse=True)
    by_patient = np.argsort(patient_of_image, kind="stable")
    counts = np.bincount(patient_of_image)
    starts = np.cumsum(counts) - counts
    chosen = by_patient[concat_ranges(starts[patients], counts[patients])]
    new_index = np.arange(len(chosen))
    # For each original image, the list of its copies; build annotation/detection copies.
    order = np.argsort(chosen, kind="stable")
    sorted_chosen = chosen[order]

    def copies(image: np.ndarray):
        lo = np.searchsorted(sorted_chosen, image, side="left")
        hi = np.searchsorted(sorted_chosen, image, side="right")
        item = np.repeat(np.arange(len(image)), hi - lo)
        return item, new_index[order[concat_ranges(lo, hi - lo)]]

    g_item, g_image = copies(gt.image)
    d_item, d_image = copies(dets.image)
    new_gt = GroundTruth(
        gt.source, new_index.astype(np.int64), [gt.image_names[i] for i in chosen],
        gt.image_sizes[chosen], gt.image_patients[chosen], gt.categories,
        g_image, gt.category[g_item], gt.box_xywh[g_item], gt.area[g_item], gt.iscrowd[g_item],
        gt.diameter_mm[g_item], gt.lesion_type[g_item])
    new_dets = Detections(dets.source, d_image, dets.category[d_item], dets.box_xywh[d_item],
                          dets.score[d_item])
    return new_gt, new_dets


def bootstrap_workers(workers: int | None, n_resamples: int) -> int:
    """The processes a bootstrap of ``n_resamples`` runs in: ``workers``, or every core this
    process may use when None, never more than the resamples."""
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - no sched_getaffinity (macOS)
            workers = os.cpu_count() or 1
    return max(1, min(int(workers), n_resamples))


def _replicate(gt: GroundTruth, runs: dict[str, Detections], options: EvalOptions,
               patients: np.ndarray) -> dict[str, list[float]]:
    """One resample's :data:`BOOTSTRAP_METRICS` per run (in that order)."""
    row = {}
    for name, dets in runs.items():
        sample_gt, sample_dets = resample(gt, dets, patients)
        block = _core(sample_gt, sample_dets, options)
        row[name] = [get(block) for get in BOOTSTRAP_METRICS.values()]
    return row


_WORKER: tuple | None = None   # (gt, runs, options) of a bootstrap worker process


def _init_worker(gt, runs, options) -> None:
    global _WORKER
    _WORKER = (gt, runs, options)


def _replicate_chunk(chunk: list[np.ndarray]) -> list[dict[str, list[float]]]:
    gt, runs, options = _WORKER
    return [_replicate(gt, runs, options, patients) for patients in chunk]


def _pool_context():
    import multiprocessing

    # forkserver: forking a parent that already runs threads (torch, rich) can deadlock
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context()


def _pooled(gt, runs, options, draws, n_workers: int, progress: Progress) -> list[dict]:
    """:func:`_replicate` of every patient draw of ``draws`` (in order) in ``n_workers``
    processes; the rows come back in the order of the draws."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    size = max(1, min(16, -(-options.bootstrap // (4 * n_workers))))  # a few per worker
    rows: dict[int, list[dict]] = {}
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context(),
                               initializer=_init_worker, initargs=(gt, runs, options))
    try:
        pending: dict = {}
        index = 0
        while True:
            # the parent draws the patients, in order; at most 2 chunks per worker in flight
            while len(pending) < 2 * n_workers:
                chunk = [p for _, p in zip(range(size), draws)]
                if not chunk:
                    break
                pending[pool.submit(_replicate_chunk, chunk)] = index
                index += 1
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                rows[pending.pop(future)] = result = future.result()
                progress.advance(len(result))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [row for i in range(len(rows)) for row in rows[i]]


def bootstrap(gt: GroundTruth, runs: dict[str, Detections], options: EvalOptions,
              show_progress: bool = False) -> dict:
    """95% percentile intervals of :data:`BOOTSTRAP_METRICS` per run, from ``options.bootstrap``
    resamples of patients with replacement; every run sees the same resamples, so for two runs the
    paired difference (first minus second) gets its own interval. The resamples run in
    :func:`bootstrap_workers` processes; resample ``i`` draws its patients from one generator
    seeded with ``options.seed`` in order, so the result does not depend on their number."""
    rng = np.random.default_rng(options.seed)
    n_patients = len(np.unique(gt.image_patients))
    n = options.bootstrap
    draws = (rng.integers(0, n_patients, n_patients) for _ in range(n))
    n_workers = bootstrap_workers(options.workers, n)
    with Progress(n, "bootstrap", unit="resamples", enabled=show_progress,
                  after_s=PROGRESS_AFTER_S, interval_s=PROGRESS_EVERY_S) as progress:
        start = time.monotonic()
        rows = [_replicate(gt, runs, options, next(draws))]
        progress.advance()
        # the default (every core) starts processes only for work that outlasts their start
        if options.workers is None and (time.monotonic() - start) * (n - 1) < POOL_AFTER_S:
            n_workers = 1
        if n_workers == 1:
            for patients in draws:
                rows.append(_replicate(gt, runs, options, patients))
                progress.advance()
        else:
            rows += _pooled(gt, runs, options, draws, n_workers, progress)
    values = {name: {m: [row[name][k] for row in rows]
                     for k, m in enumerate(BOOTSTRAP_METRICS)} for name in runs}

    def interval(xs):
        xs = np.asarray(xs, float)
        return [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))]

    out = {"n": options.bootstrap, "seed": options.seed, "unit": "patient", "workers": n_workers,
           "ci95": {name: {m: interval(v) for m, v in per.items()} for name, per in values.items()}}
    names = list(runs)
    if len(names) == 2:
        a, b = names
        out["paired"] = {
            "runs": [a, b],
            "ci95_difference": {m: interval(np.subtract(values[a][m], values[b][m]))
                                for m in BOOTSTRAP_METRICS},
        }
    return out


def _absolute(source: str) -> str | None:
    if not source:
        return None
    from pathlib import Path

    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def evaluate_runs(gt: GroundTruth, runs: dict[str, Detections],
                  options: EvalOptions = EvalOptions(), ground_truth_path: str = "",
                  show_progress: bool = False, prepared: dict | None = None) -> dict:
    """metrics.json: one block per run, the options, and bootstrap intervals when asked.

    ``ground_truth`` and each run's ``detections`` are stored as absolute paths; ``prepared``
    (``{"path", "split", "config_hash"}`` of the prepared folder the ground truth comes from, or
    None) is stored as given, so that ``lesion report`` can refuse another folder's data.
    ``warnings``: every run's warnings (prefixed ``run <name>: ``) and the evaluation's own
    (:mod:`deeplesion_cli.evaluation.sanity`)."""
    document = {
        "tool": "lesion",
        "version": __version__,
        "metrics_format": 1,
        "ground_truth": _absolute(ground_truth_path or gt.source),
        "prepared": prepared,
        "categories": {str(c): n for c, n in gt.categories},
        "options": options.to_json(),
    }
    n_stages = len(STAGES) + (1 if options.froc_strict else 0)
    with Progress(n_stages * len(runs), "evaluate", unit="stages", enabled=show_progress,
                  after_s=PROGRESS_AFTER_S, interval_s=PROGRESS_EVERY_S) as progress:
        document["runs"] = {name: evaluate_run(gt, dets, options, progress=progress, name=name)
                            for name, dets in runs.items()}
    for name, dets in runs.items():
        # where the detections came from, so that `lesion report` can draw them on the images
        document["runs"][name]["detections"] = _absolute(dets.source)
    warnings = [f"run {name}: {m}" for name in runs for m in document["runs"][name]["warnings"]]
    small = sanity.bootstrap_warning(gt, options.bootstrap)
    if small:
        warnings.append(small)
    document["warnings"] = warnings
    if options.bootstrap > 0:
        boot = bootstrap(gt, runs, options, show_progress=show_progress)
        for name in runs:
            document["runs"][name]["bootstrap"] = {"n": boot["n"], "ci95": boot["ci95"][name]}
        if "paired" in boot:
            a, b = boot["paired"]["runs"]
            document["paired_difference"] = {
                "runs": [a, b],
                "difference": {m: get(document["runs"][a]) - get(document["runs"][b])
                               for m, get in BOOTSTRAP_METRICS.items()},
                "ci95": boot["paired"]["ci95_difference"],
                "n": boot["n"],
            }
    return document
