"""Box conversion to COCO and YOLO on hand-computed real rows, through `lesion prepare`."""

from __future__ import annotations

import json

import pytest

from deeplesion_cli.formats import coco, yolo
from deeplesion_cli.prepare import PrepareOptions, prepare
from tests.conftest import write_dataset

NAMES = ("000001_01_01_109.png", "000016_01_01_030.png", "000020_01_01_066.png")


@pytest.fixture(scope="module")
def prepared_universal(real_rows, tmp_path_factory):
    rows = [r for r in real_rows if r.file_name in NAMES]
    root = write_dataset(tmp_path_factory.mktemp("real") / "dl", rows)
    out = tmp_path_factory.mktemp("prep") / "out"
    prepare(root, out, PrepareOptions(task="universal", split="official"), workers=1,
            show_progress=False)
    return out


def test_xyxy_xywh_conversions():
    assert coco.xyxy_to_xywh((1.5, 2.0, 11.5, 7.0)) == [1.5, 2.0, 10.0, 5.0]
    assert coco.xywh_to_xyxy([1.5, 2.0, 10.0, 5.0]) == [1.5, 2.0, 11.5, 7.0]
    assert yolo.label_line(2, (0, 0, 256, 128), 512, 256) == "2 0.250000 0.250000 0.500000 0.500000"


def test_768_image_box_in_coco_and_yolo(prepared_universal):
    doc = json.loads((prepared_universal / "coco" / "val.json").read_text())
    (image,) = doc["images"]
    assert (image["file_name"], image["width"], image["height"]) == ("000020_01_01_066.png", 768, 768)
    (ann,) = doc["annotations"]
    # CSV "366.891, 423.044, 387.683, 443.202" is 1-based: minus 1, then x, y, x2 - x1, y2 - y1.
    assert ann["bbox"] == pytest.approx([365.891, 422.044, 20.792, 20.158], abs=1e-9)
    assert ann["area"] == pytest.approx(20.792 * 20.158)
    assert ann["category_id"] == 1 and ann["lesion_type"] == 1
    # long/short diameter 11.0871, 10.3357 px at 0.455729 mm/px
    assert ann["recist_diameters_mm"] == pytest.approx([11.0871 * 0.455729, 10.3357 * 0.455729])
    label = (prepared_universal / "val" / "000020_01_01_066.txt").read_text()
    # cx = (365.891 + 386.683) / 2 / 768 = 0.4899570; cy = (422.044 + 442.202) / 2 / 768 = 0.5626602
    assert label == "0 0.489957 0.562660 0.027073 0.026247\n"


def test_two_lesion_slice_gives_one_image_two_boxes(prepared_universal):
    doc = json.loads((prepared_universal / "coco" / "test.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in doc["images"]}
    assert set(by_name) == {"000001_01_01_109.png", "000016_01_01_030.png"}
    anns = [a for a in doc["annotations"] if a["image_id"] == by_name["000016_01_01_030.png"]]
    assert [a["bbox"] for a in anns] == [
        pytest.approx([325.556, 338.0, 38.444, 25.111]),
        pytest.approx([98.8889, 301.556, 51.7781, 52.666]),
    ]
    label = (prepared_universal / "test" / "000016_01_01_030.txt").read_text()
    assert label == ("0 0.673395 0.684679 0.075086 0.049045\n"
                     "0 0.243707 0.640408 0.101129 0.102863\n")


def test_typed_task_uses_type_codes_as_categories(real_rows, tmp_path):
    rows = [r for r in real_rows if r.file_name in NAMES]
    root = write_dataset(tmp_path / "dl", rows)
    result = prepare(root, tmp_path / "out", PrepareOptions(task="typed", split="official"),
                     workers=1, show_progress=False)
    assert [c["name"] for c in result.manifest["classes"]][:2] == ["bone", "abdomen"]
    label = (tmp_path / "out" / "test" / "000016_01_01_030.txt").read_text()
    assert [line.split()[0] for line in label.splitlines()] == ["5", "5"]  # kidney = type 6
    assert (tmp_path / "out" / "obj.names").read_text().splitlines()[5] == "kidney"
    doc = json.loads((tmp_path / "out" / "coco" / "test.json").read_text())
    assert {a["category_id"] for a in doc["annotations"]} == {3, 6}
    assert [c["id"] for c in doc["categories"]] == list(range(1, 9))
