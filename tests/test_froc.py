"""DeepLesion FROC, official and strict, on a hand-worked walk; plus a randomised comparison with
the official algorithm as the NIH code writes it (a plain loop; interp1d as MULAN calls it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import interpolate

from deeplesion_cli.evaluation.froc import froc
from deeplesion_cli.evaluation.iou import iou_xywh
from deeplesion_cli.formats.groundtruth import Detections
from tests.conftest import make_dets, make_gt

FAR = [300, 300, 9, 9]


def walk_case():
    """3 images, 5 lesions, 7 detections.

    image 0: L0 = [0,0,9,9] (pixels 0..9), L1 = [4,0,9,9] (pixels 4..13)
    image 1: L2 = [100,100,9,9], L4 = [200,0,9,9]
    image 2: L3 = [50,50,9,9], no detection at all (still counts in N_img = 3)
    """
    gt = make_gt(3, [(0, 1, [0, 0, 9, 9]), (0, 1, [4, 0, 9, 9]), (1, 1, [100, 100, 9, 9]),
                     (2, 1, [50, 50, 9, 9]), (1, 1, [200, 0, 9, 9])])
    dets = make_dets([
        # d1: D = [2,0,9,9] (pixels 2..11). Inclusive IoU with L0 and L1: 8x10 / (200-80) = 2/3
        #     -> official: hits BOTH. Plain IoU: 7x9 / (162-63) = .636 each -> strict: L0 only.
        (0, 1, [2, 0, 9, 9], 0.95),
        # d2: exact copy of L0; with L1 only 6x10/140 = .43 (plain .38): overlaps only the
        #     already-hit L0 -> official: neither TP nor FP; strict: FP.
        (0, 1, [0, 0, 9, 9], 0.90),
        (1, 1, FAR, 0.80),                # d3: FP. Tied with d4; file order puts it first.
        (1, 1, [100, 100, 9, 9], 0.80),   # d4: hits L2
        (0, 1, FAR, 0.50),                # d5: FP
        (1, 1, FAR, 0.40),                # d6: FP
        (1, 1, [200, 0, 9, 9], 0.30),     # d7: hits L4, after the last FP
    ])
    return gt, dets


def test_official_walk_by_hand():
    gt, dets = walk_case()
    # Curve (FP/3, TP/5), preceded by (0,0):
    #   d1 (0,.4) d2 (0,.4) d3 (1/3,.4) d4 (1/3,.6) d5 (2/3,.6) d6 (1,.6) d7 (1,.8)
    out = froc(gt, dets, fps=(0.2, 1 / 3, 0.5, 1, 2, 4, 16))
    assert (out["n_images"], out["n_lesions"]) == (3, 5)
    # sens(f) = linear interpolation between the last point with FP/img <= f and the next one:
    # f = .2: between (0,.4)[d2] and (1/3,.4)[d3] -> .4 (never a blend: the next point is a FP).
    #   The tied TP d4 comes after the FP d3 in file order, so it is not in.
    # f = 1/3: last point at 1/3 is d4 -> .6.   f = .5: between d4 and d5 (2/3,.6) -> .6.
    # f = 1: last point at 1 is d7 -> .8 (its TP after the 3rd FP counts).
    # f = 2, 4, 16 > 1 = last FP/img: the final .8 is held.
    assert out["sens"] == pytest.approx([0.4, 0.6, 0.6, 0.8, 0.8, 0.8, 0.8])
    assert out["mean_sens_0.5_4"] == pytest.approx((0.6 + 0.8 + 0.8 + 0.8) / 4)
    # Corners, one per FP count 0..3: the highest sensitivity at that count.
    assert out["curve_fps"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert out["curve_sens"] == pytest.approx([0.4, 0.6, 0.6, 0.8])
    assert out["protocol"] == "official" and out["n_detections"] == 7
    json.dumps(out)


def test_tie_order_is_file_order():
    gt, dets = walk_case()
    swapped = dets.subset(np.array([0, 1, 3, 2, 4, 5, 6]))  # TP d4 now before FP d3
    # d4 now at (0,.6): at f = .2 it is in.
    assert froc(gt, swapped, fps=(0.2,))["sens"] == pytest.approx([0.6])
    assert froc(gt, dets, fps=(0.2,))["sens"] == pytest.approx([0.4])


def test_strict_walk_by_hand():
    gt, dets = walk_case()
    # Strict: d1 hits L0 only (plain IoU tie .636/.636 -> first lesion), d2 FP (duplicate),
    #   d3 FP, d4 TP, d5 FP, d6 FP, d7 TP.  Curve (FP/3, TP/5):
    #   d1 (0,.2) d2 (1/3,.2) d3 (2/3,.2) d4 (2/3,.4) d5 (1,.4) d6 (4/3,.4) d7 (4/3,.6)
    # sens(f) = last point with FP/img <= f: 1/3 -> .2, .5 -> .2, 1 -> .4, 2 and 4 -> .6 (hold).
    out = froc(gt, dets, fps=(1 / 3, 0.5, 1, 2, 4), strict=True)
    assert out["sens"] == pytest.approx([0.2, 0.2, 0.4, 0.6, 0.6])
    assert out["mean_sens_0.5_4"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.6) / 4)
    assert out["curve_fps"] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3])
    assert out["curve_sens"] == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6])


def test_below_first_point_and_empty_cases():
    gt = make_gt(2, [(0, 1, [0, 0, 9, 9])])
    # First detection is a FP: curve (0,0), (1/2, 0), (1/2, 1), (1, 1). f = .25 lies below the
    # first point: between (0,0) and (1/2,0) -> 0. f = .5: last point at 1/2 -> 1.
    dets = make_dets([(1, 1, FAR, 0.9), (0, 1, [0, 0, 9, 9], 0.8), (1, 1, FAR, 0.7)])
    assert froc(gt, dets, fps=(0.25, 0.5, 0.75))["sens"] == pytest.approx([0, 1, 1])
    none = froc(gt, Detections.empty())
    assert none["sens"] == [0.0] * 6 and none["mean_sens_0.5_4"] == 0.0
    assert none["curve_fps"] == [0.0] and none["curve_sens"] == [0.0]
    no_lesion = froc(make_gt(2, []), dets)
    assert no_lesion["sens"] == [None] * 6 and no_lesion["n_lesions"] == 0
    with pytest.raises(ValueError):
        froc(gt, dets, fps=(0,))


def test_categories_are_ignored_by_froc():
    gt = make_gt(1, [(0, 2, [0, 0, 9, 9])], cats=((1, "a"), (2, "b")))
    dets = make_dets([(0, 1, [0, 0, 9, 9], 0.9)])
    assert froc(gt, dets, fps=(1,))["sens"] == [1.0]


# --- the official code, transcribed (MULAN detection_eval.py FROC + sens_at_FP) ----------------

def official_froc(boxes_all, gts_all, avg_fp, iou_th=0.5):
    n_img = len(boxes_all)
    img_idxs = np.hstack([[i] * len(b) for i, b in enumerate(boxes_all)]).astype(int)
    boxes_cat = np.vstack([b for b in boxes_all if len(b)])
    order = np.argsort(-boxes_cat[:, -1], kind="stable")  # ours: stable ties (official: [::-1])
    boxes_cat, img_idxs = boxes_cat[order, :4], img_idxs[order]
    hits = [np.zeros(len(g), bool) for g in gts_all]
    n_hits = n_miss = 0
    tps, fps = [], []
    for i in range(len(boxes_cat)):
        g = gts_all[img_idxs[i]]
        overlaps = iou_xywh(boxes_cat[i:i + 1], g, inclusive=True)[0] if len(g) else np.zeros(0)
        if len(overlaps) == 0 or overlaps.max() < iou_th:
            n_miss += 1
        else:
            for j in range(len(overlaps)):
                if overlaps[j] >= iou_th and not hits[img_idxs[i]][j]:
                    hits[img_idxs[i]][j] = True
                    n_hits += 1
        tps.append(n_hits)
        fps.append(n_miss)
    n_gt = sum(len(g) for g in gts_all)
    sens = np.array(tps, float) / n_gt
    fp_per_img = np.array(fps, float) / n_img
    avg_in = [a for a in avg_fp if a <= fp_per_img[-1]]
    avg_out = [a for a in avg_fp if a > fp_per_img[-1]]
    f = interpolate.interp1d(fp_per_img, sens)
    return np.hstack([f(np.array(avg_in)), np.ones(len(avg_out)) * sens[-1]])


@pytest.mark.parametrize("seed", range(40))
def test_official_matches_transcribed_nih_code(seed):
    rng = np.random.default_rng(seed)
    n_img = int(rng.integers(2, 7))  # first curve point's FP/img <= 1/2: no f below it
    anns, gts_all, rows, boxes_all = [], [], [], []
    for i in range(n_img):
        k = int(rng.integers(1, 4))
        g = np.c_[rng.integers(0, 30, (k, 2)), rng.integers(3, 15, (k, 2))].astype(float)
        gts_all.append(g)
        anns += [(i, 1, list(b)) for b in g]
        k = int(rng.integers(0, 12))
        b = np.c_[rng.integers(0, 30, (k, 2)), rng.integers(3, 15, (k, 2)),
                  rng.choice([0.2, 0.4, 0.6, 0.8], k)].astype(float).reshape(-1, 5)
        boxes_all.append(b)
        rows += [(i, 1, list(x[:4]), x[4]) for x in b]  # file order = image by image
    fps = (0.5, 1, 2, 4, 8, 16)
    got = froc(make_gt(n_img, anns), make_dets(rows), fps=fps)["sens"]
    ref = official_froc(boxes_all, gts_all, fps)
    assert got == pytest.approx(list(ref), abs=1e-12)
