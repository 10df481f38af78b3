"""`lesion eval` end to end: a prepared synthetic set, detections in every format, side by side;
metrics.json's schema, pycocotools agreement through the CLI, outputs, bootstrap, bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deeplesion_cli.cli import main
from deeplesion_cli.evaluation import coco as coco_metrics
from deeplesion_cli.evaluation.evaluate import EvalOptions, evaluate_runs, resample
from deeplesion_cli.formats.detections import read_detections
from deeplesion_cli.formats.groundtruth import load_ground_truth
from deeplesion_cli.prepare import PrepareOptions, prepare


@pytest.fixture(scope="module")
def prepared(synth_set, tmp_path_factory):
    root, _ = synth_set
    out = tmp_path_factory.mktemp("eval") / "prepared"
    prepare(root, out, PrepareOptions(task="universal", split="patient", seed=1), workers=1,
            show_progress=False)
    return out


def fake_results(gt_doc: dict, seed: int, jitter_px: float = 1.0) -> list:
    """A plausible detector: jittered copies of the lesions (first, in annotation order) plus
    low-scored false positives."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt_doc["annotations"]:
        box = np.asarray(ann["bbox"]) + rng.normal(0, jitter_px, 4)
        box[2:] = np.abs(box[2:]) + 1
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": box.round(3).tolist(), "score": round(rng.uniform(0.4, 1), 4)})
    for im in gt_doc["images"]:
        for _ in range(rng.integers(0, 4)):
            xy = rng.uniform(0, 100, 2)
            results.append({"image_id": im["id"], "category_id": 1,
                            "bbox": [*xy.round(2).tolist(), 9.0, 9.0],
                            "score": round(rng.uniform(0, 0.7), 4)})
    return results


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dets")
    gt_doc = json.loads((prepared / "coco" / "test.json").read_text())
    frcnn = fake_results(gt_doc, seed=1)
    n_lesions = len(gt_doc["annotations"])
    # yolo finds a strict subset of frcnn's lesions (same false positives): it cannot score higher
    yolo = [r for k, r in enumerate(frcnn) if k >= n_lesions or k % 3 != 0]
    paths = {"frcnn": folder / "frcnn.json", "yolo": folder / "yolo.json"}
    paths["frcnn"].write_text(json.dumps(frcnn))
    paths["yolo"].write_text(json.dumps(yolo))
    return paths


