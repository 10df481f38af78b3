"""DeepLesion FROC: sensitivity at given false positives per image.

Default protocol (``strict=False``): the official NIH key-slice FROC of 3DCE / MULAN / A3D
(``lesion_detector_3DCE/rcnn/utils/evaluation.py``, ``MULAN.../detection_eval.py``):

* **Class-agnostic.** Categories play no role; every annotation is a lesion (``iscrowd`` ignored).
* **Images.** N_img = every image of the ground-truth file, with or without detections (the
  official test list is the key images that keep at least one lesion; ``lesion prepare`` writes
  that). N_les = every annotation.
* **Walk.** All detections of all images sorted by score, highest first (ties: file order; the
  official code uses ``np.argsort(scores)[::-1]``, whose tie order is an accident of the sort).
  IoU uses the inclusive-pixel convention (``x2 - x1 + 1``). For each detection in turn:
  if its best IoU with the lesions of its own image is < 0.5 (or the image has none), FP += 1;
  otherwise **every** lesion of that image with IoU >= 0.5 that is not yet hit becomes hit and
  TP += the number newly hit. A detection that overlaps only already-hit lesions adds neither TP
  nor FP (duplicates are free). After each detection the curve gets the point
  (FP / N_img, TP / N_les).
* **Sensitivity at f FP/img** (f > 0): the curve, preceded by the point (0, 0), is linearly
  interpolated at f between the last point with FP/img <= f and the point after it. That is what
  MULAN's ``sens_at_FP`` computes with current scipy: ``interp1d(fp_per_img, sens)`` with no
  ``fill_value`` delegates to ``numpy.interp`` (checked in scipy 1.17; x stable-sorted). For f
  above the largest FP/img reached the final sensitivity is held (MULAN / A3D; 3DCE extrapolated
  linearly instead). Below
  the first curve point (only when the top-scoring detection is a false positive) the (0, 0)
  point gives 0: MULAN's ``interp1d`` raises there, 3DCE extrapolates from the first two points,
  Ke Yan's later LENS utility returns 0, as here.
* **Consequence worth stating in docs.** The walk curve is a staircase: a false positive moves
  right without changing sensitivity and a true positive moves up without changing FP/img, so the
  point after the last one with FP/img <= f is a false positive at the same sensitivity and the
  "interpolation" never blends two values: sens(f) = the sensitivity at the last curve point with
  FP/img <= f = TP / N_les over all detections ranked before the false positive that takes the FP
  count above f * N_img (every detection when it never gets there). When f * N_img is a whole
  number reached exactly, the true positives after that false positive and before the next one
  count. scipy's older pure-Python path (``searchsorted(side='left')``; also what 3DCE's
  ``fill_value='extrapolate'`` takes) instead stops at the first point with FP/img >= f, leaving
  those true positives out; this only matters at f = k / N_img exactly, i.e. for whole-number f
  when the FP count reaches f * N_img.
* **Summary.** ``mean_sens_0.5_4`` = mean of the sensitivities at 0.5, 1, 2 and 4 FP/img (always
  these four, whatever ``fps`` asks).

``strict=True`` (a one-to-one variant, not comparable with published numbers): plain IoU (no +1),
matching by ``matching.greedy_match(class_aware=False, rematch=True)``: each detection, in score
order, hits at most one lesion, the not-yet-hit lesion of its image with the highest IoU >= 0.5;
a detection with no such lesion (duplicates included) is a false positive. No interpolation:
sens(f) = the sensitivity at the last curve point with FP/img <= f (on the staircase this is the
same read-off as the official interpolation; the difference between the two protocols is the
IoU and the matching).

``curve_fps`` / ``curve_sens``: the staircase's corners, one per FP count c = 0, 1, ..., FP_total:
(c / N_img, the sensitivity just before the (c+1)-th false positive), at most about 200 of them
evenly spaced by c (the last always kept), for plotting as a post-step curve.

With no lesion at all, every sensitivity is ``None``.
"""

from __future__ import annotations

import numpy as np

from deeplesion_cli.evaluation.matching import (candidate_pairs, greedy_match, score_order,
                                                score_rank)
from deeplesion_cli.evaluation.voc import subsample
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

