"""Warnings about a run's detections and an evaluation: what scores without an error but is
probably not what the user meant, said in words (metrics.json ``runs.<name>.warnings`` and
``warnings``; ``lesion eval`` prints them on stderr).

The checks (thresholds are module constants, documented in docs/metrics.md section 11):

* **No detections at all.** Every AP, recall and FROC sensitivity is 0, and precision and the
  best-F1 threshold are undefined (``null``), not 1.0.
* **Nothing kept at the score threshold** (detections exist, none scores >= ``--score``):
  precision at the score is undefined.
* **Boxes outside their images.** More than :data:`OUTSIDE_SHARE` of the detections (on images
  whose size the ground truth gives) reach more than :data:`OUTSIDE_TOLERANCE_PX` pixels beyond
  the image (x < -tol, y < -tol, x + w > W + tol or y + h > H + tol): boxes scaled to another
  image size, or corners given as ``[x, y, w, h]``.
* **Boxes that overlap no lesion.** With ground truth present and at least :data:`MIN_CHECKED`
  detections, more than :data:`NO_OVERLAP_SHARE` of the highest-scored ones (the top
  ``max(n_ground_truth, MIN_CHECKED)``) have an IoU below :data:`NO_OVERLAP_IOU` with every
  ground-truth box of their image, whatever the class: the usual signature of another frame
  (``[x1, y1, x2, y2]`` read as ``[x, y, w, h]`` gives boxes that contain their lesion at an IoU
  of a few percent), or of a model that has not learned.
* **Bootstrap over fewer than 2 patients**: every resample holds the same images, so the
  intervals have no width and mean nothing.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import candidate_pairs, score_order
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

#: Pixels a box may reach beyond its image before it counts as outside.
OUTSIDE_TOLERANCE_PX = 4.0
#: Share of detections outside their images above which a run is warned about.
OUTSIDE_SHARE = 0.5
#: IoU below which a detection "overlaps no lesion".
NO_OVERLAP_IOU = 0.1
#: Share of the top-scored detections overlapping no lesion above which a run is warned about.
NO_OVERLAP_SHARE = 0.9
#: Fewest detections the overlap check judges (and the fewest top-scored ones it looks at).
MIN_CHECKED = 10

_FRAME_HINT = ("the boxes are probably in another frame (scaled to another image size, or "
               "[x1, y1, x2, y2] written as [x, y, w, h]); lesion expects [x, y, w, h] in "
               "pixels of the ground truth's images")


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def no_detections_warning() -> str:
    return ("no detections at all: AP, recall and FROC sensitivity are 0; precision and the "
            "best-F1 threshold are undefined (null in metrics.json, '–' in tables)")


def outside_warning(gt: GroundTruth, dets: Detections) -> str | None:
    """:data:`OUTSIDE_SHARE` check (module docstring), naming the first box outside."""
    if len(dets) == 0:
        return None
    size = np.asarray(gt.image_sizes, dtype=np.float64)[np.asarray(dets.image, dtype=np.int64)]
    known = (size[:, 0] > 0) & (size[:, 1] > 0)
    if not known.any():
        return None
    box = np.asarray(dets.box_xywh, dtype=np.float64)
    tol = OUTSIDE_TOLERANCE_PX
    outside = known & ((box[:, 0] < -tol) | (box[:, 1] < -tol)
                       | (box[:, 0] + box[:, 2] > size[:, 0] + tol)
                       | (box[:, 1] + box[:, 3] > size[:, 1] + tol))
    share = outside.sum() / known.sum()
    if share <= OUTSIDE_SHARE:
        return None
    k = int(np.flatnonzero(outside)[0])
    w, h = size[k]
    example = ", ".join(f"{v:g}" for v in box[k].round(1))
    return (f"{int(outside.sum())} of {int(known.sum())} detections ({_pct(share)}) reach more "
            f"than {tol:g} px outside their image (e.g. [{example}] on "
            f"{gt.image_names[int(dets.image[k])]}, {w:g} x {h:g} px): {_FRAME_HINT}")


def no_overlap_warning(gt: GroundTruth, dets: Detections) -> str | None:
    """:data:`NO_OVERLAP_SHARE` check (module docstring)."""
    n_gt = len(gt.image)
    if n_gt == 0 or len(dets) < MIN_CHECKED:
        return None
    top = score_order(dets)[:max(n_gt, MIN_CHECKED)]
    sub = dets.subset(top)
    best = np.zeros(len(top))
    d, _, iou = candidate_pairs(gt, sub, class_aware=False)
    np.maximum.at(best, d, iou)
    share = float(np.mean(best < NO_OVERLAP_IOU))
    if share <= NO_OVERLAP_SHARE:
        return None
    return (f"{_pct(share)} of the {len(top)} highest-scored detections overlap no lesion of "
            f"their image (IoU < {NO_OVERLAP_IOU:g} with every ground-truth box): if the model "
            f"is trained, {_FRAME_HINT}")


def run_warnings(gt: GroundTruth, dets: Detections, block: dict, score: float) -> list[str]:
    """The warnings of one run (``block``: its metrics block, for the at-score counts)."""
    if len(dets) == 0:
        return [no_detections_warning()]
    out = []
    at = block.get("at_score") or {}
    if at.get("tp", 0) + at.get("fp", 0) == 0:
        out.append(f"no detection scores >= {score:g} (the highest scores "
                   f"{float(np.max(dets.score)):.4g}): precision at that score is undefined; "
                   "lower --score")
    for check in (outside_warning, no_overlap_warning):
        message = check(gt, dets)
        if message:
            out.append(message)
    return out


def bootstrap_warning(gt: GroundTruth, n_resamples: int) -> str | None:
    """The warning of a bootstrap over fewer than 2 patients, or None."""
    n_patients = len(np.unique(gt.image_patients))
    if n_resamples <= 0 or n_patients >= 2:
        return None
    return (f"bootstrap over {n_patients} patient(s): every resample holds the same images, so "
            "the 95% intervals have no width and mean nothing; evaluate a split with more "
            "patients (patients come from the COCO images' patient_index)")
