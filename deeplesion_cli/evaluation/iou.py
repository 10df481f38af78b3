"""IoU of boxes given as ``[x, y, w, h]`` in pixels, pairwise or row by row."""

from __future__ import annotations

import numpy as np


def paired_iou_xywh(det_xywh: np.ndarray, gt_xywh: np.ndarray, gt_iscrowd=None,
                    inclusive: bool = False) -> np.ndarray:
    """IoU of ``det_xywh[..., :]`` with ``gt_xywh[..., :]`` (broadcast over the leading axes).

    ``inclusive=False`` is pycocotools' ``maskUtils.iou`` for boxes, in its order of float
    operations (so results are bit-equal): areas ``w * h``; where ``gt_iscrowd`` is True the union
    is the detection's area alone (COCO's crowd rule). ``inclusive=True`` is the DeepLesion/VOC
    pixel convention: a box covers the pixels ``x .. x + w`` inclusive, so widths and heights
    (and the overlap) get ``+1``.
    """
    d = np.asarray(det_xywh, dtype=np.float64)
    g = np.asarray(gt_xywh, dtype=np.float64)
    one = 1.0 if inclusive else 0.0
    iw = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    ih = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    if inclusive:
        iw, ih = iw + one, ih + one
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    d_area = (d[..., 2] + one) * (d[..., 3] + one)
    union = d_area + (g[..., 2] + one) * (g[..., 3] + one) - inter
    if gt_iscrowd is not None:
        union = np.where(np.asarray(gt_iscrowd, bool), d_area, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0) & (union > 0), inter / union, 0.0)


def iou_xywh(det_xywh: np.ndarray, gt_xywh: np.ndarray, gt_iscrowd=None,
             inclusive: bool = False) -> np.ndarray:
    """IoU matrix (n_det, n_gt) between detections (n_det, 4) and ground truth (n_gt, 4);
    conventions as :func:`paired_iou_xywh`."""
    d = np.asarray(det_xywh, dtype=np.float64).reshape(-1, 1, 4)
    g = np.asarray(gt_xywh, dtype=np.float64).reshape(1, -1, 4)
    crowd = None if gt_iscrowd is None else np.asarray(gt_iscrowd, bool).reshape(1, -1)
    return paired_iou_xywh(d, g, crowd, inclusive)
