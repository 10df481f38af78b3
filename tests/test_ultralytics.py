"""Ultralytics as a client: its predictions.json read by `lesion eval` (string stems, file_name,
0- and 1-based class ids, extra keys; pycocotools agrees on the mapped file), data.yaml valid
for Ultralytics with an empty split, the `images/` warning, and, where `ultralytics` is
installed, yolo train + val save_json + lesion eval end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deeplesion_cli.cli import main
from deeplesion_cli.formats import detections as D
from deeplesion_cli.formats import yolo
from deeplesion_cli.formats.groundtruth import EvalInputError, ground_truth_from_dict
from deeplesion_cli.formats.ultralytics import class_base_of, describe_reading

# Three types listed out of id order (pelvis 8 first): Ultralytics' class k is the k-th category
# (or obj.names' k-th name), never "id - 1".
GT_DOC = {
    "images": [
        {"id": 3, "file_name": "000020_01_01_066.png", "width": 128, "height": 128},
        {"id": 1, "file_name": "000001_01_01_109.png", "width": 128, "height": 128},
        {"id": 2, "file_name": "000016_01_01_030.png", "width": 128, "height": 128},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 20, 30, 40], "area": 1200},
    ],
    "categories": [{"id": 8, "name": "pelvis"}, {"id": 4, "name": "liver"},
                   {"id": 5, "name": "lung"}],
}


@pytest.fixture
def gt():
    return ground_truth_from_dict(GT_DOC, "gt.json")


def entry(stem, cls, bbox=(1.5, 2.25, 10.0, 20.0), score=0.5, file_name=True, **extra):
    """One entry as Ultralytics 8.4's pred_to_json writes it (``cls`` already based)."""
    out = {"image_id": int(stem) if stem.isnumeric() else stem}
    if file_name:
        out["file_name"] = f"{stem}.png"
    out.update({"category_id": cls, "bbox": list(bbox), "score": score, **extra})
    return out


def write(path: Path, entries) -> Path:
    path.write_text(json.dumps(entries))
    return path


# ------------------------------------------------------------------------------------- the reader

def test_one_based_file_with_string_stems_and_file_names(gt, tmp_path):
    path = write(tmp_path / "predictions.json", [
        entry("000016_01_01_030", 3, (1.5, 2.25, 10, 20), 0.75),   # class 2 = lung (id 5)
        entry("000001_01_01_109", 1, (0, 0, 5, 5), 0.5),           # class 0 = pelvis (id 8)
        entry("000020_01_01_066", 2, (-1, 3, 4, 5), 0.125, segmentation=[], extra="x"),
    ])
    assert D.detect_format(path) == "ultralytics"
    dets = D.read_detections(path, gt)
    assert dets.image.tolist() == [1, 0, 2]            # indices into the sorted ids 1, 2, 3
    assert dets.category.tolist() == [5, 8, 4]
    assert dets.box_xywh.tolist() == [[1.5, 2.25, 10, 20], [0, 0, 5, 5], [-1, 3, 4, 5]]
    assert dets.score.tolist() == [0.75, 0.5, 0.125]
    assert dets.reading["detections_format"] == "ultralytics"
    assert dets.reading["class_base"] == 1
    assert "category_id 3 (the number of classes) occurs" in dets.reading["class_base_reason"]
    assert "class ids 1-based" in describe_reading(dets.reading)


def test_zero_based_file_of_an_older_release_without_file_name(gt, tmp_path):
    path = write(tmp_path / "predictions.json", [
        entry("000016_01_01_030", 2, file_name=False),
        entry("000001_01_01_109", 0, file_name=False),
        entry("000020_01_01_066", 1, file_name=False)])
    assert D.detect_format(path) == "ultralytics"      # a string image_id says so
    dets = D.read_detections(path, gt)
    assert dets.category.tolist() == [5, 8, 4]
    assert dets.image.tolist() == [1, 0, 2]
    assert dets.reading["class_base"] == 0


