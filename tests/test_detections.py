"""Detection readers (COCO results, darknet -out JSON, darknet `detector valid` files) on
hand-written files with hand-computed pixel boxes, and every bad input they must refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deeplesion_cli.formats import detections as D
from deeplesion_cli.formats.groundtruth import Detections, EvalInputError, ground_truth_from_dict

# Ground-truth image ids are deliberately listed out of order: the reader must give the index into
# the sorted ids (1 -> 0, 2 -> 1, 3 -> 2), not the position in the file.
GT_DOC = {
    "images": [
        {"id": 3, "file_name": "000020_01_01_066.png"},  # no width/height
        {"id": 1, "file_name": "000001_01_01_109.png", "width": 512, "height": 512},
        {"id": 2, "file_name": "000016_01_01_030.png", "width": 768, "height": 512},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 20, 30, 40], "area": 1200},
    ],
    # lung listed before liver: darknet-valid output follows this order, not the alphabet
    "categories": [{"id": 5, "name": "lung"}, {"id": 4, "name": "liver"}],
}


@pytest.fixture
def gt():
    return ground_truth_from_dict(GT_DOC, "gt.json")


def write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- coco

COCO_TEXT = json.dumps([
    {"image_id": 2, "category_id": 5, "bbox": [1.5, 2.25, 10, 20], "score": 0.75, "extra": "x"},
    {"image_id": 1, "category_id": 4, "bbox": [0, 0, 0, 0], "score": 1},
    {"image_id": 3, "category_id": 5, "bbox": [-1.0, 3.0, 4.0, 5.0], "score": 0.125},
])


def test_coco_reads_boxes_as_given(gt, tmp_path):
    path = write(tmp_path / "pred.json", COCO_TEXT)
    dets = D.read_detections(path, gt)
    assert dets.source == str(path)
    assert dets.image.tolist() == [1, 0, 2]
    assert dets.category.tolist() == [5, 4, 5]
    assert dets.box_xywh.tolist() == [[1.5, 2.25, 10, 20], [0, 0, 0, 0], [-1, 3, 4, 5]]
    assert dets.score.tolist() == [0.75, 1.0, 0.125]
    assert dets.image.dtype == np.int64 and dets.category.dtype == np.int64
    assert dets.box_xywh.dtype == np.float64 and dets.box_xywh.shape == (3, 4)


def test_coco_keeps_logit_scores(gt, tmp_path):
    path = write(tmp_path / "pred.json", json.dumps([
        {"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 7.5},
        {"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "score": -2.0}]))
    assert D.read_detections(path, gt, "coco").score.tolist() == [7.5, -2.0]


@pytest.mark.parametrize("text", ["[]", "[]\n", " [ ] "])
def test_empty_coco_file_is_valid(gt, tmp_path, text):
    path = write(tmp_path / "empty.json", text)
    assert D.detect_format(path) == "coco"
    dets = D.read_detections(path, gt)
    assert len(dets) == 0 and dets.box_xywh.shape == (0, 4)


def test_write_coco_results_round_trip(gt, tmp_path):
    box = np.array([[0.1 + 0.2, 1e-7, 123.456789012345, 2.0 / 3.0],
                    [10.0, 20.0, 0.0, 5.5],
                    [-0.5, 511.999999999, 1e300, 3.0]])
    dets = Detections("mem", np.array([2, 0, 1]), np.array([4, 5, 4]), box,
                      np.array([0.3, 1.0 / 3.0, 12.0]))
    path = tmp_path / "out.json"
    D.write_coco_results(path, gt, dets)
    doc = json.loads(path.read_text())
    assert doc[0] == {"image_id": 3, "category_id": 4, "bbox": box[0].tolist(), "score": 0.3}
    assert [d["image_id"] for d in doc] == [3, 1, 2]
    back = D.read_detections(path, gt)
    assert D.detect_format(path) == "coco"
    np.testing.assert_array_equal(back.image, dets.image)
    np.testing.assert_array_equal(back.category, dets.category)
    np.testing.assert_array_equal(back.box_xywh, dets.box_xywh)
    np.testing.assert_array_equal(back.score, dets.score)
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_coco_results_empty(gt, tmp_path):
    path = tmp_path / "out.json"
    D.write_coco_results(path, gt, Detections.empty())
    assert json.loads(path.read_text()) == []
    assert len(D.read_detections(path, gt)) == 0


def test_write_coco_results_refuses_nan(gt, tmp_path):
    dets = Detections("mem", np.array([0]), np.array([4]), np.array([[0, 0, 1, 1.0]]),
                      np.array([np.nan]))
    with pytest.raises(ValueError):
        D.write_coco_results(tmp_path / "out.json", gt, dets)
    dets = Detections("mem", np.array([0]), np.array([9]), np.array([[0, 0, 1, 1.0]]),
                      np.array([0.5]))
    with pytest.raises(ValueError, match="category"):
        D.write_coco_results(tmp_path / "out.json", gt, dets)
    assert not (tmp_path / "out.json").exists()


def test_many_coco_detections_round_trip(gt, tmp_path):
    # Speed is measured by benchmarks/bench_eval.py; here only the vectorised path's values.
    n = 20_000
    rng = np.random.default_rng(0)
    dets = Detections("mem", rng.integers(0, 3, n), rng.choice([4, 5], n),
                      rng.uniform(0, 500, (n, 4)).round(2), rng.uniform(0, 1, n).round(4))
    path = tmp_path / "big.json"
    D.write_coco_results(path, gt, dets)
    back = D.read_detections(path, gt)
    np.testing.assert_array_equal(back.box_xywh, dets.box_xywh)
    np.testing.assert_array_equal(back.image, dets.image)
    np.testing.assert_array_equal(back.category, dets.category)
    np.testing.assert_array_equal(back.score, dets.score)


# ----------------------------------------------------------------------------------- darknet json

# The exact layout AlexeyAB's `detector test -ext_output -out result.json < list.txt` writes
# (docs/darknet.md 8.1), trailing spaces and the empty-objects frame included.
DARKNET_JSON = """[
{
 "frame_id":1, 
 "filename":"/abs/prep/test/000016_01_01_030.png", 
 "objects": [ 
  {"class_id":0, "name":"lung", "relative_coordinates":{"center_x":0.500000, "center_y":0.250000, "width":0.100000, "height":0.200000}, "confidence":0.997599}, 
  {"class_id":1, "name":"liver", "relative_coordinates":{"center_x":0.250000, "center_y":0.750000, "width":0.500000, "height":0.250000}, "confidence":0.006000}
 ] 
}, 
{
 "frame_id":2, 
 "filename":"/abs/prep/test/000020_01_01_066.png", 
 "objects": [ 
 ] 
}, 
{
 "frame_id":3, 
 "filename":"relative/000001_01_01_109.jpg", 
 "objects": [ 
  {"class_id":1, "name":"liver", "relative_coordinates":{"center_x":0.100000, "center_y":0.200000, "width":0.050000, "height":0.025000}, "confidence":0.500000}
 ] 
}
]
"""


def test_darknet_json_relative_to_pixels(gt, tmp_path):
    path = write(tmp_path / "result.json", DARKNET_JSON)
    assert D.detect_format(path) == "darknet-json"
    dets = D.read_detections(path, gt)
    # frame 1 -> image id 2 (index 1, 768 x 512); frame 3 matched by stem -> image id 1 (index 0)
    assert dets.image.tolist() == [1, 1, 0]
    assert dets.category.tolist() == [5, 4, 4]
    expected = [
        # x = 0.5 * 768 - 0.1 * 768 / 2 = 345.6, y = 0.25 * 512 - 0.2 * 512 / 2 = 76.8
        [345.6, 76.8, 76.8, 102.4],
        # x = 0.25 * 768 - 0.5 * 768 / 2 = 0, y = 0.75 * 512 - 0.25 * 512 / 2 = 320
        [0.0, 320.0, 384.0, 128.0],
        # 512 x 512: x = 51.2 - 12.8 = 38.4, y = 102.4 - 6.4 = 96
        [38.4, 96.0, 25.6, 12.8],
    ]
    np.testing.assert_allclose(dets.box_xywh, expected, atol=1e-9)
    assert dets.score.tolist() == [0.997599, 0.006, 0.5]


def test_darknet_json_class_by_obj_names(gt, tmp_path):
    # with obj.names the class_id decides; the `name` field is not consulted
    text = DARKNET_JSON.replace('"name":"lung"', '"name":"obj"')
    path = write(tmp_path / "result.json", text)
    names = write(tmp_path / "obj.names", "liver\nlung\n")
    dets = D.read_detections(path, gt, "darknet-json", names=D.read_names(names))
    assert dets.category.tolist() == [4, 5, 5]


def test_darknet_json_empty(gt, tmp_path):
    path = write(tmp_path / "result.json",
                 '[\n{\n "frame_id":1, \n "filename":"/a/000001_01_01_109.png", \n'
                 ' "objects": [ \n ] \n}\n]\n')
    dets = D.read_detections(path, gt)
    assert len(dets) == 0


# ---------------------------------------------------------------------------------- darknet valid

def valid_dir(tmp_path, files: dict[str, str]):
    folder = tmp_path / "results"
    folder.mkdir()
    for name, text in files.items():
        (folder / f"comp4_det_test_{name}.txt").write_text(text)
    return folder


def test_darknet_valid_one_based_corners(gt, tmp_path):
    # darknet's "%s %f %f %f %f %f\n" (docs/darknet.md 7)
    folder = valid_dir(tmp_path, {
        "liver": "000001_01_01_109 0.900000 11.000000 21.000000 31.000000 41.000000\n"
                 "000016_01_01_030 0.001000 1.000000 1.000000 768.000000 512.000000\n",
        "lung": "000020_01_01_066 0.500000 2.500000 3.250000 2.500000 9.250000\n",
    })
    assert D.detect_format(folder) == "darknet-valid"
    dets = D.read_detections(folder, gt)
    # gt.categories order is lung, liver: the lung file comes first
    assert dets.category.tolist() == [5, 4, 4]
    assert dets.image.tolist() == [2, 0, 1]
    assert dets.box_xywh.tolist() == [[1.5, 2.25, 0.0, 6.0],
                                      [10.0, 20.0, 20.0, 20.0],
                                      [0.0, 0.0, 767.0, 511.0]]
    assert dets.score.tolist() == [0.5, 0.9, 0.001]


def test_darknet_valid_box_beyond_the_edge_becomes_a_zero_width_edge_box(gt, tmp_path):
    # pjreddie clips x2 to the width but not x1: a box wholly past the right edge of the 512-px
    # image reads "530 ... 512"; it stays a (false-positive) detection of zero width at the edge.
    folder = valid_dir(tmp_path, {
        "liver": "000001_01_01_109 0.4 530 20 512 40\n000001_01_01_109 0.3 10 600 30 512\n"})
    dets = D.read_detections(folder, gt)
    assert dets.box_xywh.tolist() == [[511.0, 19.0, 0.0, 20.0], [9.0, 511.0, 20.0, 0.0]]
    # reversed inside the image is still an error
    (tmp_path / "inside").mkdir()
    inside = valid_dir(tmp_path / "inside", {"liver": "000001_01_01_109 0.4 40 20 30 40\n"})
    with pytest.raises(EvalInputError, match=r"comp4_det_test_liver.txt:1: x2 < x1"):
        D.read_detections(inside, gt)


def test_darknet_valid_single_file_and_crlf(gt, tmp_path):
    folder = valid_dir(tmp_path, {
        "liver": "000001_01_01_109 0.9 11 21 31 41\r\n\r\n000001_01_01_109 0.8 1 1 2 2\r\n"})
    path = folder / "comp4_det_test_liver.txt"
    assert D.detect_format(path) == "darknet-valid"
    dets = D.read_detections(path, gt)
    assert dets.box_xywh.tolist() == [[10, 20, 20, 20], [0, 0, 1, 1]]
    assert dets.category.tolist() == [4, 4] and dets.score.tolist() == [0.9, 0.8]


def test_darknet_valid_empty_files(gt, tmp_path):
    # empty per-class files, including one for a class the ground truth lacks: 0 detections
    folder = valid_dir(tmp_path, {"liver": "", "lung": "\n", "kidney": ""})
    (folder / "unrelated.txt").write_text("not read\n")
    dets = D.read_detections(folder, gt)
    assert len(dets) == 0 and dets.box_xywh.shape == (0, 4)


def test_darknet_valid_image_id_is_up_to_first_dot(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "scan.v2.png", "width": 10, "height": 10}],
           "categories": [{"id": 1, "name": "lesion"}]}
    gt = ground_truth_from_dict(doc)
    folder = valid_dir(tmp_path, {"lesion": "scan 0.5 1 1 3 3\n"})
    assert D.read_detections(folder, gt).image.tolist() == [0]


# ------------------------------------------------------------------------------- names and detect

def test_read_names(tmp_path):
    assert D.read_names(write(tmp_path / "a.names", "liver\r\nlung\r\n\n")) == ["liver", "lung"]
    assert D.read_names(write(tmp_path / "b.names", "lesion")) == ["lesion"]
    with pytest.raises(EvalInputError, match=r"c\.names:2: blank line"):
        D.read_names(write(tmp_path / "c.names", "liver\n\nlung\n"))
    with pytest.raises(EvalInputError, match="no class names"):
        D.read_names(write(tmp_path / "d.names", "\n"))


@pytest.mark.parametrize("text, found", [
    ('{"images": [], "annotations": [], "categories": []}', "ground-truth"),
    ('{"a": 1}', "JSON object"),
    ("[1, 2]", "first element is a number"),
    ('[{"frame": 1}]', "first element has keys ['frame']"),
    ('"x"', "JSON a string"),
])
def test_detect_format_refuses_other_json(tmp_path, text, found):
    path = write(tmp_path / "x.json", text)
    with pytest.raises(EvalInputError) as err:
        D.detect_format(path)
    assert str(path) in str(err.value) and found in str(err.value)


def test_detect_format_refuses_text(gt, tmp_path):
    path = write(tmp_path / "boxes.txt", LINE)
    for call in (lambda: D.detect_format(path), lambda: D.read_detections(path, gt)):
        with pytest.raises(EvalInputError) as err:
            call()
        assert str(err.value).startswith(f"{path}: not valid JSON")
        assert "not a detection file" in str(err.value)


def test_detect_format_missing_file_and_bad_fmt(gt, tmp_path):
    with pytest.raises(EvalInputError, match="cannot read"):
        D.detect_format(tmp_path / "nope.json")
    with pytest.raises(EvalInputError, match="unknown detection format 'yolo'"):
        D.read_detections(write(tmp_path / "a.json", "[]"), gt, fmt="yolo")


# --------------------------------------------------------------------------------- bad coco input

GOOD = {"image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize("entry, reason", [
    ({**GOOD, "image_id": 99}, "image_id 99 is not an image of the ground truth"),
    ({**GOOD, "image_id": 2**70}, "is not an id of the ground truth"),
    ({**GOOD, "image_id": "1"}, "image_id is '1', not an integer"),
    ({**GOOD, "image_id": True}, "image_id is True, not an integer"),
    ({**GOOD, "category_id": 7}, "category_id 7 is not a category of the ground truth"),
    ({**GOOD, "category_id": 4.0}, "category_id is 4.0, not an integer"),
    ({**GOOD, "bbox": [1, 2, 3]}, "bbox has 3 values, not 4"),
    ({**GOOD, "bbox": None}, "bbox is None, not a list"),
    ({**GOOD, "bbox": [1, 2, "3", 4]}, "bbox value '3' is not a number"),
    ({**GOOD, "bbox": [1, 2, -3, 4]}, "negative width or height"),
    ({**GOOD, "bbox": [1, 2, 3, -0.5]}, "negative width or height"),
    ({**GOOD, "score": "0.5"}, "score is '0.5', not a number"),
    ({**GOOD, "score": None}, "score is None, not a number"),
    ({k: v for k, v in GOOD.items() if k != "score"}, "no 'score'"),
    ({k: v for k, v in GOOD.items() if k != "bbox"}, "no 'bbox'"),
    ([1, 2], "a list, not a detection object"),
])
def test_bad_coco_entry(gt, tmp_path, entry, reason):
    path = write(tmp_path / "result.json", json.dumps([GOOD, entry, GOOD]))
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt)
    message = str(err.value)
    assert f"{path}[1]:" in message and reason in message


@pytest.mark.parametrize("bad, reason", [
    ('"bbox": [1, 2, NaN, 4], "score": 0.5', "is not finite"),
    ('"bbox": [Infinity, 2, 3, 4], "score": 0.5', "is not finite"),
    ('"bbox": [1, 2, 3, 4], "score": NaN', "score is nan"),
    ('"bbox": [1, 2, 3, 4], "score": -Infinity', "score is -inf"),
])
def test_non_finite_coco_values(gt, tmp_path, bad, reason):
    good = json.dumps(GOOD)
    text = f'[{good}, {good}, {{"image_id": 2, "category_id": 5, {bad}}}]'
    path = write(tmp_path / "result.json", text)
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt, "coco")
    assert f"{path}[2]:" in str(err.value) and reason in str(err.value)


def test_coco_malformed_json_and_wrong_top_level(gt, tmp_path):
    path = write(tmp_path / "result.json", '[{"image_id": 1,]')
    with pytest.raises(EvalInputError, match=r"result\.json: not valid JSON .*line 1 column"):
        D.read_detections(path, gt)
    path = write(tmp_path / "obj.json", '{"image_id": 1}')
    with pytest.raises(EvalInputError, match=r"obj\.json: COCO results must be a JSON list"):
        D.read_detections(path, gt, "coco")


# ------------------------------------------------------------------------- bad darknet json input

def darknet_json(tmp_path, obj: str = None, filename: str = "/p/000016_01_01_030.png",
                 objects: str = None):
    good = ('{"class_id":0, "name":"lung", "relative_coordinates":{"center_x":0.5, '
            '"center_y":0.5, "width":0.1, "height":0.1}, "confidence":0.9}')
    if objects is None:
        objects = f"[ \n  {good}, \n  {obj or good}\n ]"
    text = (f'[\n{{\n "frame_id":1, \n "filename":"/p/000001_01_01_109.png", \n "objects": [ \n'
            f'  {good}\n ] \n}}, \n{{\n "frame_id":2, \n "filename":"{filename}", \n'
            f' "objects": {objects} \n}}\n]\n')
    return write(tmp_path / "result.json", text)


REL = '"relative_coordinates":{"center_x":0.5, "center_y":0.5, "width":0.1, "height":0.1}'


@pytest.mark.parametrize("obj, reason", [
    ('{"class_id":0, "name":"kidney", ' + REL + ', "confidence":0.9}',
     "name 'kidney' is not a category of the ground truth"),
    ('{"class_id":0, "name":7, ' + REL + ', "confidence":0.9}', "name is 7, not a string"),
    ('{"class_id":0, "name":"lung", "confidence":0.9}', "no 'relative_coordinates'"),
    ('{"class_id":0, "name":"lung", ' + REL + '}', "no 'confidence'"),
    ('{"class_id":0, "name":"lung", "relative_coordinates":{"center_x":0.5, "center_y":0.5, '
     '"width":0.1}, "confidence":0.9}', "relative_coordinates has no 'height'"),
    ('{"class_id":0, "name":"lung", "relative_coordinates":[0.5], "confidence":0.9}',
     "relative_coordinates is a list, not an object"),
    ('{"class_id":0, "name":"lung", "relative_coordinates":{"center_x":"0.5", "center_y":0.5, '
     '"width":0.1, "height":0.1}, "confidence":0.9}', "center_x is '0.5', not a number"),
    ('{"class_id":0, "name":"lung", "relative_coordinates":{"center_x":0.5, "center_y":0.5, '
     '"width":-0.1, "height":0.1}, "confidence":0.9}', "negative width or height"),
    ('{"class_id":0, "name":"lung", ' + REL + ', "confidence":NaN}', "confidence is nan"),
    ('{"class_id":0, "name":"lung", "relative_coordinates":{"center_x":Infinity, '
     '"center_y":0.5, "width":0.1, "height":0.1}, "confidence":0.9}', "center_x is inf"),
    ('"lung"', "a string, not an object"),
])
def test_bad_darknet_object(gt, tmp_path, obj, reason):
    path = darknet_json(tmp_path, obj)
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt)
    message = str(err.value)
    assert f"{path}[1].objects[1]:" in message and reason in message


def test_darknet_class_id_outside_names(gt, tmp_path):
    path = darknet_json(tmp_path, '{"class_id":2, "name":"lung", ' + REL + ', "confidence":0.9}')
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt, names=["liver", "lung"])
    assert f"{path}[1].objects[1]: class_id 2 is outside the 2 class names" in str(err.value)
    path = darknet_json(tmp_path, '{"class_id":1.0, "name":"lung", ' + REL + ', "confidence":1}')
    with pytest.raises(EvalInputError, match=r"\[1\]\.objects\[1\]: class_id is 1.0, not an int"):
        D.read_detections(path, gt, names=["liver", "lung"])
    # a name in obj.names that the ground truth lacks
    path = darknet_json(tmp_path, '{"class_id":1, "name":"lung", ' + REL + ', "confidence":1}')
    with pytest.raises(EvalInputError, match=r"class_id 1 \(obj.names: 'bone'\) is not a categ"):
        D.read_detections(path, gt, names=["lung", "bone"])


def test_darknet_unknown_image(gt, tmp_path):
    path = darknet_json(tmp_path, filename="/p/000099_01_01_001.png")
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt)
    assert f"{path}[1]: filename '/p/000099_01_01_001.png' matches no image" in str(err.value)


def test_darknet_split_long_path_is_explained(gt, tmp_path):
    # docs/darknet.md 15: fgets(…, 256) cuts a long list line into a 255-byte first "image"
    long = "/" + "d" * 254
    path = darknet_json(tmp_path, filename=long, objects="[ \n ]")
    with pytest.raises(EvalInputError, match=r"\[1\]: filename .* matches no image.*255 bytes"):
        D.read_detections(path, gt)


def test_darknet_image_without_size(gt, tmp_path):
    path = darknet_json(tmp_path, filename="/p/000020_01_01_066.png")
    with pytest.raises(EvalInputError) as err:
        D.read_detections(path, gt)
    assert f"{path}[1]: the ground truth gt.json does not give the width and height" in str(
        err.value)


def test_darknet_frame_shape_errors(gt, tmp_path):
    path = darknet_json(tmp_path, objects='{"a": 1}')
    with pytest.raises(EvalInputError, match=r"result\.json\[1\]: objects is an object, not a li"):
        D.read_detections(path, gt)
    path = write(tmp_path / "r2.json", '[{"frame_id": 1, "objects": []}]')
    with pytest.raises(EvalInputError, match=r"r2\.json\[0\]: no 'filename'"):
        D.read_detections(path, gt, "darknet-json")
    path = write(tmp_path / "r3.json", '{"frame_id": 1}')
    with pytest.raises(EvalInputError, match=r"r3\.json: darknet -out JSON must be a list"):
        D.read_detections(path, gt, "darknet-json")


def test_darknet_unescaped_quote_is_explained(gt, tmp_path):
    # docs/darknet.md 15: an image named we"ird.png makes darknet's JSON unparsable
    path = darknet_json(tmp_path, filename='/p/we"ird.png')
    for fmt in (None, "darknet-json"):
        with pytest.raises(EvalInputError) as err:
            D.read_detections(path, gt, fmt)
        message = str(err.value)
        assert message.startswith(f"{path}: not valid JSON")
        assert "without escaping" in message and "darknet.md" in message
    with pytest.raises(EvalInputError, match="without escaping"):
        D.detect_format(path)


def test_darknet_truncated_json(gt, tmp_path):
    text = DARKNET_JSON.rstrip().removesuffix("]")
    path = write(tmp_path / "result.json", text)
    with pytest.raises(EvalInputError, match=r"not valid JSON.*closing"):
        D.read_detections(path, gt)


# ------------------------------------------------------------------------ bad darknet valid input

LINE = "000001_01_01_109 0.900000 11.000000 21.000000 31.000000 41.000000\n"


@pytest.mark.parametrize("bad, reason", [
    ("000001_01_01_109 0.9 11 21 31\n", "expected 6 fields"),
    ("000001_01_01_109 0.9 11 21 31 41 51\n", "expected 6 fields"),
    ("000001_01_01_109 0.9 11 21 31 4x1\n", "y2 '4x1' is not a number"),
    ("000001_01_01_109 high 11 21 31 41\n", "score 'high' is not a number"),
    ("000001_01_01_109 nan 11 21 31 41\n", "not finite"),
    ("000001_01_01_109 0.9 11 21 inf 41\n", "not finite"),
    ("000001_01_01_109 0.9 31 21 11 41\n", "x2 < x1"),
    ("000001_01_01_109 0.9 11 41 31 21\n", "y2 < y1"),
    ("000099_01_01_001 0.9 11 21 31 41\n", "image id '000099_01_01_001' is not an image"),
])
def test_bad_valid_line(gt, tmp_path, bad, reason):
    folder = valid_dir(tmp_path, {"lung": LINE, "liver": LINE + bad + LINE})
    with pytest.raises(EvalInputError) as err:
        D.read_detections(folder, gt)
    message = str(err.value)
    assert f"{folder / 'comp4_det_test_liver.txt'}:2:" in message and reason in message


def test_valid_unknown_class_and_missing_files(gt, tmp_path):
    folder = valid_dir(tmp_path, {"liver": LINE, "kidney": LINE})
    with pytest.raises(EvalInputError) as err:
        D.read_detections(folder, gt)
    assert str(folder / "comp4_det_test_kidney.txt") in str(err.value)
    assert "class 'kidney'" in str(err.value) and "not a category" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalInputError, match=r"empty: no comp4_det_test_<class>\.txt files"):
        D.read_detections(empty, gt)
    other = write(tmp_path / "liver.txt", LINE)
    with pytest.raises(EvalInputError, match=r"liver\.txt: not named comp4_det_test_"):
        D.read_detections(other, gt, "darknet-valid")


def test_valid_ambiguous_image_id(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.1.png"}, {"id": 2, "file_name": "a.2.png"}],
           "categories": [{"id": 1, "name": "lesion"}]}
    folder = valid_dir(tmp_path, {"lesion": "a 0.5 1 1 2 2\n"})
    with pytest.raises(EvalInputError, match=r"lesion\.txt:1: image id 'a' matches several"):
        D.read_detections(folder, ground_truth_from_dict(doc))
