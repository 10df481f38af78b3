"""VOC 11-point / all-point AP, darknet's mAP, and the shared greedy matcher (hand-worked cases plus
randomised comparisons with plain-Python reference implementations)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplesion_cli.evaluation.iou import iou_xywh
from deeplesion_cli.evaluation.iou import paired_iou_xywh as paired_iou
from deeplesion_cli.evaluation.matching import greedy_match
from deeplesion_cli.evaluation.voc import ap_11_point, ap_all_point, voc_ap
from deeplesion_cli.formats.groundtruth import Detections, ground_truth_from_dict
from tests.conftest import make_dets, make_gt


FAR = [300, 300, 10, 10]


# --- hand-worked VOC AP ---------------------------------------------------------------------

def five_lesion_case():
    # Class 1: five GT boxes side by side in image 0. Ranked detections: TP FP TP FP TP FP.
    g = [[0, 0, 10, 10], [20, 0, 10, 10], [40, 0, 10, 10], [60, 0, 10, 10], [80, 0, 10, 10]]
    anns = [(0, 1, b) for b in g]
    anns.append((0, 2, [0, 100, 10, 10]))  # class 2: one GT, never detected
    gt = make_gt(1, anns, cats=((1, "a"), (2, "b"), (3, "c")))
    dets = make_dets([
        (0, 1, g[0], 0.9), (0, 1, FAR, 0.8), (0, 1, g[1], 0.7), (0, 1, FAR, 0.6),
        (0, 1, g[2], 0.5), (0, 1, FAR, 0.4),
        (0, 3, [0, 200, 10, 10], 0.3),  # class 3 has no GT at all
    ])
    return gt, dets


def test_voc_ap_hand_worked():
    gt, dets = five_lesion_case()
    out = voc_ap(gt, dets)
    a = out["per_class"]["1"]
    # precision after each rank: 1/1, 1/2, 2/3, 2/4, 3/5, 3/6; recall: .2 .2 .4 .4 .6 .6
    assert a["precision"] == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2, 3 / 5, 1 / 2])
    assert a["recall"] == pytest.approx([.2, .2, .4, .4, .6, .6])
    assert (a["n_gt"], a["n_det"], a["tp"]) == (5, 6, 3)
    # 11-point: r=0, .1, .2 -> 1; r=.3, .4 -> max(2/3, .5, .6, .5) = 2/3; r=.5, .6 -> .6
    # (recall 3/5 == 0.6 == 6/10 exactly; np.arange(0, 1.1, .1)[6] = 0.6000000000000001 would
    # drop it); r=.7 .. 1 -> 0.   (3 + 4/3 + 1.2) / 11 = 5.5333.../11
    assert a["ap11"] == pytest.approx((3 + 4 / 3 + 1.2) / 11, abs=1e-12)
    # all-point: envelope 1 on (0,.2], 2/3 on (.2,.4], .6 on (.4,.6], nothing beyond:
    # .2*1 + .2*2/3 + .2*.6 = .45333...
    assert a["ap_all"] == pytest.approx(0.2 + 0.2 * 2 / 3 + 0.2 * 0.6, abs=1e-12)
    b, c = out["per_class"]["2"], out["per_class"]["3"]
    assert (b["ap11"], b["ap_all"], b["n_gt"], b["n_det"]) == (0.0, 0.0, 1, 0)
    assert (c["ap11"], c["ap_all"], c["ap_darknet"]) == (None, None, 0.0)
    assert (c["n_gt"], c["n_det"]) == (0, 1)
    # VOC means: classes with GT only (a, b); darknet: all three classes, c counting 0.
    assert out["map11"] == pytest.approx((3 + 4 / 3 + 1.2) / 11 / 2)
    assert out["map_all"] == pytest.approx((0.2 + 0.2 * 2 / 3 + 0.12) / 2)
    assert out["darknet_map"] == pytest.approx((0.2 + 0.2 * 2 / 3 + 0.12) / 3)
    json.dumps(out)


def test_ap_functions_edge_cases():
    assert ap_11_point(np.zeros(0), np.zeros(0)) == 0.0
    assert ap_all_point(np.zeros(0), np.zeros(0)) == 0.0
    # Perfect detector: AP 1 both ways.
    p, r = np.array([1.0, 1.0]), np.array([0.5, 1.0])
    assert ap_11_point(p, r) == 1.0 and ap_all_point(p, r) == 1.0


def test_darknet_strict_iou_and_duplicates():
    # One class. GT A = [0,0,10,10], GT B = [100,100,10,10].
    gt = make_gt(1, [(0, 1, [0, 0, 10, 10]), (0, 1, [100, 100, 10, 10])])
    dets = make_dets([
        (0, 1, [0, 0, 10, 5], 0.9),       # IoU with A = 50/100 = 0.5 exactly
        (0, 1, [0, 0, 10, 10], 0.8),      # IoU 1 with A
        (0, 1, [0, 0, 10, 10], 0.7),      # duplicate of A
        (0, 1, [100, 100, 10, 10], 0.6),  # B
    ])
    out = voc_ap(gt, dets)
    # VOC (>=): TP FP FP TP; P = 1, 1/2, 1/3, 1/2; R = .5 .5 .5 1
    #   AP = .5*1 + .5*.5 = .75
    assert out["map_all"] == pytest.approx(0.75)
    # darknet (>): the 0.5 box is FP, then TP, duplicate FP, TP; P = 0, 1/2, 1/3, 1/2;
    #   R = 0 .5 .5 1.   AP = .5*.5 + .5*.5 = .5
    # (>= would give .75; ignoring duplicates as old forks did would give 2/3.)
    assert out["darknet_map"] == pytest.approx(0.5)
    assert out["per_class"]["1"]["ap_darknet"] == pytest.approx(0.5)


def test_no_detections_at_all():
    gt = make_gt(2, [(0, 1, [0, 0, 10, 10])])
    out = voc_ap(gt, Detections.empty())
    assert out["map11"] == 0.0 and out["map_all"] == 0.0 and out["darknet_map"] == 0.0


# --- darknet reference, transcribed from AlexeyAB src/detector.c validate_detector_map ---------

def darknet_map_reference(gt_rows, det_rows, classes, thr):
    truth_count = {c: 0 for c in classes}
    for _, c, _ in gt_rows:
        truth_count[c] += 1
    dets = []
    for im, c, box, p in det_rows:
        truth_index, max_iou = -1, 0.0
        for j, (gim, gc, gbox) in enumerate(gt_rows):
            if gim != im:
                continue
            cur = float(iou_xywh(np.array([box]), np.array([gbox]))[0, 0])
            if cur > thr and c == gc and cur > max_iou:
                max_iou, truth_index = cur, j
        dets.append((p, c, truth_index))
    dets = sorted(dets, key=lambda d: -d[0])  # stable, like our tie rule
    n = len(dets)
    tp = {c: 0 for c in classes}
    fp = {c: 0 for c in classes}
    pr = {c: [] for c in classes}
    flags = set()
    for p, c, t in dets:
        if t > -1 and t not in flags:
            flags.add(t)
            tp[c] += 1
        else:
            fp[c] += 1
        for i in classes:
            fn = truth_count[i] - tp[i]
            prec = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] > 0 else 0.0
            rec = tp[i] / (tp[i] + fn) if tp[i] + fn > 0 else 0.0
            pr[i].append((prec, rec))
    total = 0.0
    for i in classes:
        ap = 0.0
        last_recall, last_precision = pr[i][n - 1][1], pr[i][n - 1][0]
        for rank in range(n - 2, -1, -1):
            delta = last_recall - pr[i][rank][1]
            last_recall = pr[i][rank][1]
            if pr[i][rank][0] > last_precision:
                last_precision = pr[i][rank][0]
            ap += delta * last_precision
        ap += (last_recall - 0) * last_precision
        total += ap
    return total / len(classes)


box_st = st.tuples(st.integers(0, 16), st.integers(0, 16), st.integers(1, 10), st.integers(1, 10))
gt_row_st = st.tuples(st.integers(0, 2), st.integers(1, 2), box_st)
det_row_st = st.tuples(st.integers(0, 2), st.integers(1, 2), box_st,
                       st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]))


@settings(max_examples=150, deadline=None)
@given(gt_rows=st.lists(gt_row_st, max_size=8),
       det_rows=st.lists(det_row_st, min_size=1, max_size=12),
       thr=st.sampled_from([0.3, 0.5, 0.75]))
def test_darknet_map_matches_transcribed_reference(gt_rows, det_rows, thr):
    gt = make_gt(3, gt_rows, cats=((1, "a"), (2, "b"), (3, "c")))
    got = voc_ap(gt, make_dets(det_rows), iou=thr)["darknet_map"]
    assert got == pytest.approx(darknet_map_reference(gt_rows, det_rows, [1, 2, 3], thr), abs=1e-12)


# --- greedy matcher vs a plain-Python reference -----------------------------------------------

def reference_match(gt_rows, det_rows, thr, class_aware, inclusive, strict_greater, rematch):
    order = sorted(range(len(det_rows)), key=lambda i: -det_rows[i][3])  # stable
    taken, det_gt, det_iou = set(), [-1] * len(det_rows), [0.0] * len(det_rows)
    for i in order:
        im, c, box, _ = det_rows[i]
        cands = [j for j, (gim, gc, _) in enumerate(gt_rows)
                 if gim == im and (gc == c or not class_aware)]
        ious = {j: float(iou_xywh(np.array([box]), np.array([gt_rows[j][2]]),
                                  inclusive=inclusive)[0, 0]) for j in cands}
        if ious:
            det_iou[i] = max(ious.values())
        pool = [j for j in cands if j not in taken] if rematch else cands
        best, best_iou = -1, -1.0
        for j in pool:  # first maximum = lowest index
            if ious[j] > best_iou:
                best, best_iou = j, ious[j]
        passes = best >= 0 and (best_iou > thr if strict_greater else best_iou >= thr)
        if passes and best not in taken:
            taken.add(best)
            det_gt[i] = best
            det_iou[i] = best_iou
    return det_gt, det_iou


@settings(max_examples=300, deadline=None)
@given(gt_rows=st.lists(gt_row_st, max_size=8), det_rows=st.lists(det_row_st, max_size=12),
       thr=st.sampled_from([0.0, 0.3, 0.5, 0.75]), class_aware=st.booleans(),
       inclusive=st.booleans(), strict_greater=st.booleans(), rematch=st.booleans())
def test_greedy_match_equals_reference(gt_rows, det_rows, thr, class_aware, inclusive,
                                       strict_greater, rematch):
    gt = make_gt(3, gt_rows, cats=((1, "a"), (2, "b")))
    det_gt, det_iou = greedy_match(gt, make_dets(det_rows), thr, class_aware=class_aware,
                                   inclusive=inclusive, strict_greater=strict_greater,
                                   rematch=rematch)
    ref_gt, ref_iou = reference_match(gt_rows, det_rows, thr, class_aware, inclusive,
                                      strict_greater, rematch)
    assert det_gt.tolist() == ref_gt
    assert det_iou == pytest.approx(ref_iou, abs=1e-12)


def test_greedy_match_rules_by_hand():
    # Two GT in one image; det 0 overlaps both, G0 best; det 1 also overlaps G0 best, G1 second.
    gt = make_gt(1, [(0, 1, [0, 0, 10, 10]), (0, 1, [4, 0, 10, 10])])
    dets = make_dets([(0, 1, [1, 0, 10, 10], 0.9), (0, 1, [0, 0, 10, 10], 0.8)])
    # det 0: IoU G0 = 90/110, G1 = 70/130 -> G0. det 1: G0 = 1, G1 = 60/140 = .43.
    voc, _ = greedy_match(gt, dets, 0.4)
    assert voc.tolist() == [0, -1]  # VOC: best (G0) taken -> duplicate, no re-assignment
    coco, iou = greedy_match(gt, dets, 0.4, rematch=True)
    assert coco.tolist() == [0, 1] and iou[1] == pytest.approx(60 / 140)
    # Class-aware: a class-2 detection never matches a class-1 GT.
    other = make_dets([(0, 2, [0, 0, 10, 10], 0.9)])
    assert greedy_match(gt, other, 0.5)[0].tolist() == [-1]
    assert greedy_match(gt, other, 0.5, class_aware=False)[0].tolist() == [0]
    # Ties in score: file order decides who gets the GT.
    tie = make_dets([(0, 1, [0, 0, 10, 9], 0.5), (0, 1, [0, 0, 10, 10], 0.5)])
    assert greedy_match(gt, tie, 0.5)[0].tolist() == [0, -1]


def test_paired_iou_equals_iou_matrix_diagonal():
    rng = np.random.default_rng(0)
    a = np.c_[rng.uniform(0, 50, (40, 2)), rng.uniform(0, 30, (40, 2))]
    b = np.c_[rng.uniform(0, 50, (40, 2)), rng.uniform(0, 30, (40, 2))]
    for inclusive in (False, True):
        assert np.array_equal(paired_iou(a, b, inclusive=inclusive),
                              np.diag(iou_xywh(a, b, inclusive=inclusive)))