def test_classes_follow_obj_names_not_the_category_order(gt, tmp_path):
    path = write(tmp_path / "predictions.json", [entry("000001_01_01_109", 0),
                                                 entry("000001_01_01_109", 1)])
    dets = D.read_detections(path, gt, names=["lung", "liver", "pelvis"], class_base=0)
    assert dets.category.tolist() == [5, 4]
    bad = write(tmp_path / "bad.json", [entry("000001_01_01_109", 1)])
    with pytest.raises(EvalInputError, match=r"bad.json\[0\]: class 1 \(obj.names: 'spleen'\) "
                                             "is not a category"):
        D.read_detections(bad, gt, names=["lung", "spleen", "pelvis"], class_base=0)


def test_ambiguous_base_is_refused_unless_given(gt, tmp_path):
    # 3 classes, ids only 1 and 2: either "1, 2 of 0..2" or "1, 2 of 1..3"
    path = write(tmp_path / "predictions.json", [entry("000001_01_01_109", 1),
                                                 entry("000016_01_01_030", 2)])
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt)
    message = str(err.value)
    assert message.startswith(f"{path}: every category_id lies in 1..2 (seen: 1, 2)")
    assert "--class-base 0 or --class-base 1" in message
    zero = D.read_detections(path, gt, class_base=0)
    one = D.read_detections(path, gt, class_base=1)
    assert zero.category.tolist() == [4, 5] and one.category.tolist() == [8, 4]
    assert one.reading == {"detections_format": "ultralytics", "class_base": 1,
                           "class_base_reason": "set by --class-base 1"}


@pytest.mark.parametrize("ids, given, words", [
    ([0, 3], None, r"\[0\]: category_id 0, and .*\[1\]: category_id 3: with 3 classes, ids are "
                   r"0..2 \(0-based\) or 1..3 \(1-based\), never both"),
    ([1, 4], None, r"\[1\]: category_id 4 is outside 0..3"),
    ([-1], None, r"\[0\]: category_id -1 is outside 0..3"),
    ([0, 1], 1, r"\[0\]: category_id 0 is outside 1..3, the ids of 3 classes 1-based "
                r"\(--class-base 1\)"),
    ([3], 0, r"\[0\]: category_id 3 is outside 0..2"),
])
def test_class_ids_that_fit_no_base_are_refused(gt, tmp_path, ids, given, words):
    path = write(tmp_path / "p.json", [entry("000001_01_01_109", c) for c in ids])
    with pytest.raises(EvalInputError, match=words):
        D.read_detections(path, gt, class_base=given)


def test_single_class_base_is_never_ambiguous():
    def where(i):
        return f"p.json[{i}]"
    assert class_base_of(np.array([1, 1]), 1, None, where) == (
        1, "detected: category_id 1 (the number of classes) occurs, 0 never")
    assert class_base_of(np.array([0]), 1, None, where)[0] == 0
    assert class_base_of(np.zeros(0, np.int64), 8, None, where) == (None, "no detections")


def test_image_matching_by_file_name_stem_and_number(tmp_path):
    gt = ground_truth_from_dict({
        "images": [{"id": 7, "file_name": "0012.png"}, {"id": 9, "file_name": "a/b.png"}],
        "categories": [{"id": 1, "name": "lesion"}]}, "gt.json")
    # Ultralytics turns the stem "0012" into 12; without file_name only the format says so
    path = write(tmp_path / "p.json", [entry("0012", 1, file_name=False),
                                       entry("b", 1, file_name=False)])
    dets = D.read_detections(path, gt, fmt="ultralytics")
    assert dets.image.tolist() == [0, 1]
    numbers = write(tmp_path / "n.json", [entry("0012", 1, file_name=False)])
    assert D.detect_format(numbers) == "coco"          # looks like COCO ids: name the format
    with pytest.raises(EvalInputError, match=r"image_id 12 is not an image of the ground truth"):
        D.read_detections(numbers, gt)
    # with file_name, the image_id may also be the ground truth's own id
    ids = write(tmp_path / "i.json", [{**entry("0012", 1), "image_id": 7}])
    assert D.read_detections(ids, gt).image.tolist() == [0]


