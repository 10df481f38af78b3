"""`lesion prepare` on synthetic and real-row data sets: COCO checked with pycocotools, darknet
files, splits, pixel options, re-runs and interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from deeplesion_cli.deeplesion import hu, schema
from deeplesion_cli.prepare import PrepareOptions, prepare
from tests.conftest import write_dataset

UNIVERSAL = PrepareOptions(task="universal", split="official")


def run(root, out, options=UNIVERSAL, workers=1):
    return prepare(root, out, options, workers=workers, show_progress=False)


@pytest.fixture(scope="module")
def universal(synth_set, tmp_path_factory):
    root, synthesized = synth_set
    out = tmp_path_factory.mktemp("universal") / "prepared"
    return root, synthesized.rows, out, run(root, out, workers=2)


def test_pycocotools_loads_coco_and_annotations_match_the_csv(universal):
    root, rows, out, result = universal
    by_row = {r.row: r for r in rows}
    seen = set()
    for split in ("train", "val", "test"):
        api = COCO(str(out / "coco" / f"{split}.json"))
        for ann in api.loadAnns(api.getAnnIds()):
            row = by_row[ann["csv_row"]]
            image = api.loadImgs(ann["image_id"])[0]
            assert image["file_name"] == row.file_name
            assert (image["width"], image["height"]) == tuple(row.image_size_px)
            assert row.split == split == image["official_split"]
            x1, y1, x2, y2 = row.box_xyxy_px0()
            assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-9)
            assert ann["area"] == pytest.approx((x2 - x1) * (y2 - y1))
            assert ann["category_id"] == 1 and api.loadCats(1)[0]["name"] == "lesion"
            seen.add(row.row)
    kept = {r.row for r in rows if not r.possibly_noisy}
    assert seen == kept and len({r.row for r in rows}) > len(kept)  # noisy rows left out
    assert result.manifest["rows"]["excluded_noisy"] == len(rows) - len(kept)
    assert result.manifest["rows"]["used"] == len(kept)


def test_darknet_files_point_at_every_image_and_label(universal):
    root, rows, out, result = universal
    data = dict(line.split(" = ") for line in (out / "obj.data").read_text().splitlines())
    assert data == {"classes": "1", "train": str(out / "train.txt"), "valid": str(out / "valid.txt"),
                    "names": str(out / "obj.names"), "backup": str(out / "backup")}
    assert (out / "backup").is_dir() and (out / "obj.names").read_text() == "lesion\n"
    for split, list_name in (("train", "train.txt"), ("val", "valid.txt"), ("test", "test.txt")):
        listed = (out / list_name).read_text().splitlines()
        assert listed == sorted(str(p) for p in (out / split).glob("*.png"))
        assert len(listed) == result.manifest["counts"][split]["images"] > 0
        for line in listed:
            image = Image.open(line)
            assert image.mode == "L"
            labels = Path(line).with_suffix(".txt").read_text().splitlines()
            assert labels and all(l.startswith("0 ") for l in labels)
    yaml = (out / "data.yaml").read_text()
    assert f'path: "{out}"' in yaml and "nc: 1" in yaml and '0: "lesion"' in yaml


def test_image_pixels_are_the_windowed_key_slice(universal):
    root, rows, out, _ = universal
    row = next(r for r in rows if r.split == "test" and not r.possibly_noisy)
    stored = hu.read_png_u16(row.slice_path(root / "Images_png", row.key_slice_index))
    expected = hu.window_hu(hu.png_u16_to_hu(stored), (-1024, 3071))
    got = np.asarray(Image.open(out / "test" / row.file_name))
    assert np.array_equal(got, expected)


def test_typed_patient_split_has_no_patient_overlap(synth_set, tmp_path):
    root, synthesized = synth_set
    result = run(root, tmp_path / "typed", PrepareOptions(seed=3))
    patients = {}
    for split in ("train", "val", "test"):
        doc = json.loads((tmp_path / "typed" / "coco" / f"{split}.json").read_text())
        patients[split] = {im["patient_index"] for im in doc["images"]}
        assert all(a["lesion_type"] in range(1, 9) for a in doc["annotations"])
        assert all(a["category_id"] == a["lesion_type"] for a in doc["annotations"])
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    typed = {r.patient_index for r in synthesized.rows if r.lesion_type > 0 and not r.possibly_noisy}
    assert set().union(*patients.values()) == typed
    assert result.manifest["rows"]["excluded_untyped"] == sum(
        1 for r in synthesized.rows if r.lesion_type == -1 and not r.possibly_noisy)
    assert result.manifest["options"]["split"] == "patient"


def test_patient_split_is_stratified_and_seeded(real_rows):
    from deeplesion_cli.deeplesion import splits

    typed = [r for r in real_rows if r.lesion_type > 0]
    a = splits.patient_split(typed, (0.7, 0.15, 0.15), seed=1)
    assert a == splits.patient_split(typed, (0.7, 0.15, 0.15), seed=1)
    assert a != splits.patient_split(typed, (0.7, 0.15, 0.15), seed=2)
    lesions = {s: sum(1 for r in typed if a[r.patient_index] == s) for s in ("train", "val", "test")}
    assert 0.55 < lesions["train"] / len(typed) < 0.85
    assert lesions["val"] > 0 and lesions["test"] > 0


def test_three_windows_stack_as_rgb_and_dicom_uses_each_rows_window(synth_set, tmp_path):
    root, synthesized = synth_set
    options = PrepareOptions(task="universal", split="official",
                             windows=((-1024.0, 3071.0), (-175.0, 275.0), "dicom"))
    run(root, tmp_path / "rgb", options)
    row = next(r for r in synthesized.rows if not r.possibly_noisy)
    got = np.asarray(Image.open(tmp_path / "rgb" / row.split / row.file_name))
    assert got.shape == (row.image_size_px[1], row.image_size_px[0], 3)
    slice_hu = hu.png_u16_to_hu(hu.read_png_u16(row.slice_path(root / "Images_png",
                                                                row.key_slice_index)))
    for channel, window in enumerate([(-1024, 3071), (-175, 275), row.dicom_window_hu]):
        assert np.array_equal(got[..., channel], hu.window_hu(slice_hu, window))


def test_context_three_uses_neighbours_and_falls_back_to_the_key_slice(real_rows, tmp_path):
    # 000001_01_01_109 has neighbours 108 and 110 on disk; remove 110 to force the fallback.
    rows = [r for r in real_rows if r.file_name == "000001_01_01_109.png"]
    root = write_dataset(tmp_path / "dl", rows, neighbours=True)
    (root / "Images_png" / "000001_01_01" / "110.png").unlink()
    run(root, tmp_path / "ctx", PrepareOptions(task="universal", split="official", context=3,
                                               windows=((-1100.0, 500.0),)))
    got = np.asarray(Image.open(tmp_path / "ctx" / "test" / "000001_01_01_109.png"))
    # write_dataset offsets each neighbour by 100 HU per slice: air is -1100 on 108, -1000 on 109.
    air = got[0, 0]
    assert air.tolist() == [0, 16, 16]  # (-1100 +1100)/1600*255 = 0; (-1000+1100)/1600*255 = 15.9
    lesion = got[int(rows[0].box_xyxy_px0()[1]) + 3, int(rows[0].box_xyxy_px0()[0]) + 3]
    # 300 HU on 108: 1400/1600*255 = 223.1; 400 HU on 109 (and 110's stand-in): 239.1
    assert lesion.tolist() == [223, 239, 239]


def test_spacing_resamples_images_and_boxes(real_rows, tmp_path):
    rows = [r for r in real_rows if r.file_name == "000020_01_01_066.png"]  # 768 px, 0.455729 mm
    root = write_dataset(tmp_path / "dl", rows)
    run(root, tmp_path / "sp", PrepareOptions(task="universal", split="official", spacing_mm=0.8))
    doc = json.loads((tmp_path / "sp" / "coco" / "val.json").read_text())
    (image,) = doc["images"]
    size = round(768 * 0.455729 / 0.8)  # 437.5 -> 438
    assert (image["width"], image["height"]) == (size, size)
    assert image["spacing_mm"] == pytest.approx([0.455729 * 768 / size] * 2)
    s = size / 768
    x1, y1, x2, y2 = rows[0].box_xyxy_px0()
    expected = [(x1 + 0.5) * s - 0.5, (y1 + 0.5) * s - 0.5, (x2 - x1) * s, (y2 - y1) * s]
    assert doc["annotations"][0]["bbox"] == pytest.approx(expected)
    assert Image.open(tmp_path / "sp" / "val" / "000020_01_01_066.png").size == (size, size)


def test_rerun_does_no_work_and_changed_options_clean_up(synth_set, tmp_path):
    root, _ = synth_set
    out = tmp_path / "out"
    first = run(root, out)
    assert first.rendered > 0 and not first.up_to_date
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run(root, out)
    assert again.up_to_date and again.rendered == 0 and again.reused == first.rendered
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    typed = run(root, out, PrepareOptions())  # other split and classes: labels change
    stems = {p.name for p in out.glob("*/*.png")}
    expected = sum(typed.manifest["counts"][s]["images"] for s in ("train", "val", "test"))
    assert len(stems) == expected < first.manifest["rows"]["used"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes().replace(str(folder).encode(), b"OUT")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_interrupted_prepare_then_rerun_equals_a_clean_run(real_rows, tmp_path):
    root = write_dataset(tmp_path / "dl", real_rows)
    command = [sys.executable, "-m", "deeplesion_cli", "prepare", str(root), "--task",
               "universal", "--split", "official", "--workers", "2"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(command[:5] + [str(clean)] + command[5:], check=True, capture_output=True)
    process = subprocess.Popen(command[:5] + [str(killed)] + command[5:], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(killed.glob("*/*.png"))) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    partial = len(list(killed.glob("*/*.png")))
    assert 150 <= partial < len({r.file_name for r in real_rows}) - 50, "not killed midway"
    assert not (killed / "manifest.json").exists()
    finished = subprocess.run(command[:5] + [str(killed)] + command[5:], check=True,
                              capture_output=True, text=True)
    assert "reused from an earlier run" in finished.stdout
    assert _tree(killed) == _tree(clean)
