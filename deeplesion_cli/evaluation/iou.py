"""Pairwise IoU of boxes given as ``[x, y, w, h]`` in pixels."""

from __future__ import annotations

import numpy as np


def iou_xywh(det_xywh: np.ndarray, gt_xywh: np.ndarray, gt_iscrowd: np.ndarray | None = None,
             inclusive: bool = False) -> np.ndarray:
    """IoU matrix (n_det, n_gt) between detections (n_det, 4) and ground truth (n_gt, 4).

    ``inclusive=False`` is pycocotools' ``maskUtils.iou`` for boxes: areas ``w * h``; where
    ``gt_iscrowd`` is True the union is the detection's area alone (COCO's crowd rule).
    ``inclusive=True`` is the DeepLesion/VOC pixel convention: a box covers the pixels
    ``x .. x + w`` inclusive, so widths and heights (and the overlap) get ``+1``.
    """
    d = np.asarray(det_xywh, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt_xywh, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if inclusive else 0.0
    dx1, dy1 = d[:, 0:1], d[:, 1:2]
    dx2, dy2 = dx1 + d[:, 2:3], dy1 + d[:, 3:4]
    gx1, gy1 = g[None, :, 0], g[None, :, 1]
    gx2, gy2 = gx1 + g[None, :, 2], gy1 + g[None, :, 3]
    iw = np.minimum(dx2, gx2) - np.maximum(dx1, gx1) + one
    ih = np.minimum(dy2, gy2) - np.maximum(dy1, gy1) + one
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    d_area = (d[:, 2:3] + one) * (d[:, 3:4] + one)
    g_area = (g[None, :, 2] + one) * (g[None, :, 3] + one)
    union = d_area + g_area - inter
    if gt_iscrowd is not None:
        union = np.where(np.asarray(gt_iscrowd, bool)[None, :], d_area, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out
