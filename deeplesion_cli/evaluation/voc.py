"""PASCAL VOC average precision (11-point and all-point) and darknet ``detector map``'s mAP.

Protocol, per category ``c`` of the ground-truth file (``GroundTruth.categories``):

* **Matching.** ``matching.greedy_match``, class-aware, VOC rule: detections by score (ties: file
  order), each one's best-IoU ground truth of the same image and category; IoU >= ``iou`` (plain
  IoU, no +1 pixel); a detection whose best ground truth is already taken is a false positive
  (duplicate) and is not re-assigned. ``iscrowd`` is ignored (every annotation must be found).
  There is no ``difficult`` flag.
* **PR curve.** Over the category's detections in score order, after the i-th detection:
  precision_i = TP_i / i, recall_i = TP_i / n_gt(c).
* **ap11 (VOC2007).** Mean over the 11 recall targets r = k/10, k = 0..10 (computed as ``k / 10``
  so that 0.3, 0.6 and 0.7 are the exact doubles; py-faster-rcnn's ``np.arange(0, 1.1, 0.1)``
  gives 0.30000000000000004 etc. and can differ when a recall equals such a target) of the
  maximum precision_i with recall_i >= r, or 0 when no point reaches r.
* **ap_all (VOC2010+).** Area under the precision envelope: with recall padded as
  [0, recall..., 1] and precision as [0, precision..., 0], each precision is replaced by the
  maximum precision at that or any later point, and AP = sum over recall steps of
  (r_{j+1} - r_j) * envelope_{j+1}.
* **Empty cases.** A category with ground truth and no detection has AP 0. A category without
  ground truth has no VOC AP (``None``) and is left out of ``map11`` / ``map_all``, which are
  means over the categories **with** ground truth (``None`` when there is none). Detections whose
  category is not in the ground-truth file are ignored.
* **darknet_map** (AlexeyAB ``darknet detector map`` with its default ``-points 0``, read in
  ``src/detector.c`` @ 518780b3, ``validate_detector_map``):

  - matching: ``if (current_iou > iou_thresh && class_id == truth[j].id)`` with
    ``current_iou > max_iou`` (max_iou starts at 0): the same-class ground truth of the image with
    the highest IoU, IoU **strictly greater** than the threshold, ties to the first label;
    walking the ranks, ``if (truth_flags[d.unique_truth_index] == 0) {... tp++} else fp++``: a
    detection whose ground truth is already claimed is a false positive (current AB; some older
    forks had no ``else`` and ignored duplicates). That is ``greedy_match(strict_greater=True)``.
  - AP: the ``map_points == 0`` loop walks the ranks from last to first, keeping
    ``last_precision`` = the running maximum precision and adding
    ``delta_recall * last_precision``, then ``last_recall - 0`` times the final maximum. Recall
    only rises at a true positive, where precision does not fall, so this is exactly the
    all-point VOC2010+ area above (computed here with the same function).
  - categories without ground truth: ``const int fn = truth_classes_count[i] - tp;`` and
    ``if ((tp + fn) > 0) pr[i][rank].recall = ... else pr[i][rank].recall = 0;`` (no ground truth
    means no true positive, so tp + fn = 0): recall stays 0, every ``delta_recall`` is 0 and the
    category's AP is **0**, with or without detections. Then
    ``mean_average_precision = mean_average_precision / classes;``: the mAP is the mean over
    **all** categories (all of ``GroundTruth.categories``, standing in for the cfg's
    ``classes``), those zeros included.
  - Differences that remain: darknet sorts ties with ``qsort`` (unspecified order; here file
    order), computes IoU in float32 relative coordinates (here float64 pixels), applies its own
    fixed 0.005 confidence floor and NMS before matching (here: whatever the detection file holds),
    and reads ``pr[i][-1]`` when there are no detections at all (here: every AP is 0).

Per category the json keeps ``precision`` and ``recall`` at (at most about 200, evenly spaced,
always including the last) points of the PR curve; the APs are computed on the full curve.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import greedy_match, score_order
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

MAX_CURVE_POINTS = 200
RECALL_TARGETS_11 = np.arange(11) / 10.0


def pr_curve(tp_in_order: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection, given the TP flags in score order."""
    tp = np.cumsum(np.asarray(tp_in_order, dtype=np.int64))
    n = np.arange(1, len(tp) + 1)
    precision = tp / n if len(tp) else np.zeros(0)
    recall = tp / n_gt if n_gt > 0 else np.zeros(len(tp))
    return precision, recall


def ap_11_point(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2007: mean over r = k/10 of the max precision at recall >= r (0 when unreachable)."""
    if len(precision) == 0:
        return 0.0
    reach = recall[None, :] >= RECALL_TARGETS_11[:, None]
    best = np.where(reach, precision[None, :], 0.0).max(axis=1)
    return float(best.mean())


def ap_all_point(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2010+: area under the monotone (non-increasing) precision envelope."""
    if len(precision) == 0:
        return 0.0
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def subsample(values: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> list[float]:
    """At most about ``max_points`` evenly spaced values (by index), the last always kept."""
    n = len(values)
    if n <= max_points:
        idx = np.arange(n)
    else:
        idx = np.unique(np.append(np.linspace(0, n - 1, max_points).round().astype(np.int64),
                                  n - 1))
    return [float(x) for x in np.asarray(values)[idx]]


def _per_class_tp(gt: GroundTruth, dets: Detections, iou: float, strict_greater: bool):
    det_gt, _ = greedy_match(gt, dets, iou, class_aware=True, strict_greater=strict_greater)
    order = score_order(dets)
    return order, det_gt[order] >= 0, np.asarray(dets.category)[order]


def voc_ap(gt: GroundTruth, dets: Detections, iou: float = 0.5) -> dict:
    """VOC AP per category, ``map11``, ``map_all`` and ``darknet_map`` (module docstring)."""
    _, tp_voc, cat_voc = _per_class_tp(gt, dets, iou, strict_greater=False)
    _, tp_dk, cat_dk = _per_class_tp(gt, dets, iou, strict_greater=True)
    gt_cat = np.asarray(gt.category)
    per_class: dict[str, dict] = {}
    ap11_with_gt, ap_all_with_gt, darknet_aps = [], [], []
    for cat_id, _name in gt.categories:
        n_gt = int(np.count_nonzero(gt_cat == cat_id))
        mine = cat_voc == cat_id
        precision, recall = pr_curve(tp_voc[mine], n_gt)
        p_dk, r_dk = pr_curve(tp_dk[cat_dk == cat_id], n_gt)
        ap_dk = ap_all_point(p_dk, r_dk) if n_gt > 0 else 0.0
        darknet_aps.append(ap_dk)
        if n_gt > 0:
            ap11, ap_all = ap_11_point(precision, recall), ap_all_point(precision, recall)
            ap11_with_gt.append(ap11)
            ap_all_with_gt.append(ap_all)
        else:
            ap11 = ap_all = None
        per_class[str(cat_id)] = {
            "ap11": ap11, "ap_all": ap_all, "ap_darknet": ap_dk,
            "n_gt": n_gt, "n_det": int(np.count_nonzero(mine)),
            "tp": int(np.count_nonzero(tp_voc[mine])),
            "precision": subsample(precision), "recall": subsample(recall),
        }
    return {
        "iou": float(iou),
        "per_class": per_class,
        "map11": float(np.mean(ap11_with_gt)) if ap11_with_gt else None,
        "map_all": float(np.mean(ap_all_with_gt)) if ap_all_with_gt else None,
        "darknet_map": float(np.mean(darknet_aps)) if darknet_aps else None,
    }