DEFAULT_FPS = (0.5, 1, 2, 4, 8, 16)
SUMMARY_FPS = (0.5, 1, 2, 4)
IOU = 0.5


def official_increments(gt: GroundTruth, dets: Detections, iou: float = IOU):
    """Per detection (file order): (lesions newly hit, is FP) under the official walk.

    Vectorised: a lesion is hit by the highest-ranked detection of its image overlapping it at
    >= ``iou`` (inclusive pixels), whatever else happened before, so hits need no sequential state;
    a detection is a FP exactly when no lesion of its image overlaps it at >= ``iou``.
    """
    n_det = len(dets.score)
    new_hits = np.zeros(n_det, dtype=np.int64)
    is_fp = np.ones(n_det, dtype=bool)
    if n_det == 0 or len(gt.image) == 0:
        return new_hits, is_fp
    d, g, v = candidate_pairs(gt, dets, class_aware=False, inclusive=True)
    ok = v >= iou
    d, g = d[ok], g[ok]
    is_fp[d] = False
    rank = score_rank(dets)
    o = np.lexsort((rank[d], g))
    first = np.ones(len(o), dtype=bool)
    first[1:] = g[o][1:] != g[o][:-1]
    np.add.at(new_hits, d[o][first], 1)
    return new_hits, is_fp


def froc_curve(gt: GroundTruth, dets: Detections, strict: bool = False):
    """The walk as cumulative counts after each detection in score order: ``(tp, fp)``, two
    int arrays of length n_det (divide by N_les and N_img for the curve)."""
    if strict:
        det_gt, _ = greedy_match(gt, dets, IOU, class_aware=False, inclusive=False, rematch=True)
        new_hits = (det_gt >= 0).astype(np.int64)
        is_fp = det_gt < 0
    else:
        new_hits, is_fp = official_increments(gt, dets)
    order = score_order(dets)
    tp = np.cumsum(new_hits[order])
    fp = np.cumsum(is_fp[order].astype(np.int64))
    return tp, fp


def _sens_at(fp_img: np.ndarray, sens: np.ndarray, f: float, strict: bool) -> float:
    """``fp_img`` / ``sens`` start with the (0, 0) point; ``fp_img`` is non-decreasing."""
    j = int(np.searchsorted(fp_img, f, side="right")) - 1  # last point with FP/img <= f
    if strict or j == len(fp_img) - 1:
        return float(sens[j])
    x0, x1, y0, y1 = fp_img[j], fp_img[j + 1], sens[j], sens[j + 1]
    return float(y0 + (f - x0) * (y1 - y0) / (x1 - x0))  # x1 > x0 by the choice of j


def froc(gt: GroundTruth, dets: Detections, fps=DEFAULT_FPS, strict: bool = False) -> dict:
    """Sensitivity at each FP/img rate of ``fps`` (module docstring)."""
    fps = [float(f) for f in fps]
    if any(not f > 0 for f in fps):
        raise ValueError(f"FP rates must be > 0, got {fps}")
    n_img, n_les = int(gt.n_images), int(len(gt.image))
    tp, fp = froc_curve(gt, dets, strict)
    result = {"protocol": "strict" if strict else "official", "fps": fps,
              "n_images": n_img, "n_lesions": n_les, "n_detections": int(len(dets.score))}
    if n_les == 0 or n_img == 0:
        result.update({"sens": [None] * len(fps), "mean_sens_0.5_4": None,
                       "curve_fps": [], "curve_sens": []})
        return result
    fp_img = np.concatenate([[0], fp]) / n_img
    sens = np.concatenate([[0], tp]) / n_les
    result["sens"] = [_sens_at(fp_img, sens, f, strict) for f in fps]
    result["mean_sens_0.5_4"] = float(np.mean([_sens_at(fp_img, sens, f, strict)
                                               for f in SUMMARY_FPS]))
    # Corners: for FP count c, the sensitivity just before the (c+1)-th FP = max TP at count c.
    fp_all = np.concatenate([[0], fp])
    tp_all = np.concatenate([[0], tp])
    last_at_count = np.flatnonzero(np.append(fp_all[1:] != fp_all[:-1], True))
    result["curve_fps"] = subsample(fp_all[last_at_count] / n_img)
    result["curve_sens"] = subsample(tp_all[last_at_count] / n_les)
    return result
