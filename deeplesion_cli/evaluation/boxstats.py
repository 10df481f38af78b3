"""Box size agreement (the seed study's tables 6-7): are matched predictions bigger or smaller than
their ground truth, and by how much?

Protocol (``box_size_agreement``):

* **Pairs.** Detections with score >= ``score``, matched by ``matching.greedy_match`` with its
  defaults (class-aware, VOC rule: each detection's best-IoU ground truth of the same image and
  category, IoU >= ``iou``, plain IoU; duplicates unmatched; ``iscrowd`` ignored). Only true
  positives count; pairs where either box has zero area are left out (``n_degenerate``; they
  cannot reach a positive IoU threshold anyway).
* **Areas.** Box areas ``w * h`` in pixels, for both sides (not the annotation's ``area`` field).
* **Sides.** ratio = pred_area / gt_area. ``bigger``: ratio > 1; ``smaller``: ratio < 1;
  ``equal``: ratio == 1 exactly. Shares are over all counted pairs.
* **Factors.** For ``bigger`` the factor is pred_area / gt_area, for ``smaller`` it is
  gt_area / pred_area, so both are >= 1 and read "how many times bigger / smaller"; each side
  reports count, share and mean, median, min and max of its factor (``None`` when the side is
  empty). ``ratio_pred_over_gt`` summarises the signed view over all pairs: mean, median and the
  geometric mean of pred_area / gt_area.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import greedy_match
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(np.mean(values)), "median": float(np.median(values)),
            "min": float(np.min(values)), "max": float(np.max(values))}


def box_size_agreement(gt: GroundTruth, dets: Detections, score: float = 0.25,
                       iou: float = 0.5) -> dict:
    """Shares of matched predictions bigger / smaller than their ground truth, and by how much."""
    det_gt, _ = greedy_match(gt, dets, iou, class_aware=True)
    tp = (det_gt >= 0) & (np.asarray(dets.score, dtype=np.float64) >= score)
    d_box = np.asarray(dets.box_xywh, dtype=np.float64).reshape(-1, 4)[tp]
    g_box = np.asarray(gt.box_xywh, dtype=np.float64).reshape(-1, 4)[det_gt[tp]]
    d_area = d_box[:, 2] * d_box[:, 3]
    g_area = g_box[:, 2] * g_box[:, 3]
    ok = (d_area > 0) & (g_area > 0)
    ratio = d_area[ok] / g_area[ok]
    n = int(len(ratio))
    bigger, smaller = ratio[ratio > 1], ratio[ratio < 1]
    n_equal = n - len(bigger) - len(smaller)

    def share(k: int):
        return float(k / n) if n else None

    return {
        "score": float(score), "iou": float(iou),
        "n_matched": n, "n_degenerate": int(np.count_nonzero(~ok)),
        "bigger": {"count": int(len(bigger)), "share": share(len(bigger)),
                   "factor": "pred_area / gt_area", **_summary(bigger)},
        "smaller": {"count": int(len(smaller)), "share": share(len(smaller)),
                    "factor": "gt_area / pred_area", **_summary(1.0 / smaller)},
        "equal": {"count": int(n_equal), "share": share(n_equal)},
        "ratio_pred_over_gt": {
            "mean": float(np.mean(ratio)) if n else None,
            "median": float(np.median(ratio)) if n else None,
            "geometric_mean": float(np.exp(np.mean(np.log(ratio)))) if n else None,
        },
    }