def pycocotools_stats(gt_path, results_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_two_runs_side_by_side_with_outputs(prepared, runs, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["eval", str(prepared), "--pred", f"frcnn={runs['frcnn']}",
                                       "--pred", f"yolo={runs['yolo']}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "frcnn" in result.output and "FROC sens @4" in result.output
    document = json.loads((out / "metrics.json").read_text())
    assert list(document["runs"]) == ["frcnn", "yolo"]
    for name, block in document["runs"].items():
        assert list(block["coco"]) == list(coco_metrics.STAT_KEYS)
        expected = pycocotools_stats(prepared / "coco" / "test.json", runs[name])
        np.testing.assert_allclose(list(block["coco"].values()), expected, atol=1e-6, rtol=0)
        assert list(block["per_class"]) == ["1"] and block["per_class"]["1"]["name"] == "lesion"
        assert len(block["froc"]["fps"]) == len(block["froc"]["sens"]) == 6
        assert {"map11", "map_all", "darknet_map"} <= set(block["voc"])
        assert set(block["strata"]["size"]) <= {"<10mm", "10-30mm", ">30mm"}
        assert sum(s["n_lesions"] for s in block["strata"]["size"].values()) == \
            block["n_ground_truth"]
    # the better detector must come out ahead on the headline numbers
    frcnn, yolo = document["runs"]["frcnn"], document["runs"]["yolo"]
    assert frcnn["coco"]["AP50"] > yolo["coco"]["AP50"]
    assert frcnn["froc"]["mean_sens_0.5_4"] > yolo["froc"]["mean_sens_0.5_4"]
    rows = list(csv.DictReader(io.StringIO((out / "per_class.csv").read_text())))
    assert [r["run"] for r in rows] == ["frcnn", "yolo"]
    assert float(rows[0]["AP"]) == pytest.approx(frcnn["per_class"]["1"]["AP"])
    summary = (out / "summary.md").read_text()
    assert "| metric | frcnn | yolo |" in summary and "COCO AP50" in summary
    for png in ("froc.png", "pr_frcnn.png", "pr_yolo.png", "confusion_frcnn.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_on_stdout_and_darknet_json_scores_like_coco(prepared, runs, tmp_path):
    gt = load_ground_truth(prepared / "coco" / "test.json")
    results = json.loads(runs["frcnn"].read_text())
    sizes = {int(i): gt.image_sizes[k] for k, i in enumerate(gt.image_ids)}
    frames = []
    for k, image_id in enumerate(gt.image_ids):
        w, h = sizes[int(image_id)]
        objects = [{"class_id": 0, "name": "lesion", "confidence": r["score"],
                    "relative_coordinates": {"center_x": (r["bbox"][0] + r["bbox"][2] / 2) / w,
                                             "center_y": (r["bbox"][1] + r["bbox"][3] / 2) / h,
                                             "width": r["bbox"][2] / w,
                                             "height": r["bbox"][3] / h}}
                   for r in results if r["image_id"] == image_id]
        frames.append({"frame_id": k + 1, "filename": f"/data/prepared/test/{gt.image_names[k]}",
                       "objects": objects})
    darknet = tmp_path / "result.json"
    darknet.write_text(json.dumps(frames))
    result = CliRunner().invoke(main, ["eval", str(prepared), str(darknet), "--json"])
    assert result.exit_code == 0, result.output
    via_darknet = json.loads(result.stdout)["runs"]["result"]
    via_coco = evaluate_runs(gt, {"c": read_detections(runs["frcnn"], gt)})["runs"]["c"]
    # same boxes up to float rounding of the relative coordinates; ties may reorder
    for key in ("AP", "AP50", "AR100"):
        assert via_darknet["coco"][key] == pytest.approx(via_coco["coco"][key], abs=1e-3)
    assert via_darknet["at_score"]["tp"] == via_coco["at_score"]["tp"]


def test_empty_detection_file_scores_zero(prepared, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = CliRunner().invoke(main, ["eval", str(prepared), str(empty), "--json"])
    assert result.exit_code == 0, result.output
    block = json.loads(result.stdout)["runs"]["empty"]
    assert block["coco"]["AP"] == 0 and block["voc"]["map_all"] == 0
    assert block["froc"]["sens"] == [0.0] * 6 and block["at_score"]["tp"] == 0


@pytest.mark.parametrize("content, message", [
    ('[{"image_id": 99999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]', "[0]"),
    ('[{"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.5}]', "category"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, NaN, 5], "score": 0.5}]', "[0]"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5], "score": 0.5}]', "negative"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}', "JSON"),
])
def test_bad_detections_exit_2_naming_file_and_index(prepared, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = CliRunner().invoke(main, ["eval", str(prepared / "coco" / "test.json"), str(path)])
    assert result.exit_code == 2, result.output
    assert "bad.json" in result.output and message in result.output


def test_bootstrap_gives_intervals_and_a_paired_difference(prepared, runs):
    gt = load_ground_truth(prepared / "coco" / "test.json")
    dets = {name: read_detections(path, gt) for name, path in runs.items()}
    options = EvalOptions(bootstrap=20, seed=5)
    document = evaluate_runs(gt, dets, options)
    again = evaluate_runs(gt, dets, options)
    assert document["paired_difference"] == again["paired_difference"]  # seeded
    for name, block in document["runs"].items():
        for metric, (lo, hi) in block["bootstrap"]["ci95"].items():
            assert lo <= hi
    paired = document["paired_difference"]
    assert paired["runs"] == ["frcnn", "yolo"]
    ap = paired["difference"]["coco.AP"]
    assert ap == pytest.approx(document["runs"]["frcnn"]["coco"]["AP"]
                               - document["runs"]["yolo"]["coco"]["AP"])


def test_resample_copies_whole_patients(prepared, runs):
    gt = load_ground_truth(prepared / "coco" / "test.json")
    dets = read_detections(runs["frcnn"], gt)
    patients = np.unique(gt.image_patients)
    first = patients[0]
    images_first = np.flatnonzero(gt.image_patients == first)
    # patient index 0 drawn twice: its images, annotations and detections appear twice
    new_gt, new_dets = resample(gt, dets, np.array([0, 0]))
    assert new_gt.n_images == 2 * len(images_first)
    assert np.all(new_gt.image_patients == first)
    n_ann = int(np.isin(gt.image, images_first).sum())
    assert len(new_gt.image) == 2 * n_ann
    assert len(new_dets) == 2 * int(np.isin(dets.image, images_first).sum())
    # every copied box sits on a copy of its own image
    for k in range(len(new_gt.image)):
        original = new_gt.image_names[new_gt.image[k]]
        assert original in {gt.image_names[i] for i in images_first}
