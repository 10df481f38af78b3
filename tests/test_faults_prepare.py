"""Faults and bad input around `lesion prepare` (issue 12): a read-only or full OUT, a moved or
copied prepared folder, cut-short or corrupt PNGs, header-only and wrong-header CSVs, a missing
Images_png/, --ratios that do not add up and a --spacing that would exhaust memory. Each case runs
the real command and asserts the exit code, the message's content and what is (not) on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli.cli import main
from deeplesion_cli.deeplesion import hu, schema
from tests.conftest import write_dataset

GOOD = ("000001_01_01_109.png", "000001_02_01_014.png", "000016_01_01_030.png")
KEY_014 = Path("Images_png") / "000001_02_01" / "014.png"


@pytest.fixture()
def dataset(real_rows, tmp_path):
    return write_dataset(tmp_path / "dl", [r for r in real_rows if r.file_name in GOOD])


def prepare(root, out, *args, split="official"):
    return CliRunner().invoke(main, ["prepare", str(root), str(out), "--task", "universal",
                                     "--split", split, "--workers", "1", *args])


def assert_clean_error(result, code=2):
    """Exit ``code`` with an ``Error:`` line and no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Error: " in result.output and "Traceback" not in result.output


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str):
    """A small tmpfs at ``mountpoint`` (root only); the test is skipped where mounting fails."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


# ------------------------------------------------------------------------ read-only, disk full


@pytest.mark.parametrize("exists", [False, True], ids=["new-out", "existing-out"])
def test_read_only_out_fails_up_front_naming_path_and_errno(dataset, tmp_path, exists):
    # A broken key slice proves the check comes before any image is looked at.
    (dataset / KEY_014).write_bytes(b"not a png")
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        out = mnt / "out"
        if exists:
            out.mkdir()
        done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {done.stderr.strip()}")
        result = prepare(dataset, out)
        assert_clean_error(result)
        assert str(out) in result.output
        assert "Read-only file system (errno EROFS)" in result.output
        assert "014.png" not in result.output  # nothing was decoded
        assert out.exists() == exists and (not exists or not any(out.iterdir()))


def test_immutable_out_fails_up_front(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        result = prepare(dataset, out)
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=False)
    assert_clean_error(result)
    assert f"{out}: cannot write" in result.output and "(errno EPERM)" in result.output


def test_disk_full_keeps_what_was_done_and_a_rerun_finishes(real_rows, tmp_path):
    files = sorted({r.file_name for r in real_rows})[:40]
    root = write_dataset(tmp_path / "dl", [r for r in real_rows if r.file_name in files])
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (1024 - 150) * 1024)  # leave 150 KiB: room for some images
        out = mnt / "out"
        result = prepare(root, out)
        assert_clean_error(result)
        assert str(out) in result.output
        assert "No space left on device (errno ENOSPC)" in result.output
        assert "re-run the same lesion prepare command to finish the job" in result.output
        kept = len(list(out.glob("*/*.png")))
        assert 0 < kept < len(files), kept
        assert not (out / "manifest.json").exists()
        filler.unlink()
        again = prepare(root, out)
        assert again.exit_code == 0, again.output
        assert f"{len(files) - kept} images rendered, {kept} reused" in again.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert sum(c["images"] for c in manifest["counts"].values()) == len(files)
        assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------------ moved, copied folders


def _listed(folder: Path) -> list[str]:
    return [line for name in ("train.txt", "valid.txt", "test.txt")
            for line in (folder / name).read_text().splitlines()]


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_rerun_in_a_moved_or_copied_folder_rewrites_lists_without_rendering(dataset, tmp_path,
                                                                            how):
    first, second = tmp_path / "first", tmp_path / "second"
    assert prepare(dataset, first).exit_code == 0
    (shutil.move if how == "moved" else shutil.copytree)(first, second)
    images = {p: p.stat().st_mtime_ns for p in second.glob("*/*.png")}
    assert all(line.startswith(f"{first}/") for line in _listed(second))

    result = prepare(dataset, second)
    assert result.exit_code == 0, result.output
    assert "is up to date (3 images)" in result.output
    # (the official split puts the three images in test: train.txt and valid.txt are empty)
    assert (f"{second} was moved or copied from {first}: rewrote test.txt, obj.data, data.yaml "
            "for its current location (no image re-rendered)") in result.output
    listed = _listed(second)
    assert len(listed) == 3 and all(line.startswith(f"{second}/") for line in listed)
    assert all(Path(line).is_file() for line in listed)
    data = (second / "obj.data").read_text()
    assert f"train = {second}/train.txt" in data and str(first) not in data
    assert f"path: {json.dumps(str(second))}" in (second / "data.yaml").read_text()
    assert {p: p.stat().st_mtime_ns for p in second.glob("*/*.png")} == images
    assert "inputs" in json.loads((second / "manifest.json").read_text())
    if how == "copied":  # the original is left as it was
        assert all(line.startswith(f"{first}/") for line in _listed(first))
    again = prepare(dataset, second)
    assert "moved or copied" not in again.output and "up to date" in again.output


# ------------------------------------------------------------------ images checked before writing


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_iend(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-12])


@pytest.mark.parametrize("spoil, reason", [
    (_truncate, "truncated PNG: chunk IDAT at byte"),
    (_flip_a_byte, "corrupt PNG: chunk IDAT at byte"),
    (_drop_iend, "without an IEND chunk"),
])
def test_cut_short_or_corrupt_png_stops_before_writing(dataset, tmp_path, spoil, reason):
    spoil(dataset / KEY_014)
    out = tmp_path / "out"
    result = prepare(dataset, out)
    assert_clean_error(result)
    assert "row 2 (line 3), column File_name" in result.output
    assert reason in result.output and str(dataset / KEY_014) in result.output
    assert "nothing was written" in result.output
    assert not out.exists()


def test_broken_neighbour_slice_stops_context_three_before_writing(real_rows, tmp_path):
    rows = [r for r in real_rows if r.file_name in GOOD]
    root = write_dataset(tmp_path / "dl", rows, neighbours=True)
    neighbour = root / "Images_png" / "000001_02_01" / "015.png"
    _truncate(neighbour)
    out = tmp_path / "out"
    result = prepare(root, out, "--context", "3")
    assert_clean_error(result)
    assert f"{neighbour}: truncated PNG" in result.output and not out.exists()


def test_png_check_accepts_a_whole_file(dataset):
    assert hu.check_png_file(dataset / KEY_014) == (512, 512)


# ------------------------------------------------------------------------------- CSV and options


def test_header_only_csv_is_an_error_not_an_empty_folder(tmp_path):
    root = tmp_path / "dl"
    (root / "Images_png").mkdir(parents=True)
    (root / "DL_info.csv").write_bytes(schema.format_csv([]))
    out = tmp_path / "out"
    result = prepare(root, out)
    assert_clean_error(result)
    assert "DL_info.csv: the header but no data rows; nothing to prepare" in result.output
    assert not out.exists()


@pytest.mark.parametrize("edit, words", [
    (lambda h: h.replace("Key_slice_index", "Key_slice"),
     "column 5 is 'Key_slice' where DL_info.csv has 'Key_slice_index'"),
    (lambda h: h.replace(",Train_Val_Test", ""),
     "it has 17 columns, DL_info.csv has 18: column 18 'Train_Val_Test' is missing"),
    (lambda h: h.replace(",", ";"), "its columns are separated by semicolons"),
    (lambda h: h + ",Extra",
     "it has 19 columns, DL_info.csv has 18: column 19 'Extra' comes after 'Train_Val_Test'"),
])
def test_wrong_header_names_the_first_differing_column(dataset, tmp_path, edit, words):
    csv_path = dataset / "DL_info.csv"
    header, rest = csv_path.read_bytes().decode().split("\r\n", 1)
    csv_path.write_bytes((edit(header) + "\r\n" + rest).encode())
    result = prepare(dataset, tmp_path / "out")
    assert_clean_error(result)
    assert "line 1 is not the DL_info.csv header: " + words in result.output
    assert "Patient_gender" not in result.output  # no list of all 18 names
    assert len(result.output.strip().splitlines()) == 1


def test_missing_header_line_is_named(real_rows):
    text = schema.format_csv(real_rows[:2]).decode().split("\r\n", 1)[1]  # the rows only
    with pytest.raises(schema.SchemaError, match="column 1 is '000001_01_01_109.png' where "
                       "DL_info.csv has 'File_name' .the header line seems to be missing"):
        schema.parse_text(text)


@pytest.mark.parametrize("layout, words", [
    ("missing", "Images_png: not found; a DeepLesion folder holds DL_info.csv and Images_png/"),
    ("empty", "Images_png: empty; expected Images_png/<PPPPPP_SS_EE>/<KKK>.png"),
    ("nested", "none of the 3 key slices of DL_info.csv is there (e.g. 000001_01_01/109.png); "
               "it holds Images_png;"),
])
def test_missing_images_folder_is_said_once(dataset, tmp_path, layout, words):
    images = dataset / "Images_png"
    if layout == "missing":
        shutil.rmtree(images)
    elif layout == "empty":
        shutil.rmtree(images)
        images.mkdir()
    else:  # unzipped one level too deep
        images.rename(tmp_path / "inner")
        images.mkdir()
        (tmp_path / "inner").rename(images / "Images_png")
    out = tmp_path / "out"
    result = prepare(dataset, out)
    assert_clean_error(result)
    assert words in result.output
    assert "file not found" not in result.output and len(result.output.splitlines()) == 1
    assert not out.exists()
    skipped = prepare(dataset, out, "--skip-invalid")  # not 3 rejected rows: the same one error
    assert_clean_error(skipped)
    assert words in skipped.output and not out.exists()


@pytest.mark.parametrize("ratios, words", [
    ("0.5,0.3,0.3", "the train, val and test shares sum to 1.1; they must sum to 1"),
    ("7,1.5,1.5", "shares sum to 10"),
    ("0.7,-0.15,0.45", "three non-negative numbers"),
])
def test_ratios_not_summing_to_one_are_refused(dataset, tmp_path, ratios, words):
    result = prepare(dataset, tmp_path / "out", "--ratios", ratios, split="patient")
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_ratios_leaving_a_split_without_patients_are_refused(dataset, tmp_path):
    # The three images belong to two patients: three shares above 0 cannot all be served.
    out = tmp_path / "out"
    result = prepare(dataset, out, "--ratios", "0.6,0.2,0.2", split="patient")
    assert_clean_error(result)
    assert "--ratios 0.6,0.2,0.2: the " in result.output
    assert "no patient (2 patients to share)" in result.output
    assert "a share of 0 to leave a split empty on purpose" in result.output
    assert not out.exists()
    on_purpose = prepare(dataset, out, "--ratios", "1,0,0", split="patient")
    assert on_purpose.exit_code == 0, on_purpose.output
    assert "Warning: the val split has no images" in on_purpose.output
    assert json.loads((out / "manifest.json").read_text())["counts"]["train"]["images"] == 3


def test_tiny_patient_split_gives_every_share_above_zero_a_patient(real_rows):
    from deeplesion_cli.deeplesion import splits

    # Four patients of four types: four strata of one patient, each at midpoint 0.5 (train).
    rows = [dataclasses.replace(real_rows[0], patient_index=p, lesion_type=p) for p in (1, 2, 3, 4)]
    rows.append(dataclasses.replace(real_rows[0], patient_index=4, lesion_type=4))
    split_of = splits.patient_split(rows, (0.7, 0.15, 0.15), seed=0)
    assert sorted(split_of.values()) == ["test", "train", "train", "val"]
    assert split_of[4] == "train"  # the patient with two lesions stays; those with one move
    assert split_of == splits.patient_split(rows, (0.7, 0.15, 0.15), seed=0)
    assert set(splits.patient_split(rows, (1.0, 0.0, 0.0), seed=0).values()) == {"train"}


def test_spacing_that_would_exhaust_memory_is_refused_up_front(dataset, tmp_path):
    out = tmp_path / "out"
    result = prepare(dataset, out, "--spacing", "1e-6")
    assert_clean_error(result)
    assert "--spacing 1e-06: 3 of 3 images would be larger than 8192 px per side" in result.output
    assert re.search(r"row \d \(0000\d\d_0\d_01_\d{3}\.png, 512x512 px of [\d.]+x[\d.]+ mm\) "
                     r"would be \d{9}x\d{9} px", result.output), result.output
    assert "the smallest spacing every image allows is" in result.output
    assert not out.exists()
    smallest = float(result.output.rsplit("allows is ", 1)[1].split(" mm")[0])
    assert 0.01 < smallest < 0.2
    assert "8192 px" in prepare(dataset, out, "--spacing", str(smallest * 0.9)).output
    assert not out.exists()
