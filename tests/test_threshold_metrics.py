"""Operating-point metrics on hand-worked cases: at_threshold, best_f1, the seed protocol, the
confusion matrix and box size agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deeplesion_cli.evaluation.boxstats import box_size_agreement
from deeplesion_cli.evaluation.confusion import confusion_matrix
from deeplesion_cli.evaluation.froc import froc
from deeplesion_cli.evaluation.seed import seed_protocol
from deeplesion_cli.evaluation.threshold import at_threshold, best_f1
from deeplesion_cli.evaluation.voc import voc_ap
from deeplesion_cli.formats.groundtruth import Detections
from tests.conftest import make_dets, make_gt

SQ = [0, 0, 10, 10]


def two_class_case():
    """Images 0-2; classes 1 "a" and 2 "b".

    GT: img0 A1 (a) [0,0,10,10], A2 (b) [50,50,10,10]; img1 B1 (a) [0,0,10,10];
        img2 C1 (a) [0,0,10,10] (img2 gets no detection).
    """
    gt = make_gt(3, [(0, 1, SQ), (0, 2, [50, 50, 10, 10]), (1, 1, SQ), (2, 1, SQ)],
                 cats=((1, "a"), (2, "b")))
    dets = make_dets([
        (0, 1, SQ, 0.9),                    # d0: A1, IoU 1 -> TP
        (0, 1, SQ, 0.8),                    # d1: duplicate of A1 -> FP
        (0, 1, [50, 50, 10, 10], 0.7),      # d2: class a on the class-b box A2 -> FP (class-aware)
        (1, 1, [0, 0, 10, 5], 0.6),         # d3: B1, IoU 50/100 = .5 -> TP
        (1, 1, [100, 100, 5, 5], 0.2),      # d4: FP, below .25
        (0, 2, [52, 50, 10, 10], 0.3),      # d5: A2, IoU 80/120 = 2/3 -> TP
    ])
    return gt, dets


def test_at_threshold_hand_worked():
    gt, dets = two_class_case()
    out = at_threshold(gt, dets, score=0.25)
    # kept d0 d1 d2 d3 d5: TP d0 d3 d5 = 3, FP d1 d2 = 2, FN C1 = 1
    assert (out["tp"], out["fp"], out["fn"]) == (3, 2, 1)
    assert out["precision"] == pytest.approx(3 / 5)
    assert out["recall"] == pytest.approx(3 / 4)
    assert out["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # = 2PR/(P+R) = 2/3
    assert out["mean_iou_tp"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert out["images_without_detections"] == pytest.approx(1 / 3)  # img2
    json.dumps(out)
    high = at_threshold(gt, dets, score=0.65)
    # kept d0 d1 d2: TP 1, FP 2, FN 3; img1 (best .6) and img2 have nothing kept
    assert (high["tp"], high["fp"], high["fn"]) == (1, 2, 3)
    assert high["f1"] == pytest.approx(2 / 7)
    assert high["images_without_detections"] == pytest.approx(2 / 3)
    # Threshold is inclusive: score .6 keeps d3.
    assert at_threshold(gt, dets, score=0.6)["tp"] == 2
    # Nothing kept: precision undefined (0/0), recall 0, F1 0.
    none = at_threshold(gt, dets, score=0.95)
    assert (none["precision"], none["recall"], none["f1"], none["mean_iou_tp"]) == (None, 0.0, 0.0,
                                                                                    None)
    assert none["images_without_detections"] == 1.0


def test_best_f1_hand_worked():
    gt, dets = two_class_case()
    # Cut at each distinct score (n_gt = 4, F1 = 2TP / (kept + 4)):
    # .9: 2/5  .8: 2/6  .7: 2/7  .6: 4/8  .3: 6/9  .2: 6/10  -> best at .3
    out = best_f1(gt, dets)
    assert out["score"] == 0.3
    assert out["f1"] == pytest.approx(2 / 3)
    assert (out["tp"], out["fp"], out["fn"]) == (3, 2, 1)


def test_best_f1_keeps_tied_scores_together():
    gt = make_gt(1, [(0, 1, SQ)])
    # TP and FP share .5; cutting between them (F1 = 1) is impossible: both or neither.
    dets = make_dets([(0, 1, SQ, 0.5), (0, 1, [100, 100, 10, 10], 0.5),
                      (0, 1, [200, 0, 5, 5], 0.1)])
    out = best_f1(gt, dets)
    assert out["score"] == 0.5 and out["fp"] == 1 and out["f1"] == pytest.approx(2 / 3)
    # Equal best F1 at several cuts: the highest score wins.
    dets = make_dets([(0, 1, [100, 100, 10, 10], 0.9), (0, 1, SQ, 0.4)])
    assert best_f1(gt, dets)["score"] == 0.4  # .9 gives F1 0; .4 gives 2/3
    empty = best_f1(gt, Detections.empty())
    assert (empty["score"], empty["precision"], empty["tp"], empty["fn"]) == (None, None, 0, 1)


def test_seed_protocol_hand_worked():
    g0, g1 = SQ, [50, 0, 10, 10]
    gt = make_gt(2, [(0, 1, g0), (0, 1, g1), (1, 1, g0), (1, 1, g1)])
    dets = make_dets([
        (0, 1, g0, 0.95),                # a: TP
        (0, 1, [200, 200, 10, 10], 0.85),  # b: FP
        (1, 1, g0, 0.55),                # c: TP
        (1, 1, g0, 0.35),                # d: duplicate -> FP
        (0, 1, g1, 0.05),                # e: TP
        (1, 1, g1, 1.0),                 # f: TP, kept even at t = 1.0 (score >= t)
    ])
    out = seed_protocol(gt, dets)
    # t:    0    .1  .2  .3  .4   .5   .6   .7   .8   .9  1.0
    # kept: 6    5   5   5   4    4    3    3    3    2   1
    # TP:   4    3   3   3   3    3    2    2    2    2   1
    assert out["thresholds"] == pytest.approx([k / 10 for k in range(11)])
    assert out["tp"] == [4, 3, 3, 3, 3, 3, 2, 2, 2, 2, 1]
    assert out["fp"] == [2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0]
    p = [4 / 6, .6, .6, .6, .75, .75, 2 / 3, 2 / 3, 2 / 3, 1, 1]
    r = [1, .75, .75, .75, .75, .75, .5, .5, .5, .5, .25]
    assert out["precision"] == pytest.approx(p)
    assert out["recall"] == pytest.approx(r)
    # Points from t = 1.0 down: (.25,1) (.5,1) (.5,2/3)x3 (.75,.75)x2 (.75,.6)x3 (1,2/3).
    # Trapezoids with a recall step: .25*(1+1)/2 + .25*(2/3+.75)/2 + .25*(.6+2/3)/2
    assert out["area"] == pytest.approx(0.25 + 0.25 * (2 / 3 + 0.75) / 2 + 0.25 * (0.6 + 2 / 3) / 2)
    json.dumps(out)


def test_seed_protocol_per_class_ap_map_and_mean_iou_hand_worked():
    gt, dets = two_class_case()
    out = seed_protocol(gt, dets, score=0.25)
    a, b = out["per_class"]["a"], out["per_class"]["b"]
    # class a (3 GT): kept/TP at t = 0 .. 1.0: 5/2 5/2 5/2 4/2 4/2 4/2 4/2 3/1 2/1 1/1 0/0
    assert a["tp"] == [2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 0]
    assert a["fp"] == [3, 3, 3, 2, 2, 2, 2, 2, 1, 0, 0]
    # from t = 1.0 down, recall steps 0 -> 1/3 at t = .9 (precision 1) and 1/3 -> 2/3 at t = .6
    # (precision 2/4): AP = 1/3 * 1 + 1/3 * 0.5
    assert a["ap"] == pytest.approx(0.5)
    assert b["tp"] == [1, 1, 1, 1] + [0] * 7 and b["ap"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(0.75)
    # matched with score >= .25: d0 (IoU 1), d3 (1/2), d5 (2/3); d4 (.2) is an FP anyway
    assert out["mean_iou"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert out["mean_iou_at"][7] == pytest.approx(1.0)     # t = .7: d0 only
    assert out["mean_iou_at"][10] is None                   # t = 1.0: nothing kept
    # the pooled area is still the trapezoid of the pooled counts
    assert out["tp"] == [3, 3, 3, 3, 2, 2, 2, 1, 1, 1, 0]
    json.dumps(out)


def test_seed_protocol_class_without_ground_truth_is_left_out_of_map():
    gt = make_gt(1, [(0, 1, SQ)], cats=((1, "a"), (2, "b")))
    out = seed_protocol(gt, make_dets([(0, 1, SQ, 0.95), (0, 2, SQ, 0.9)]))
    assert out["per_class"]["b"]["ap"] is None and out["per_class"]["b"]["n_gt"] == 0
    assert out["map"] == pytest.approx(1.0)


def test_seed_protocol_no_detection_kept_means_precision_one():
    gt = make_gt(1, [(0, 1, SQ)])
    out = seed_protocol(gt, make_dets([(0, 1, SQ, 0.45)]))
    assert out["precision"] == [1.0] * 11
    assert out["recall"] == [1.0] * 5 + [0.0] * 6
    assert out["area"] == pytest.approx(1.0)  # (0,1) -> (1,1)


def test_confusion_matrix_cells():
    gt, dets = two_class_case()
    out = confusion_matrix(gt, dets, score=0.25)
    # Class-agnostic greedy at .25: d0 -> A1 (a,a); d1 best A1 taken -> (bg,a);
    # d2 -> A2 (gt b, pred a); d3 -> B1 (a,a); d5 best A2 taken -> (bg,b); C1 missed -> (a,bg).
    assert out["labels"] == ["a", "b", "background"]
    assert out["category_ids"] == [1, 2]
    assert out["matrix"] == [[2, 0, 1],
                             [1, 0, 0],
                             [1, 1, 0]]
    json.dumps(out)
    # At .75 only d0 (a,a) and d1 (bg,a) are kept; A2, B1, C1 are missed.
    assert confusion_matrix(gt, dets, score=0.75)["matrix"] == [[1, 0, 2], [0, 0, 1], [1, 0, 0]]
    # No re-assignment: det 2's best box (X) is taken, so it stays unmatched although it
    # overlaps Y at 60/140 = .43 >= .4.  Rows/cols: a, b, background.
    gt2 = make_gt(1, [(0, 1, SQ), (0, 2, [4, 0, 10, 10])], cats=((1, "a"), (2, "b")))
    d2 = make_dets([(0, 1, [1, 0, 10, 10], 0.9), (0, 2, SQ, 0.8)])
    assert confusion_matrix(gt2, d2, iou=0.4)["matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    # A detection of a category the file does not list is left out and counted.
    odd = make_dets([(0, 9, SQ, 0.9)])
    out = confusion_matrix(gt, odd)
    assert out["n_unknown_category"] == 1 and out["matrix"] == [[0, 0, 3], [0, 0, 1], [0, 0, 0]]


def test_box_size_agreement():
    gt = make_gt(5, [(i, 1, SQ) for i in range(5)])  # five 10x10 GT boxes, area 100
    dets = make_dets([
        (0, 1, [0, 0, 12, 10], 0.9),   # area 120: ratio 1.2, IoU 100/120
        (1, 1, [0, 0, 10, 15], 0.8),   # area 150: ratio 1.5, IoU 2/3
        (2, 1, [0, 0, 10, 8], 0.7),    # area 80: ratio .8 (smaller by 1.25), IoU .8
        (3, 1, SQ, 0.6),               # equal
        (4, 1, [0, 0, 10, 19], 0.1),   # TP but below the .25 score: not counted
        (0, 1, [100, 100, 40, 40], 0.9),  # FP: not counted
    ])
    out = box_size_agreement(gt, dets, score=0.25)
    assert out["n_matched"] == 4 and out["n_degenerate"] == 0
    big, small, eq = out["bigger"], out["smaller"], out["equal"]
    assert (big["count"], big["share"]) == (2, 0.5)
    assert (big["mean"], big["median"], big["min"], big["max"]) == pytest.approx((1.35, 1.35, 1.2,
                                                                                  1.5))
    assert (small["count"], small["share"]) == (1, 0.25)
    assert (small["mean"], small["min"], small["max"]) == pytest.approx((1.25, 1.25, 1.25))
    assert (eq["count"], eq["share"]) == (1, 0.25)
    ratio = out["ratio_pred_over_gt"]
    assert ratio["mean"] == pytest.approx((1.2 + 1.5 + 0.8 + 1) / 4)
    assert ratio["median"] == pytest.approx(1.1)
    assert ratio["geometric_mean"] == pytest.approx((1.2 * 1.5 * 0.8) ** 0.25)
    json.dumps(out)
    none = box_size_agreement(gt, Detections.empty())
    assert none["n_matched"] == 0
    assert none["bigger"]["share"] is None and none["smaller"]["mean"] is None


def test_outputs_are_plain_python():
    gt, dets = two_class_case()
    for out in (at_threshold(gt, dets), best_f1(gt, dets), seed_protocol(gt, dets),
                confusion_matrix(gt, dets), box_size_agreement(gt, dets), voc_ap(gt, dets),
                froc(gt, dets), froc(gt, dets, strict=True)):
        stack = [out]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
            else:
                # exact types: a numpy scalar (np.float64 subclasses float) fails here
                assert x is None or type(x) in (int, float, str), (type(x), x)
