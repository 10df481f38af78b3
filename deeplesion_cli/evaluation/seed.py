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
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import greedy_match, score_order
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

THRESHOLDS = np.arange(11) / 10.0


def counts_at_thresholds(gt: GroundTruth, dets: Detections, thresholds, iou: float = 0.5):
    """(TP, FP) arrays, one entry per threshold, keeping detections with score >= threshold."""
    det_gt, _ = greedy_match(gt, dets, iou, class_aware=True)
    order = score_order(dets)
    scores = np.asarray(dets.score, dtype=np.float64)[order]
    tp_cum = np.concatenate([[0], np.cumsum(det_gt[order] >= 0)])
    # scores descend, so -scores ascend: count of score >= t = count of -score <= -t.
    kept = np.searchsorted(-scores, -np.asarray(thresholds, dtype=np.float64), side="right")
    tp = tp_cum[kept]
    return tp, kept - tp


def trapezoid_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Trapezoidal area under (recall, precision) points joined in the order given."""
    r, p = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2.0))


def seed_protocol(gt: GroundTruth, dets: Detections, iou: float = 0.5) -> dict:
    """Precision and recall at t = 0.0, 0.1, ..., 1.0 and their trapezoidal area (module doc)."""
    tp, fp = counts_at_thresholds(gt, dets, THRESHOLDS, iou)
    n_gt = int(len(gt.image))
    kept = tp + fp
    precision = np.where(kept > 0, tp / np.maximum(kept, 1), 1.0)
    if n_gt > 0:
        recall = tp / n_gt
        # t = 1.0 down to 0.0: recall ascending.
        area = trapezoid_area(recall[::-1], precision[::-1])
        recall_out = [float(x) for x in recall]
    else:
        area, recall_out = None, [None] * len(THRESHOLDS)
    return {
        "iou": float(iou),
        "thresholds": [float(t) for t in THRESHOLDS],
        "precision": [float(x) for x in precision],
        "recall": recall_out,
        "tp": [int(x) for x in tp],
        "fp": [int(x) for x in fp],
        "n_gt": n_gt,
        "area": area,
    }