@pytest.mark.parametrize("bad, words", [
    ({"image_id": "000099_01_01_001", "file_name": "000099_01_01_001.png"},
     r"p.json\[1\]: file_name '000099_01_01_001.png' matches no image of the ground truth gt.json"),
    ({"image_id": "000099_01_01_001"}, r"p.json\[1\]: image_id '000099_01_01_001' matches no image"),
    ({"image_id": "000016_01_01_030", "file_name": "000001_01_01_109.png"},
     r"p.json\[1\]: image_id '000016_01_01_030' contradicts file_name '000001_01_01_109.png'"),
    ({"image_id": 12}, r"p.json\[1\]: image_id 12 \(without file_name, read as a numeric file "
                       r"stem\): no ground-truth image .* --pred-format coco"),
    ({"image_id": None}, r"p.json\[1\]: image_id is None, not a file stem"),
    ({"file_name": 3}, r"p.json\[1\]: file_name is a number, not a string"),
    ({"category_id": 1.0}, r"p.json\[1\]: category_id is 1.0, not an integer class id"),
    ({"bbox": [1, 2, 3]}, r"p.json\[1\]: bbox has 3 values, not 4"),
    ({"bbox": [1, 2, -3, 4]}, r"p.json\[1\]: bbox \[1, 2, -3, 4\] has a negative width"),
    ({"score": "high"}, r"p.json\[1\]: score is 'high', not a number"),
])
def test_bad_entries_are_refused_naming_the_entry(gt, tmp_path, bad, words):
    good = entry("000001_01_01_109", 3)
    wrong = {**entry("000001_01_01_109", 3), **bad}
    if "file_name" not in bad and "image_id" in bad:
        wrong.pop("file_name")
    path = write(tmp_path / "p.json", [good, wrong])
    with pytest.raises(EvalInputError, match=words):
        D.read_detections(path, gt, fmt="ultralytics")


def test_coco_format_forced_on_an_ultralytics_file_says_which_to_use(gt, tmp_path):
    path = write(tmp_path / "p.json", [entry("000001_01_01_109", 3)])
    with pytest.raises(EvalInputError, match=r"not an integer \(an image name as image_id is what "
                                             r"Ultralytics' predictions.json holds: read it with "
                                             r"--pred-format ultralytics"):
        D.read_detections(path, gt, fmt="coco")


def test_empty_file_read_as_ultralytics(gt, tmp_path):
    dets = D.read_detections(write(tmp_path / "p.json", []), gt, fmt="ultralytics")
    assert len(dets) == 0 and dets.reading["class_base"] is None


# ------------------------------------------------------------- lesion eval against pycocotools

def pycocotools_stats(gt_doc: dict, results: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt_doc))
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


def ultralytics_and_mapped(gt_doc: dict, names: list[str], base: int, seed: int):
    """(Ultralytics entries, the same as COCO results with ground-truth ids): jittered lesions
    and false positives of every class, the way `yolo val save_json=True` writes them."""
    rng = np.random.default_rng(seed)
    cat_of_name = {c["name"]: c["id"] for c in gt_doc["categories"]}
    index_of_cat = {cat_of_name[n]: k for k, n in enumerate(names)}
    stem_of = {im["id"]: Path(im["file_name"]).stem for im in gt_doc["images"]}
    rows = []
    for ann in gt_doc["annotations"]:
        box = np.asarray(ann["bbox"], float) + rng.normal(0, 1.5, 4)
        box[2:] = np.abs(box[2:]) + 1
        cls = index_of_cat[ann["category_id"]]
        if rng.uniform() < 0.2:                          # a wrong type now and then
            cls = int(rng.integers(0, len(names)))
        rows.append((ann["image_id"], cls, box, rng.uniform(0.3, 1)))
    for im in gt_doc["images"]:
        for cls in range(len(names)):                  # every class occurs: the base shows
            xy = rng.uniform(0, 100, 2)
            rows.append((im["id"], cls, np.array([*xy, 12.0, 9.0]), rng.uniform(0, 0.6)))
    ultra, mapped = [], []
    for image_id, cls, box, score in rows:
        bbox, score = [round(float(v), 3) for v in box], round(float(score), 5)
        ultra.append({"image_id": stem_of[image_id], "file_name": f"{stem_of[image_id]}.png",
                      "category_id": cls + base, "bbox": bbox, "score": score})
        mapped.append({"image_id": image_id, "category_id": cat_of_name[names[cls]],
                       "bbox": bbox, "score": score})
    return ultra, mapped


