"""COCO metrics against pycocotools, the oracle: property tests on random ground truth and
detections (ties in score and IoU, crowds, areas on the range edges, empty categories)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deeplesion_cli.evaluation import coco
from deeplesion_cli.formats.groundtruth import Detections, ground_truth_from_dict


def pycocotools_eval(gt_dict: dict, results: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(gt_dict))
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def ours(gt_dict: dict, results: list[dict]) -> dict:
    gt = ground_truth_from_dict(gt_dict)
    dets = Detections(
        "results",
        np.array([gt.image_index_of_id[r["image_id"]] for r in results], np.int64),
        np.array([r["category_id"] for r in results], np.int64),
        np.array([r["bbox"] for r in results], float).reshape(-1, 4),
        np.array([r["score"] for r in results], float))
    return coco.evaluate(gt, dets)


# Coordinates on a coarse grid make equal IoUs and equal areas common; the listed sides give
# areas exactly 32^2 and 96^2, the inclusive ends of the small/medium/large ranges.
sides = st.sampled_from([4.0, 8.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0])
coords = st.sampled_from([0.0, 4.0, 8.0, 16.0, 24.0, 40.0, 64.0])
boxes = st.tuples(coords, coords, sides, sides).map(list)


@st.composite
def problems(draw):
    n_cat = draw(st.integers(1, 3))
    image_ids = draw(st.lists(st.integers(1, 50), min_size=1, max_size=5, unique=True))
    images = [{"id": i, "file_name": f"{i}.png", "width": 256, "height": 256} for i in image_ids]
    annotations, results = [], []
    for i in image_ids:
        for box in draw(st.lists(boxes, max_size=4)):
            area = draw(st.sampled_from([box[2] * box[3], 1024.0, 9216.0, box[2] * box[3] * 1.5]))
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": draw(st.integers(1, n_cat)), "bbox": box,
                                "area": area, "iscrowd": int(draw(st.integers(0, 5)) == 0)})
        for box in draw(st.lists(boxes, max_size=7)):
            results.append({"image_id": i, "category_id": draw(st.integers(1, n_cat)),
                            "bbox": box, "score": draw(st.sampled_from([0.1, 0.5, 0.5, 0.9]))})
    # Copies of ground-truth boxes make true positives (and duplicates) likely.
    for ann in annotations:
        if draw(st.booleans()):
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": list(ann["bbox"]), "score": draw(st.sampled_from([0.5, 0.7]))})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, n_cat + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_equals_pycocotools(problem):
    gt_dict, results = problem
    if not results:  # pycocotools cannot load an empty result list
        return
    reference = pycocotools_eval(gt_dict, results)
    got = ours(gt_dict, results)
    assert list(got["stats"]) == list(coco.STAT_KEYS)
    np.testing.assert_allclose(list(got["stats"].values()), reference.stats, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["precision"], reference.eval["precision"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["recall"], reference.eval["recall"], atol=1e-6, rtol=0)


def random_problem(seed: int, n_images: int = 60, per_image: int = 150):
    rng = np.random.default_rng(seed)
    images = [{"id": int(i), "file_name": f"{i}.png", "width": 300, "height": 300}
              for i in rng.permutation(n_images) + 1]
    annotations, results = [], []
    for im in images:
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(2, 100, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"],
                                "category_id": int(rng.integers(1, 4)), "bbox": [x, y, w, h],
                                "area": float(w * h), "iscrowd": int(rng.random() < 0.05)})
        for _ in range(rng.integers(0, per_image)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(2, 100, 2)
            results.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                            "bbox": [x, y, w, h], "score": float(rng.integers(0, 20) / 20)})
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3, 7)]  # 7 has no boxes
    return {"images": images, "annotations": annotations, "categories": categories}, results


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pycocotools_beyond_100_detections_per_image(seed):
    gt_dict, results = random_problem(seed)
    reference = pycocotools_eval(gt_dict, results)
    got = ours(gt_dict, results)
    np.testing.assert_allclose(list(got["stats"].values()), reference.stats, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["precision"], reference.eval["precision"], atol=1e-6, rtol=0)
    assert got["per_class"]["7"]["AP"] == -1 and got["per_class"]["7"]["n_gt"] == 0
    for k, cat in enumerate(got["category_ids"]):
        p = reference.eval["precision"][:, :, k, 0, 2]
        expected = p[p > -1].mean() if (p > -1).any() else -1
        assert got["per_class"][str(cat)]["AP"] == pytest.approx(expected, abs=1e-6)


def test_hand_worked_single_image():
    # One ground truth 10x10 at the origin; detections: an exact hit (0.9), a duplicate (0.8),
    # a miss (0.7). Precision at recall 1 is 1 (the hit ranks first) -> AP = 1 at every IoU.
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "lesion"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                           "area": 100.0, "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
               {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.7}]
    stats = ours(gt, results)["stats"]
    assert stats["AP"] == pytest.approx(1.0) and stats["AR1"] == 1.0
    assert stats["APs"] == pytest.approx(1.0)
    assert stats["APm"] == -1 and stats["APl"] == -1  # no ground truth of those sizes
    # Swap the scores: the miss first, then the hit -> precision 1/2 at recall 1 -> AP 0.5.
    results[0]["score"], results[2]["score"] = 0.7, 0.9
    assert ours(gt, results)["stats"]["AP"] == pytest.approx(0.5, abs=1e-6)


def test_no_detections_scores_zero_and_empty_categories_minus_one():
    gt_dict, _ = random_problem(3, n_images=5, per_image=1)
    got = ours(gt_dict, [])
    assert got["stats"]["AP"] == 0.0 and got["stats"]["AR100"] == 0.0
    assert got["per_class"]["7"]["AP"] == -1


def test_unknown_category_is_an_error_not_dropped():
    gt = ground_truth_from_dict({"images": [{"id": 1}], "annotations": [],
                                 "categories": [{"id": 1, "name": "a"}]})
    dets = Detections("d", np.array([0]), np.array([5]), np.array([[0, 0, 1, 1.0]]), np.array([1.0]))
    with pytest.raises(ValueError, match="category 5"):
        coco.evaluate(gt, dets)


def test_equal_iou_goes_to_the_later_ground_truth_as_in_pycocotools():
    # det1 overlaps A and B equally (IoU 90/110); pycocotools gives it the later one, B, which
    # leaves A for det2 (IoU 0.818, while det2-B is only 70/130 = 0.54): two hits up to IoU 0.8.
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "lesion"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                           "area": 100.0, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10],
                           "area": 100.0, "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [-1, 0, 10, 10], "score": 0.8}]
    got = ours(gt, results)
    reference = pycocotools_eval(gt, results)
    np.testing.assert_allclose(got["recall"], reference.eval["recall"], atol=1e-12)
    # recall 1 at IoU .50 .. .80 (7 thresholds), 0 at .85 .. .95
    assert got["recall"][:, 0, 0, 2].tolist() == [1.0] * 7 + [0.0] * 3
