"""Greedy score-ordered matching of detections to ground truth, shared by the VOC, darknet, seed,
threshold, confusion and box-size metrics (and the strict FROC variant).

Protocol (``greedy_match``):

* **Order.** Detections are visited by score, highest first; equal scores keep file order (a
  stable sort), so the result never depends on the sort algorithm.
* **Candidates.** A detection can only match ground truth of its own image and, when
  ``class_aware`` (the default), of its own category. ``iscrowd`` is ignored: every annotation is an
  ordinary object that must be found (COCO's crowd rule belongs to ``evaluation/coco.py`` only).
* **IoU.** ``iou_xywh``'s formula on ``[x, y, w, h]`` pixel boxes; ``inclusive=True`` adds the +1
  pixel to widths, heights and overlaps (DeepLesion/VOC-devkit convention).
* **Threshold.** A pair qualifies when IoU >= ``iou_threshold``, or IoU > ``iou_threshold`` with
  ``strict_greater=True`` (darknet's ``current_iou > iou_thresh``).
* **Rule (``rematch=False``, the default: PASCAL VOC devkit and darknet ``detector map``).** Each
  detection's candidate is its single best-IoU ground truth (ties in IoU: the annotation first in
  file order). If that IoU qualifies and the ground truth is not taken yet, the detection takes it
  (true positive); if it is already taken by a higher-ranked detection, the detection stays
  unmatched (a duplicate, i.e. a false positive) and is never re-assigned to its second-best
  ground truth.
* **Rule (``rematch=True``, COCO-style).** Each detection takes, among the ground truth not yet
  taken, the one with the highest qualifying IoU (ties: file order); it is unmatched only when no
  untaken ground truth qualifies.

Implementation: all same-image (same-class) pairs are built at once. With ``rematch=False`` the
outcome is order-independent per ground truth (the highest-ranked detection whose best candidate it
is wins), so it is fully vectorised. With ``rematch=True`` the taken-state matters; detections are
processed as "the k-th detection of every image (and class) at once" for k = 0, 1, ..., which is
exact because different images (classes) never compete for the same ground truth.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.iou import paired_iou_xywh
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth


def score_order(dets: Detections) -> np.ndarray:
    """Indices of ``dets`` by score, highest first; equal scores keep file order."""
    return np.argsort(-np.asarray(dets.score, dtype=np.float64), kind="stable")


def score_rank(dets: Detections) -> np.ndarray:
    """``rank[i]`` = position of detection ``i`` in :func:`score_order`."""
    order = score_order(dets)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _group_keys(gt: GroundTruth, dets: Detections, class_aware: bool):
    g_img = np.asarray(gt.image, dtype=np.int64)
    d_img = np.asarray(dets.image, dtype=np.int64)
    if not class_aware:
        return g_img, d_img
    cats = np.unique(np.concatenate([np.asarray(gt.category, np.int64),
                                     np.asarray(dets.category, np.int64)]))
    n = max(len(cats), 1)
    g_key = g_img * n + np.searchsorted(cats, gt.category)
    d_key = d_img * n + np.searchsorted(cats, dets.category)
    return g_key, d_key


def candidate_pairs(gt: GroundTruth, dets: Detections, *, class_aware: bool = True,
                    inclusive: bool = False):
    """Every (detection, ground truth) pair of the same image (and category when
    ``class_aware``): ``(det_index, gt_index, iou)``, three flat arrays, grouped by detection in
    file order, ground truth in file order within a detection."""
    g_key, d_key = _group_keys(gt, dets, class_aware)
    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    lo = np.searchsorted(g_sorted, d_key, side="left")
    hi = np.searchsorted(g_sorted, d_key, side="right")
    counts = hi - lo
    total = int(counts.sum())
    det_idx = np.repeat(np.arange(len(d_key), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    gt_idx = g_order[np.repeat(lo, counts) + within]
    iou = paired_iou_xywh(np.asarray(dets.box_xywh)[det_idx], np.asarray(gt.box_xywh)[gt_idx],
                          inclusive=inclusive)
    return det_idx, gt_idx, iou


def _first_of_runs(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first element of each run of equal values in sorted ``keys``."""
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


def greedy_match(gt: GroundTruth, dets: Detections, iou_threshold: float, *,
                 class_aware: bool = True, inclusive: bool = False, strict_greater: bool = False,
                 rematch: bool = False):
    """Greedy score-ordered matching (protocol in the module docstring).

    Returns ``(det_gt, det_iou)``, both (n_det,) in the detections' file order: ``det_gt[i]`` the
    index of the ground truth detection ``i`` matched, or -1; ``det_iou[i]`` the IoU with that
    ground truth when matched, otherwise the detection's best IoU with any candidate ground truth
    (0.0 when it has none). With ``rematch=False`` ``det_iou`` is always the best IoU.
    """
    n_det = len(dets.score)
    det_gt = np.full(n_det, -1, dtype=np.int64)
    det_iou = np.zeros(n_det, dtype=np.float64)
    if n_det == 0 or len(gt.image) == 0:
        return det_gt, det_iou
    d, g, v = candidate_pairs(gt, dets, class_aware=class_aware, inclusive=inclusive)
    if len(d) == 0:
        return det_gt, det_iou
    thr = float(iou_threshold)
    rank = score_rank(dets)

    # Best candidate per detection: highest IoU, ties to the ground truth first in file order.
    order = np.lexsort((g, -v, d))
    first = order[_first_of_runs(d[order])]
    best_det, best_gt, best_iou = d[first], g[first], v[first]
    det_iou[best_det] = best_iou

    if not rematch:
        ok = best_iou > thr if strict_greater else best_iou >= thr
        c_det, c_gt = best_det[ok], best_gt[ok]
        # Per ground truth, the highest-ranked detection whose best candidate it is wins.
        o = np.lexsort((rank[c_det], c_gt))
        win = o[_first_of_runs(c_gt[o])]
        det_gt[c_det[win]] = c_gt[win]
        return det_gt, det_iou

    ok = v > thr if strict_greater else v >= thr
    d, g, v = d[ok], g[ok], v[ok]
    if len(d) == 0:
        return det_gt, det_iou
    # k = position of the detection among the detections of its group (image [, class]).
    _, d_key = _group_keys(gt, dets, class_aware)
    by_group = np.lexsort((rank, d_key))
    k_of = np.empty(n_det, dtype=np.int64)
    run_first = _first_of_runs(d_key[by_group])
    run_start = np.maximum.accumulate(np.where(run_first, np.arange(n_det), 0))
    k_of[by_group] = np.arange(n_det) - run_start
    k = k_of[d]
    order = np.lexsort((g, -v, d, k))
    d, g, v, k = d[order], g[order], v[order], k[order]
    bounds = np.flatnonzero(_first_of_runs(k))
    bounds = np.append(bounds, len(k))
    taken = np.zeros(len(gt.image), dtype=bool)
    for a, b in zip(bounds[:-1], bounds[1:]):
        dd, gg, vv = d[a:b], g[a:b], v[a:b]
        free = ~taken[gg]
        dd, gg, vv = dd[free], gg[free], vv[free]
        if len(dd) == 0:
            continue
        pick = _first_of_runs(dd)  # sorted by (det, -iou, gt): first row = best free candidate
        det_gt[dd[pick]] = gg[pick]
        det_iou[dd[pick]] = vv[pick]
        taken[gg[pick]] = True
    return det_gt, det_iou