@pytest.fixture(scope="module")
def typed(synth_set, tmp_path_factory):
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root, _ = synth_set
    out = tmp_path_factory.mktemp("ultra") / "prepared"
    prepare(root, out, PrepareOptions(task="typed", split="patient", seed=1), workers=1,
            show_progress=False)
    return out


COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.mark.parametrize("base", [0, 1])
def test_lesion_eval_scores_ultralytics_like_pycocotools_on_the_mapped_file(typed, tmp_path,
                                                                            base):
    gt_doc = json.loads((typed / "coco" / "train.json").read_text())
    names = (typed / "obj.names").read_text().split("\n")[:-1]
    assert len(names) == 8 and gt_doc["annotations"]
    ultra, mapped = ultralytics_and_mapped(gt_doc, names, base, seed=3)
    pred = write(tmp_path / "predictions.json", ultra)
    result = CliRunner().invoke(main, ["eval", str(typed), "--split", "train",
                                       "--pred", f"ul={pred}", "--json"])
    assert result.exit_code == 0, result.output
    assert f"run ul: {pred} read as Ultralytics predictions; class ids {base}-based (detected" \
        in result.stderr
    block = json.loads(result.stdout)["runs"]["ul"]
    assert block["detections_format"] == "ultralytics" and block["class_base"] == base
    reference = pycocotools_stats(gt_doc, mapped)
    ours = [block["coco"][k] for k in COCO_KEYS]
    assert ours == pytest.approx(reference, abs=1e-12)
    assert reference[1] > 0.2                            # a score that could be wrong


