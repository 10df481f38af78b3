"""COCO box metrics, equal to pycocotools' ``COCOeval`` (evaluate + accumulate + summarize).

Every convention of pycocotools 2.0 is kept, so the 12 summary numbers agree to 1e-6 on the same
files:

* categories sorted by id, images by id; evaluation per (image, category);
* detections of an (image, category) sorted by score, ties in file order (a stable sort), and
  only the first ``maxDets[-1]`` (100) of them evaluated;
* IoU from the boxes' ``w * h`` (not the ``area`` field), a crowd ground truth's union being the
  detection's area; thresholds ``.50:.05:.95``, each used as ``min(t, 1 - 1e-10)``;
* greedy matching in score order: a detection takes the free ground truth with the highest IoU
  >= t, the later one on equal IoU; a non-ignored match is always preferred, and an ignored one
  (crowd, or ``area`` outside the range) is taken only when no non-ignored one qualifies; crowds
  can be matched many times;
* area ranges ``[0, 1e10]``, ``[0, 32^2]``, ``[32^2, 96^2]``, ``[96^2, 1e10]`` tested on the
  ground truth's ``area`` field with inclusive ends; an unmatched detection whose ``w * h`` is out
  of the range is ignored;
* accumulation over images by score, ties broken by image id then by rank within the image;
  precision made monotone and read at 101 recall points with ``searchsorted(..., 'left')``;
* -1 where a category (or area range) has no non-ignored ground truth; means over values > -1.

Unlike pycocotools, detections on unknown images or of unknown categories are an error (raised by
the readers in :mod:`deeplesion_cli.formats.detections`), never silently dropped.

The implementation is vectorised: the greedy matching runs over "the k-th detection of every
(image, category) at once" for k = 0..99, so its sequential semantics stay exact while numpy does
the work for all images, areas and thresholds together.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.arrays import concat_ranges
from deeplesion_cli.evaluation.iou import paired_iou_xywh
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
#: metrics.json keys, in pycocotools' ``stats`` order.
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _segment_last_argmax(values: np.ndarray, starts: np.ndarray, seg_of: np.ndarray,
                         positions: np.ndarray) -> np.ndarray:
    """Per segment of the last axis: position of the last maximum, or -1 if all are -inf."""
    best = np.maximum.reduceat(values, starts, axis=-1)
    hit = (values == best[..., seg_of]) & np.isfinite(values)
    return np.maximum.reduceat(np.where(hit, positions, -1), starts, axis=-1)


def evaluate(gt: GroundTruth, dets: Detections, iou_thresholds=IOU_THRESHOLDS,
             max_dets=MAX_DETS) -> dict:
    """COCO bbox evaluation. Returns ``{"stats": {AP, AP50, ...}, "per_class": {...},
    "precision": (T, R, K, A, M) array, "recall": (T, K, A, M) array, "category_ids": [...]}``.

    ``gt`` and ``dets`` boxes are xywh pixels; detection categories must be gt categories.
    """
    cat_ids = sorted(gt.category_ids)
    n_cat, n_area = len(cat_ids), len(AREA_RANGES)
    iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    n_thr = len(iou_thresholds)
    max_dets = sorted(max_dets)
    max_det = max_dets[-1]
    lookup = np.full(max(cat_ids + [0]) + 1 if cat_ids else 1, -1, np.int64)
    lookup[cat_ids] = np.arange(n_cat)

    # ---- ground truth, grouped by (image, category) in file order
    g_group = gt.image * n_cat + lookup[gt.category]
    g_order = np.argsort(g_group, kind="stable")
    g_group_sorted = g_group[g_order]
    g_box = gt.box_xywh[g_order]
    g_crowd = gt.iscrowd[g_order]
    g_area = gt.area[g_order]
    g_cat = lookup[gt.category[g_order]]
    ranges = np.asarray(list(AREA_RANGES.values()))
    g_ignore = g_crowd[None, :] | (g_area[None, :] < ranges[:, :1]) | (g_area[None, :] > ranges[:, 1:])

    # ---- detections: rank within (image, category) by score, ties in file order
    unknown = ~np.isin(dets.category, cat_ids)
    if unknown.any():
        raise ValueError(f"detection {int(np.flatnonzero(unknown)[0])} has category "
                         f"{int(dets.category[unknown][0])}, which is not in the ground truth")
    d_cat = lookup[dets.category]
    d_group = dets.image * n_cat + d_cat
    order = np.lexsort((np.arange(len(dets)), -dets.score, d_group))
    d_group_o = d_group[order]
    first = np.r_[True, d_group_o[1:] != d_group_o[:-1]] if len(order) else np.zeros(0, bool)
    start_idx = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0)) if len(order) else order
    rank_o = np.arange(len(order)) - start_idx
    keep = rank_o < max_det
    d_idx = order[keep]                         # evaluated detections, grouped and ranked
    d_rank = rank_o[keep]
    d_group = d_group_o[keep]
    d_box = dets.box_xywh[d_idx]
    d_score = dets.score[d_idx]
    d_image = dets.image[d_idx]
    d_cat = lookup[dets.category[d_idx]]
    d_area = d_box[:, 2] * d_box[:, 3]
    n_det = len(d_idx)

    # ---- all (detection, ground truth) pairs of the same group, with IoU
    n_groups = gt.n_images * n_cat
    g_start = np.searchsorted(g_group_sorted, np.arange(n_groups), side="left")
    g_count = np.searchsorted(g_group_sorted, np.arange(n_groups), side="right") - g_start
    per_det = g_count[d_group]
    pair_det = np.repeat(np.arange(n_det), per_det)
    pair_gt = concat_ranges(g_start[d_group], per_det)
    pair_iou = paired_iou_xywh(d_box[pair_det], g_box[pair_gt], g_crowd[pair_gt])

    # ---- greedy matching, one detection rank at a time for every group, area and threshold
    thresholds = np.minimum(iou_thresholds, 1 - 1e-10)
    matched = np.zeros((n_area, n_thr, len(g_box)), bool)
    det_gt = np.full((n_area, n_thr, n_det), -1, np.int64)
    pair_rank = d_rank[pair_det]
    by_rank = np.argsort(pair_rank, kind="stable")   # keeps (det, gt) order inside a rank
    rank_bounds = np.searchsorted(pair_rank[by_rank], np.arange(max_det + 1))
    for k in range(max_det):
        sl = by_rank[rank_bounds[k]:rank_bounds[k + 1]]
        if len(sl) == 0:
            break
        p_det, p_gt, p_iou = pair_det[sl], pair_gt[sl], pair_iou[sl]
        seg_first = np.r_[True, p_det[1:] != p_det[:-1]]
        starts = np.flatnonzero(seg_first)
        seg_of = np.cumsum(seg_first) - 1
        positions = np.arange(len(sl))
        free = ~matched[:, :, p_gt] | g_crowd[p_gt]                       # (A, T, P)
        ok = free & (p_iou[None, None, :] >= thresholds[None, :, None])
        ignored = g_ignore[:, None, p_gt]                                 # (A, 1, P)
        pick = _segment_last_argmax(np.where(ok & ~ignored, p_iou, -np.inf), starts, seg_of,
                                    positions)
        pick_ig = _segment_last_argmax(np.where(ok & ignored, p_iou, -np.inf), starts, seg_of,
                                       positions)
        pick = np.where(pick >= 0, pick, pick_ig)                         # (A, T, S)
        a_i, t_i, s_i = np.nonzero(pick >= 0)
        chosen_gt = p_gt[pick[a_i, t_i, s_i]]
        matched[a_i, t_i, chosen_gt] = True
        det_gt[a_i, t_i, p_det[starts[s_i]]] = chosen_gt

    is_matched = det_gt >= 0
    det_ignore = np.where(
        is_matched,
        np.take_along_axis(np.broadcast_to(g_ignore[:, None, :], (n_area, n_thr, len(g_box))),
                           np.maximum(det_gt, 0), axis=2) if len(g_box) else False,
        ((d_area[None, :] < ranges[:, :1]) | (d_area[None, :] > ranges[:, 1:]))[:, None, :])

    # ---- accumulate per category, area range and maxDets
    n_rec = len(RECALL_THRESHOLDS)
    precision = -np.ones((n_thr, n_rec, n_cat, n_area, len(max_dets)))
    recall = -np.ones((n_thr, n_cat, n_area, len(max_dets)))
    # d_image indexes the id-sorted images, so it is already the image-id order.
    acc_order = np.lexsort((d_rank, d_image, -d_score, d_cat))
    cat_bounds = np.searchsorted(d_cat[acc_order], np.arange(n_cat + 1))
    npig_all = np.stack([np.bincount(g_cat[~g_ignore[a]], minlength=n_cat) for a in range(n_area)])
    for k in range(n_cat):
        idx_k = acc_order[cat_bounds[k]:cat_bounds[k + 1]]
        for m, md in enumerate(max_dets):
            idx = idx_k[d_rank[idx_k] < md]
            for a in range(n_area):
                npig = npig_all[a, k]
                if npig == 0:
                    continue
                ig = det_ignore[a][:, idx]
                hit = is_matched[a][:, idx]
                tp = np.cumsum(hit & ~ig, axis=1).astype(float)
                fp = np.cumsum(~hit & ~ig, axis=1).astype(float)
                nd = tp.shape[1]
                for t in range(n_thr):
                    if nd == 0:
                        recall[t, k, a, m] = 0.0
                        precision[t, :, k, a, m] = 0.0
                        continue
                    rc = tp[t] / npig
                    pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                    recall[t, k, a, m] = rc[-1]
                    pr = np.maximum.accumulate(pr[::-1])[::-1]
                    inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                    q = np.zeros(n_rec)
                    valid = inds < nd
                    q[valid] = pr[inds[valid]]
                    precision[t, :, k, a, m] = q
    return {
        "stats": summarize(precision, recall, iou_thresholds, max_dets),
        "per_class": _per_class(precision, recall, cat_ids, iou_thresholds, max_dets, gt),
        "precision": precision,
        "recall": recall,
        "category_ids": cat_ids,
    }


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarize(precision, recall, iou_thresholds=IOU_THRESHOLDS, max_dets=MAX_DETS) -> dict:
    """pycocotools' 12 summary numbers, keyed as :data:`STAT_KEYS`."""
    max_dets = sorted(max_dets)
    m_last = len(max_dets) - 1
    areas = list(AREA_RANGES)

    def ap(area="all", iou=None):
        p = precision[..., areas.index(area), m_last]
        if iou is not None:
            p = p[np.flatnonzero(iou_thresholds == iou)]
        return _mean_valid(p)

    def ar(area="all", m=m_last):
        return _mean_valid(recall[..., areas.index(area), m])

    values = [ap(), ap(iou=0.5), ap(iou=0.75), ap("small"), ap("medium"), ap("large"),
              ar(m=0), ar(m=min(1, m_last)), ar(), ar("small"), ar("medium"), ar("large")]
    return dict(zip(STAT_KEYS, values))


def _per_class(precision, recall, cat_ids, iou_thresholds, max_dets, gt) -> dict:
    m_last = len(max_dets) - 1
    names = dict(gt.categories)
    out = {}
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k, 0, m_last]
        out[str(cat)] = {
            "name": names[cat],
            "AP": _mean_valid(p),
            "AP50": _mean_valid(p[np.flatnonzero(iou_thresholds == 0.5)]),
            "AP75": _mean_valid(p[np.flatnonzero(iou_thresholds == 0.75)]),
            "AR100": _mean_valid(recall[:, k, 0, m_last]),
            "n_gt": int(np.sum((gt.category == cat) & ~gt.iscrowd)),
        }
    return out
