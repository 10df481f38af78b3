"""Operating-point metrics: precision, recall and F1 at one confidence threshold, and the threshold
with the best F1.

Protocol:

* **Kept detections.** score >= ``score`` (darknet's own "for conf_thresh" line keeps
  ``prob > thresh``; the two differ only for detections scoring exactly the threshold).
* **Matching.** ``matching.greedy_match`` with its defaults: class-aware, VOC rule (each
  detection's best-IoU ground truth of the same image and category; IoU >= ``iou``, plain IoU; a
  detection whose best ground truth is already taken by a higher-scoring detection is a false
  positive), ``iscrowd`` ignored. The kept set is a prefix of the score order (ties: file order),
  so one matching of all detections serves every threshold.
* **Counts, pooled over categories.** TP = kept and matched; FP = kept and unmatched;
  FN = n_gt - TP. precision = TP / (TP + FP), **undefined (``None``) when nothing is kept** (0/0:
  darknet's "for conf_thresh" line prints ``-nan`` there; a value of 1.0 would rank a model that
  finds nothing as perfectly precise); recall = TP / n_gt;
  f1 = 2 TP / (2 TP + FP + FN) (= 2PR / (P + R), 0 when TP = 0). With no ground truth at all,
  recall and f1 are ``None``.
* ``mean_iou_tp``: mean IoU of the true positives with their ground truth (``None`` without TP).
  (darknet's "average IoU" divides the same sum by TP + FP instead.)
* ``images_without_detections``: the share of the ground-truth file's images (all of them, as
  FROC's N_img) that have no kept detection.
* **best_f1.** The candidate thresholds are the distinct detection scores; the counts at each one
  come from one pass over the detections in score order (cumulative TP and FP at the end of each
  run of equal scores). The returned dict is ``at_threshold`` at the score with the highest F1;
  ties go to the highest such score (fewest detections). With no detections there is no
  threshold: ``score`` and ``precision`` are ``None`` (recall and F1 are 0 when there is ground
  truth).
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import greedy_match, score_order
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth


def _stats(gt: GroundTruth, dets: Detections, det_gt: np.ndarray, det_iou: np.ndarray,
           score: float | None, iou: float) -> dict:
    """The counts at ``score`` (``None``: no threshold, nothing kept)."""
    scores = np.asarray(dets.score, dtype=np.float64)
    kept = scores >= score if score is not None else np.zeros(len(scores), dtype=bool)
    matched = det_gt >= 0
    tp = int(np.count_nonzero(kept & matched))
    fp = int(np.count_nonzero(kept & ~matched))
    n_gt = int(len(gt.image))
    fn = n_gt - tp
    precision = tp / (tp + fp) if tp + fp else None
    if n_gt:
        recall = tp / n_gt
        f1 = 2 * tp / (2 * tp + fp + fn)
    else:
        recall = f1 = None
    n_img = int(gt.n_images)
    with_det = len(np.unique(np.asarray(dets.image)[kept]))
    return {
        "score": None if score is None else float(score), "iou": float(iou),
        "precision": None if precision is None else float(precision),
        "recall": None if recall is None else float(recall),
        "f1": None if f1 is None else float(f1),
        "tp": tp, "fp": fp, "fn": fn,
        "mean_iou_tp": float(det_iou[kept & matched].mean()) if tp else None,
        "images_without_detections": float((n_img - with_det) / n_img) if n_img else None,
    }


def at_threshold(gt: GroundTruth, dets: Detections, score: float = 0.25, iou: float = 0.5) -> dict:
    """Precision, recall, F1 and counts over detections with score >= ``score``."""
    det_gt, det_iou = greedy_match(gt, dets, iou, class_aware=True)
    return _stats(gt, dets, det_gt, det_iou, float(score), iou)


def best_f1(gt: GroundTruth, dets: Detections, iou: float = 0.5) -> dict:
    """``at_threshold`` at the score that maximises F1 (one sorted pass; module docstring)."""
    det_gt, det_iou = greedy_match(gt, dets, iou, class_aware=True)
    if len(dets.score) == 0:
        return _stats(gt, dets, det_gt, det_iou, None, iou)
    order = score_order(dets)
    scores = np.asarray(dets.score, dtype=np.float64)[order]
    tp = np.cumsum(det_gt[order] >= 0)
    kept = np.arange(1, len(order) + 1)
    run_end = np.append(scores[1:] != scores[:-1], True)
    n_gt = len(gt.image)
    f1 = 2 * tp[run_end] / (kept[run_end] + n_gt) if n_gt else np.zeros(int(run_end.sum()))
    best = int(np.argmax(f1))
    return _stats(gt, dets, det_gt, det_iou, float(scores[run_end][best]), iou)