def test_lesion_eval_refuses_an_ambiguous_typed_file_and_takes_class_base(typed, tmp_path):
    gt_doc = json.loads((typed / "coco" / "train.json").read_text())
    names = (typed / "obj.names").read_text().split("\n")[:-1]
    ultra, mapped = ultralytics_and_mapped(gt_doc, names, 1, seed=4)
    # no detection of the first or the last class: ids 2..7 fit either base
    keep = [k for k, u in enumerate(ultra) if u["category_id"] not in (1, 8)]
    pred = write(tmp_path / "predictions.json", [ultra[k] for k in keep])
    runner = CliRunner()
    refused = runner.invoke(main, ["eval", str(typed), "--split", "train", "--pred",
                                   f"ul={pred}"])
    assert refused.exit_code == 2, refused.output
    assert "every category_id lies in 1..7" in refused.output
    assert "--class-base 0 or --class-base 1" in refused.output
    given = runner.invoke(main, ["eval", str(typed), "--split", "train", "--pred", f"ul={pred}",
                                 "--class-base", "1", "--pred-format", "ultralytics", "--json",
                                 "--out", str(tmp_path / "eval")])
    assert given.exit_code == 0, given.output
    assert "class ids 1-based (set by --class-base 1)" in given.stderr
    block = json.loads(given.stdout)["runs"]["ul"]
    reference = pycocotools_stats(gt_doc, [mapped[k] for k in keep])
    assert [block["coco"][k] for k in COCO_KEYS] == pytest.approx(reference, abs=1e-12)
    # lesion report reads the file again with the base metrics.json recorded: overlays drawn
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["runs"]["ul"]
    assert stored["class_base"] == 1 and stored["detections_format"] == "ultralytics"
    report = runner.invoke(main, ["report", "--eval", str(tmp_path / "eval"), "--prepared",
                                  str(typed), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "no overlays" not in report.output, report.output


# ---------------------------------------------------------------------------------- data.yaml

def yaml_entries(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(train|val|test): (\S+)$", text, re.M))


def test_data_yaml_entries_for_every_split_size():
    full = yolo.ultralytics_yaml_text(Path("/p"), ["a", "b"], {"train": 3, "val": 1, "test": 1})
    assert yaml_entries(full) == {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
    assert full.endswith('nc: 2\nnames:\n  0: "a"\n  1: "b"\n')
    entries, notes = yolo.ultralytics_splits({"train": 3, "val": 0, "test": 0})
    assert entries == {"train": "train.txt", "val": "train.txt"}
    assert "validation of `yolo train` scores the training images" in notes["val"]
    assert "no `test:` entry" in notes["test"]
    entries, notes = yolo.ultralytics_splits({"train": 0, "val": 0, "test": 5})
    assert entries == {"train": "train.txt", "val": "test.txt", "test": "test.txt"}
    assert "'No images found'" in notes["train"] and "scores the test split" in notes["val"]


def test_prepare_with_an_empty_val_split_writes_a_usable_data_yaml(synth_set, tmp_path):
    root, _ = synth_set
    out = tmp_path / "prep"
    result = CliRunner().invoke(main, ["prepare", str(root), str(out), "--split", "patient",
                                       "--ratios", "1,0,0", "--workers", "1"])
    assert result.exit_code == 0, result.output
    text = (out / "data.yaml").read_text()
    assert yaml_entries(text) == {"train": "train.txt", "val": "train.txt"}
    assert (out / "train.txt").read_text().count("\n") > 0
    flat = " ".join(result.output.split())
    assert "the val split has no images; data.yaml points Ultralytics' `val:` at train.txt" in flat
    assert "the test split has no images; data.yaml has no `test:` entry" in flat
    again = CliRunner().invoke(main, ["prepare", str(root), str(out), "--split", "patient",
                                      "--ratios", "1,0,0", "--workers", "1"])
    assert again.exit_code == 0 and (out / "data.yaml").read_text() == text


def test_images_folder_warning_names_darknet_and_ultralytics():
    (warning,) = [w for w in yolo.darknet_path_warnings(Path("/data/images/prep"))
                  if "'images'" in w]
    assert "pjreddie's darknet replaces it" in warning
    assert "Ultralytics, too, replaces the last '/images/' folder" in warning
    assert "'/labels/'" in warning
    (substring,) = yolo.darknet_path_warnings(Path("/data/myimages/prep"))
    assert "darknet" in substring and "Ultralytics" not in substring


# ------------------------------------------------------------------------------ end to end

def test_ultralytics_train_val_save_json_then_lesion_eval(tmp_path_factory, monkeypatch):
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (pip install "
                                              "ultralytics to run this end-to-end test)")
    from tests.conftest import small_universal_prepared

    base = tmp_path_factory.mktemp("ultralytics")
    if "images" in Path(base).parts:
        pytest.skip(f"{base} has an 'images' folder, where Ultralytics looks for labels elsewhere")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(base)
    prepared = small_universal_prepared(base)
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(data=str(prepared / "data.yaml"), epochs=1, imgsz=128, batch=4, device="cpu",
                workers=0, plots=False, val=False, amp=False, project=str(base / "runs"),
                name="train", exist_ok=True, verbose=False)
    metrics = model.val(data=str(prepared / "data.yaml"), split="test", imgsz=128, batch=4,
                        device="cpu", workers=0, plots=False, save_json=True, conf=0.001,
                        project=str(base / "runs"), name="val", exist_ok=True, verbose=False)
    predictions = Path(metrics.save_dir) / "predictions.json"
    assert predictions.is_file()
    entries = json.loads(predictions.read_text())
    result = CliRunner().invoke(main, ["eval", str(prepared), "--pred", f"ul={predictions}",
                                       "--json"])
    assert result.exit_code == 0, result.output
    block = json.loads(result.stdout)["runs"]["ul"]
    assert block["n_detections"] == len(entries)
    assert block["detections_format"] == "ultralytics"
    if entries:
        assert block["class_base"] == 1                  # 8.4: index + 1 on a one-class set
        assert isinstance(entries[0]["image_id"], str) and "file_name" in entries[0]
        # mapped by hand (stem -> id, class index -> category), pycocotools agrees
        gt_doc = json.loads((prepared / "coco" / "test.json").read_text())
        id_of = {Path(im["file_name"]).stem: im["id"] for im in gt_doc["images"]}
        category_ids = [c["id"] for c in gt_doc["categories"]]
        mapped = [{**e, "image_id": id_of[str(e["image_id"])],
                   "category_id": category_ids[e["category_id"] - 1]} for e in entries]
        reference = pycocotools_stats(gt_doc, mapped)
        assert [block["coco"][k] for k in COCO_KEYS] == pytest.approx(reference, abs=1e-12)
    # the label caches Ultralytics leaves beside the split folders (docs/formats.md)
    assert (prepared / "train.cache").is_file()
    assert (prepared / "test.cache").is_file()
    assert os.path.getsize(prepared / "test.cache") > 0
