"""The seed study's own precision/recall protocol at 11 confidence thresholds.

Protocol (``seed_protocol``):

* **Thresholds.** t = k/10 for k = 0..10 (0.0, 0.1, ..., 1.0, each the exact double ``k / 10``).
* **Kept detections.** Those with score >= t.
* **Matching.** ``matching.greedy_match`` with its defaults: class-aware, VOC rule (each
  detection's best-IoU ground truth of the same image and category, IoU >= ``iou`` (default 0.5),
  plain IoU without the +1 pixel; a detection whose best ground truth is already taken by a
  higher-scoring one is a false positive), ``iscrowd`` ignored. Because the detections kept at t are
  a prefix of the score order (ties: file order), matching the kept set is the same as matching
  everything once and keeping the prefix.
* **Counts are pooled over categories** (micro average): precision(t) = TP / (TP + FP), and
  **1.0 when no detection is kept**; recall(t) = TP / n_gt, n_gt = every annotation
  (``None`` when there is none). The 1.0 is the seed study's convention and the area below
  depends on it (the t = 1.0 point usually keeps nothing), so it stays here, and only here: the
  at-score precision (:mod:`.threshold`) of an empty set is undefined. No table shows these
  per-threshold precisions; a run without detections has area 0 and a warning.
* **Area.** The 11 points (recall(t), precision(t)) taken in the order t = 1.0, 0.9, ..., 0.0
  (recall never decreases as t falls, so this is the order of recall; among equal recalls it is
  the order of decreasing t, which decides which precision meets each neighbouring segment),
  joined by straight lines: area = sum over consecutive points of
  (r_i - r_{i-1}) * (p_i + p_{i-1}) / 2. No end points are added:
  the area covers only the recall range [recall(1.0), recall(0.0)], so it is not an AP and is at
  most recall(0.0) - recall(1.0).
* **Per class, the study's mAP** (``per_class``, ``map``). The same 11 thresholds and the same
  match, counted per category: precision(t) and recall(t) = TP / n_gt of the class; its AP is the
  rectangle sum over the points in the order t = 1.0, 0.9, ..., 0.0 (recall ascending),
  AP = sum_i precision_i * (recall_i - recall_(i-1)), with recall before the first point 0 (so
  AP runs from recall 0, and the points that keep nothing add nothing whatever their precision).
  ``map`` is the mean AP over the classes that have ground truth (classes without any are listed
  with ``ap`` None and left out of the mean); on a one-class folder it is that class's AP. This
  is the study's "mAP" (its Tables 3-4, at IoU 0.21: ``lesion eval --iou 0.21``).
* **Mean IoU of matched boxes** (``mean_iou``, the study's "IoU"): the mean IoU between each
  matched detection and its ground truth, over the matched detections with score >= ``score``
  (``--score``, 0.25 by default: the confidence darknet's ``detector map`` prints its average
  IoU at); ``mean_iou_at`` gives it at each of the 11 thresholds. None when nothing is matched.
  (darknet's own "average IoU" also averages the unmatched detections' best IoU, so it is lower;
  docs/metrics.md.)
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import greedy_match
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

THRESHOLDS = np.arange(11) / 10.0


def _counts(det_gt: np.ndarray, scores: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) per threshold, keeping the detections with score >= threshold, from a match
    (``det_gt`` >= 0: matched) of detections with ``scores``."""
    order = np.argsort(-scores, kind="stable")
    tp_cum = np.concatenate([[0], np.cumsum(det_gt[order] >= 0)])
    # scores descend, so -scores ascend: count of score >= t = count of -score <= -t.
    kept = np.searchsorted(-scores[order], -np.asarray(thresholds, dtype=np.float64),
                           side="right")
    tp = tp_cum[kept]
    return tp, kept - tp


def counts_at_thresholds(gt: GroundTruth, dets: Detections, thresholds, iou: float = 0.5):
    """(TP, FP) arrays, one entry per threshold, keeping detections with score >= threshold."""
    det_gt, _ = greedy_match(gt, dets, iou, class_aware=True)
    return _counts(det_gt, np.asarray(dets.score, dtype=np.float64), thresholds)


def trapezoid_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Trapezoidal area under (recall, precision) points joined in the order given."""
    r, p = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2.0))


def rectangle_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """sum_i precision_i * (recall_i - recall_(i-1)) over points in ascending-recall order, with
    recall_(-1) = 0 (the study's per-class AP)."""
    r = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64)])
    return float(np.sum((r[1:] - r[:-1]) * np.asarray(precision, dtype=np.float64)))


def _precision(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    kept = tp + fp
    return np.where(kept > 0, tp / np.maximum(kept, 1), 1.0)


def _mean(values: np.ndarray):
    return float(values.mean()) if len(values) else None


def seed_protocol(gt: GroundTruth, dets: Detections, iou: float = 0.5,
                  score: float = 0.25) -> dict:
    """Precision and recall at t = 0.0, 0.1, ..., 1.0, pooled (and their trapezoidal area) and
    per class (and the study's mAP), and the mean IoU of matched boxes (module doc)."""
    det_gt, det_iou = greedy_match(gt, dets, iou, class_aware=True)
    scores = np.asarray(dets.score, dtype=np.float64)
    tp, fp = _counts(det_gt, scores, THRESHOLDS)
    n_gt = int(len(gt.image))
    precision = _precision(tp, fp)
    if n_gt > 0:
        recall = tp / n_gt
        # t = 1.0 down to 0.0: recall ascending.
        area = trapezoid_area(recall[::-1], precision[::-1])
        recall_out = [float(x) for x in recall]
    else:
        area, recall_out = None, [None] * len(THRESHOLDS)

    gt_category = np.asarray(gt.category)
    det_category = np.asarray(dets.category)
    per_class = {}
    for category_id, name in gt.categories:
        n_class = int(np.sum(gt_category == category_id))
        mine = det_category == category_id
        c_tp, c_fp = _counts(det_gt[mine], scores[mine], THRESHOLDS)
        c_precision = _precision(c_tp, c_fp)
        c_recall = c_tp / n_class if n_class else None
        per_class[name] = {
            "n_gt": n_class,
            "tp": [int(x) for x in c_tp],
            "fp": [int(x) for x in c_fp],
            "precision": [float(x) for x in c_precision],
            "recall": ([float(x) for x in c_recall] if c_recall is not None
                       else [None] * len(THRESHOLDS)),
            "ap": (rectangle_ap(c_recall[::-1], c_precision[::-1]) if c_recall is not None
                   else None),
        }
    aps = [c["ap"] for c in per_class.values() if c["ap"] is not None]
    matched = det_gt >= 0
    mean_iou_at = [_mean(det_iou[matched & (scores >= t)]) for t in THRESHOLDS]
    return {
        "iou": float(iou),
        "thresholds": [float(t) for t in THRESHOLDS],
        "precision": [float(x) for x in precision],
        "recall": recall_out,
        "tp": [int(x) for x in tp],
        "fp": [int(x) for x in fp],
        "n_gt": n_gt,
        "area": area,
        "per_class": per_class,
        "map": float(np.mean(aps)) if aps else None,
        "score": float(score),
        "mean_iou": _mean(det_iou[matched & (scores >= score)]),
        "mean_iou_at": mean_iou_at,
    }
