"""Bad input to `lesion prepare`: each case names row, column, value and reason, exits 2 and
writes nothing; --skip-invalid prepares the rest and lists every rejected row."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deeplesion_cli.cli import main
from deeplesion_cli.deeplesion import schema
from tests.conftest import write_dataset

GOOD = ("000001_01_01_109.png", "000001_02_01_014.png", "000016_01_01_030.png")


@pytest.fixture()
def dataset(real_rows, tmp_path):
    rows = [r for r in real_rows if r.file_name in GOOD]
    return write_dataset(tmp_path / "dl", rows), rows


def replace_line(root, file_name, old, new):
    """Edit the first CSV line of ``file_name`` textually, as a broken file would look."""
    csv_path = root / "DL_info.csv"
    lines = csv_path.read_bytes().decode().split("\r\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(file_name))
    assert old in lines[index]
    lines[index] = lines[index].replace(old, new, 1)
    csv_path.write_bytes("\r\n".join(lines).encode())
    return index  # 0-based line index = 1-based data row number


def run_prepare(root, out, *args):
    return CliRunner().invoke(main, ["prepare", str(root), str(out), "--task", "universal",
                                     "--split", "official", "--workers", "1", *args])


CASES = [
    # (what to replace in row 000001_02_01_014, column named, words of the reason)
    ('",F,72,3', '",F,72', "(row)", "expected 18 columns, found 17"),
    (',14,"224.826', ',1x4,"224.826', "Key_slice_index", "cannot parse"),
    ('"217.396, 284.296, 233.978, 310.294"', '"917.396, 284.296, 933.978, 310.294"',
     "Bounding_boxes", "entirely outside the 512x512 image"),
    ('"217.396, 284.296, 233.978, 310.294"', '"217.396, 284.296, 217.396, 310.294"',
     "Bounding_boxes", "non-positive width or height"),
    ("000001_02_01_014.png,1,2,1,14", "000001_02_01_014.png,1,2,1,15", "File_name",
     "inconsistent with"),
    ('",3,0,"8, 23"', '",0,0,"8, 23"', "Coarse_lesion_type", "unknown lesion type"),
    ('",F,72,3', '",F,72,7', "Train_Val_Test", "unknown split code"),
]


@pytest.mark.parametrize("old, new, column, reason", CASES)
def test_bad_row_stops_before_writing(dataset, tmp_path, old, new, column, reason):
    root, _ = dataset
    row = replace_line(root, "000001_02_01_014.png", old, new)
    out = tmp_path / "out"
    result = run_prepare(root, out)
    assert result.exit_code == 2, result.output
    assert f"row {row} (line {row + 1}), column {column}" in result.output
    assert reason in result.output
    assert "nothing was written" in result.output
    assert not out.exists()


def _png_missing(path):
    path.unlink()


def _png_junk(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")


def _png_8bit(path):
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(path)


def _png_wrong_size(path):
    Image.fromarray(np.zeros((256, 256), np.uint16)).save(path)


@pytest.mark.parametrize("spoil, column, reason", [
    (_png_missing, "File_name", "file not found"),
    (_png_junk, "File_name", "unreadable image"),
    (_png_8bit, "File_name", "not a 16-bit grayscale PNG (PIL mode L)"),
    (_png_wrong_size, "Image_size", "is 256x256 pixels"),
])
def test_bad_image_stops_before_writing(dataset, tmp_path, spoil, column, reason):
    root, rows = dataset
    spoil(root / "Images_png" / "000001_02_01" / "014.png")
    out = tmp_path / "out"
    result = run_prepare(root, out)
    assert result.exit_code == 2, result.output
    assert f"row 2 (line 3), column {column}" in result.output
    assert reason in result.output and "014.png" in result.output
    assert not out.exists()


def test_many_errors_show_twenty_then_a_count(real_rows, tmp_path):
    rows = [dataclasses.replace(r, split_code=5) for r in real_rows[:30]]
    root = tmp_path / "dl"
    root.mkdir()
    (root / "DL_info.csv").write_bytes(schema.format_csv(rows))
    result = run_prepare(root, tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.count("unknown split code") == 20
    assert "... and 10 more" in result.output


def test_skip_invalid_prepares_the_rest_and_lists_rejections(dataset, tmp_path):
    root, rows = dataset
    replace_line(root, "000001_02_01_014.png", ",14,", ",1x4,")
    (root / "Images_png" / "000016_01_01" / "030.png").unlink()
    out = tmp_path / "out"
    result = run_prepare(root, out, "--skip-invalid")
    assert result.exit_code == 0, result.output
    rejected = list(csv.DictReader(io.StringIO((out / "rejected.csv").read_text())))
    assert [(r["row"], r["column"]) for r in rejected] == [
        ("2", "Key_slice_index"), ("3", "File_name"), ("4", "File_name")]
    assert rejected[0]["value"] == "1x4" and "cannot parse" in rejected[0]["reason"]
    assert "030.png: file not found" in rejected[1]["reason"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["rejected"] == 3 and manifest["rows"]["used"] == 1
    assert manifest["counts"]["test"]["images"] == 1
    assert sorted(p.name for p in (out / "test").iterdir()) == [
        "000001_01_01_109.png", "000001_01_01_109.txt"]


def test_box_crossing_the_edge_is_clipped_and_counted(dataset, tmp_path):
    root, _ = dataset
    replace_line(root, "000001_02_01_014.png", '"217.396, 284.296, 233.978, 310.294"',
                 '"-4, 284.296, 233.978, 530"')
    out = tmp_path / "out"
    assert run_prepare(root, out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["boxes_clipped"] == 1
    doc = json.loads((out / "coco" / "test.json").read_text())
    ann = next(a for a in doc["annotations"] if a["csv_row"] == 2)
    # 1-based -4 -> 0-based -5 -> clipped to 0; 530 -> 529 -> clipped to 511 (last pixel)
    assert ann["bbox"] == pytest.approx([0.0, 283.296, 232.978, 511 - 283.296])
    assert ann["clipped"] is True
