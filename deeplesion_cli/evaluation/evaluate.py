"""Every metric of one detection run in one pass, and the side-by-side comparison of runs.

``evaluate_run(gt, dets, options)`` returns the block that ``metrics.json`` holds per run (schema
in docs/metrics.md); ``evaluate_runs`` adds patient-level bootstrap intervals and, for two runs,
the paired difference.
"""

from __future__ import annotations

import dataclasses
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


_ANNOTATIONS = {"float": "float", "int": "int", "bool": "bool"}


def _to_json(self) -> dict:
    return asdict(self)


#: The options of ``lesion eval`` (frozen): fields, types and defaults are those declared once in
#: :data:`deeplesion_cli.spec.evaluation.EVAL` (``iou``: VOC, seed protocol, at-score metrics,
#: confusion and box sizes; ``score``: the at-score threshold; ``froc_strict``; ``bootstrap``:
#: patient-level resamples, 0 for none; ``seed``: the bootstrap's).
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


def evaluate_run(gt: GroundTruth, dets: Detections, options: EvalOptions = EvalOptions()) -> dict:
    """All metrics of one run: COCO, VOC/darknet, seed protocol, FROC, at-threshold, best F1,
    confusion matrix, box size agreement and the size/type strata."""
    coco_result = coco.evaluate(gt, dets)
    voc_result = voc.voc_ap(gt, dets, iou=options.iou)
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
        "seed_protocol": seed.seed_protocol(gt, dets, iou=options.iou),
        "froc": froc.froc(gt, dets),
        "at_score": threshold.at_threshold(gt, dets, score=options.score, iou=options.iou),
        "best_f1": threshold.best_f1(gt, dets, iou=options.iou),
        "confusion": confusion.confusion_matrix(gt, dets, score=options.score, iou=options.iou),
        "box_size": boxstats.box_size_agreement(gt, dets, score=options.score, iou=options.iou),
        "strata": strata(gt, dets, options),
    }
    if options.froc_strict:
        out["froc_strict"] = froc.froc(gt, dets, strict=True)
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


def bootstrap(gt: GroundTruth, runs: dict[str, Detections], options: EvalOptions,
              show_progress: bool = False) -> dict:
    """95% percentile intervals of :data:`BOOTSTRAP_METRICS` per run, from ``options.bootstrap``
    resamples of patients with replacement; every run sees the same resamples, so for two runs the
    paired difference (first minus second) gets its own interval."""
    rng = np.random.default_rng(options.seed)
    n_patients = len(np.unique(gt.image_patients))
    values = {name: {m: [] for m in BOOTSTRAP_METRICS} for name in runs}
    with Progress(options.bootstrap, "bootstrap", unit="resamples",
                  enabled=show_progress) as progress:
        for _ in range(options.bootstrap):
            patients = rng.integers(0, n_patients, n_patients)
            for name, dets in runs.items():
                sample_gt, sample_dets = resample(gt, dets, patients)
                block = _core(sample_gt, sample_dets, options)
                for metric, get in BOOTSTRAP_METRICS.items():
                    values[name][metric].append(get(block))
            progress.advance()

    def interval(xs):
        xs = np.asarray(xs, float)
        return [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))]

    out = {"n": options.bootstrap, "seed": options.seed, "unit": "patient",
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
        "runs": {name: evaluate_run(gt, dets, options) for name, dets in runs.items()},
    }
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
