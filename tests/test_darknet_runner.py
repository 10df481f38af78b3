"""darknet runner: console parsing (verbatim lines of the three forks from
docs/darknet.md), metrics.csv, finding/identifying the binary, input validation, and
end to end with the real pjreddie darknet (/usr/bin/darknet, CPU) on a tiny synthetic set.

The darknet steps are kept tiny: a 1-class yolov3-tiny at 128 px, batch 2, 6 iterations
(about 3 s of training and 1 s of prediction on 2 cores).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplesion_cli import runlog
from deeplesion_cli.darknet import log as dlog
from deeplesion_cli.darknet import binary as dbinary
from deeplesion_cli.darknet import inputs as dinputs
from deeplesion_cli.darknet import predict as dpredict
from deeplesion_cli.darknet import process as dprocess
from deeplesion_cli.darknet import train as dtrain
from deeplesion_cli.darknet.errors import (DarknetError, DarknetInputError, DarknetNotFound,
                                           DarknetRunError)
from tests.conftest import darknet_safe_tmp, small_universal_prepared

STOCK_CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")
HAVE_DARKNET = shutil.which("darknet") is not None and STOCK_CFG.is_file()
# Real darknet is part of the test environment (.ci/run installs Debian's package): these tests
# fail, rather than skip, where it is missing.
needs_darknet = pytest.mark.darknet


def test_darknet_is_installed():
    assert HAVE_DARKNET, "pjreddie darknet is missing: apt-get install darknet (as .ci/run does)"
MAX_BATCHES = 6


# ------------------------------------------------------------------------------ verbatim lines

AB_ITERATION = (" 11: 3.626745, 21.365742 avg loss, 0.001000 rate, 0.793119 seconds, 22 images, "
                "0.005550 hours left")
PJ_ITERATION = "20: 13.479471, 27.121952 avg, 0.000010 rate, 0.490081 seconds, 40 images"
HK_ITERATION = ("6: loss=4.656, avg loss=34.464, last=none, best=none, mAP=DISABLED, "
                "rate=0.00100000, load 2=5.1 milliseconds, train=180.4 milliseconds, 12 images, "
                "time remaining=2 seconds")
PJ_REGION = ("Region 16 Avg IOU: -nan, Class: -nan, Obj: -nan, No Obj: 0.410401, .5R: -nan, "
             ".75R: -nan,  count: 0")


def test_alexeyab_iteration_after_clear_screen_and_title():
    # stdout as AB writes it: title after ESC[H ESC[J, ended by BEL, then "\n %d: ..." (5.1)
    raw = ("Loaded: 0.000042 seconds\n\x1b[H\x1b[J11/20: loss=3.6 hours left=0.0\x07\n"
           + AB_ITERATION + "\n").encode()
    lines = dlog.split_text(raw.decode())
    assert lines == ["Loaded: 0.000042 seconds", "11/20: loss=3.6 hours left=0.0", AB_ITERATION]
    events = [dlog.parse_line(line) for line in lines]
    assert events[:2] == [None, None]
    it = events[2]
    assert isinstance(it, dlog.Iteration)
    assert (it.iteration, it.loss, it.avg_loss, it.rate, it.seconds, it.images) == \
        (11, 3.626745, 21.365742, 0.001, 0.793119, 22)
    assert it.seconds_left == pytest.approx(0.005550 * 3600)
    assert it.fork == "alexeyab" and not it.diverged


def test_alexeyab_first_iteration_has_no_estimate():
    it = dlog.parse_line(" 1: 702.5, 702.5 avg loss, 0.000000 rate, 0.2 seconds, 2 images, "
                         "-1.000000 hours left")
    assert it.iteration == 1 and it.seconds_left is None


def test_pjreddie_iteration_and_healthy_nan_region_line():
    it = dlog.parse_line(PJ_ITERATION)
    assert (it.iteration, it.loss, it.avg_loss, it.rate, it.seconds, it.images, it.fork) == \
        (20, 13.479471, 27.121952, 0.00001, 0.490081, 40, "pjreddie")
    assert it.seconds_left is None
    # "-nan" in a Region line is normal in a healthy pjreddie run: neither iteration nor problem
    assert dlog.parse_line(PJ_REGION) is None


def test_hankai_iteration_units_and_colour():
    it = dlog.parse_line(HK_ITERATION)
    assert (it.iteration, it.loss, it.avg_loss, it.rate, it.images, it.fork) == \
        (6, 4.656, 34.464, 0.001, 12, "hankai")
    assert it.seconds == pytest.approx(0.1804) and it.seconds_left == pytest.approx(2.0)
    slow = dlog.parse_line(HK_ITERATION.replace("train=180.4 milliseconds", "train=3.8 seconds")
                           .replace("time remaining=2 seconds", "time remaining=2.5 hours"))
    assert slow.seconds == pytest.approx(3.8) and slow.seconds_left == pytest.approx(9000.0)
    unknown = dlog.parse_line(HK_ITERATION.replace("time remaining=2 seconds",
                                                   "time remaining=unknown"))
    assert unknown.seconds_left is None
    # with colour on: a terminal title (ESC]2;...BEL) and a coloured iteration number
    raw = ("\x1b]2;6/20: loss=4.7 time=2 seconds\x07\x1b[1;37m6\x1b[0m"
           + HK_ITERATION[1:] + "\n").encode()
    splitter = dlog.LineSplitter()
    lines = [line for i in range(len(raw)) for line in splitter.feed(raw[i:i + 1])]
    assert lines + splitter.close() == [HK_ITERATION]
    assert dlog.parse_duration("5.1 milliseconds") == pytest.approx(0.0051)
    assert dlog.parse_duration("1 second") == 1.0 and dlog.parse_duration("unknown") is None


def test_older_hankai_line_without_train_key():
    it = dlog.parse_line("5989: loss=0.444, avg loss=0.329, rate=0.000026, 64.424 milliseconds, "
                         "383296 images, time remaining=7 seconds")
    assert (it.iteration, it.avg_loss, it.images) == (5989, 0.329, 383296)
    assert it.seconds == pytest.approx(0.064424)


@pytest.mark.parametrize("line, diverged", [
    ("19: nan, nan avg, 0.000010 rate, 0.49 seconds, 38 images", True),            # PJ
    ("19: -nan, -nan avg, 0.000010 rate, 0.49 seconds, 38 images", True),
    (" 19: nan, nan avg loss, 0.001 rate, 0.7 seconds, 38 images, 0.01 hours left", True),  # AB
    ("19: loss=nan, avg loss=nan, last=none, best=none, mAP=DISABLED, rate=0.00100000, "
     "load 2=5.1 milliseconds, train=180.4 milliseconds, 38 images, time remaining=2 seconds",
     True),                                                                          # HK
    (" 19: inf, inf avg loss, 0.001 rate, 0.7 seconds, 38 images, 0.01 hours left", True),
    # only the average counts: one NaN loss that the average absorbed is not a failure
    ("19: nan, 27.1 avg, 0.000010 rate, 0.49 seconds, 38 images", False),
    (PJ_ITERATION, False),
])
def test_nan_rule_reads_only_the_average(line, diverged):
    it = dlog.parse_line(line)
    assert isinstance(it, dlog.Iteration)
    assert it.diverged is diverged


def test_map_lines():
    train = dlog.parse_line(" mean_average_precision (mAP@0.50) = 0.954631 ")
    assert train == dlog.MapResult(0.954631, 0.5, "train")
    last = dlog.parse_line(" Last accuracy mAP@0.50 = 95.46 %, best = 95.46 % ")
    assert last.kind == "last" and last.map == pytest.approx(0.9546)
    assert last.best == pytest.approx(0.9546)
    final = dlog.parse_line(" mean average precision (mAP@0.50) = 0.954631, or 95.46 % ")
    assert final == dlog.MapResult(0.954631, 0.5, "map")
    hk = dlog.parse_line("-> mean average precision (mAP@0.50)=95.46%")
    assert hk.kind == "map" and hk.map == pytest.approx(0.9546)
    # `detector map` prints its first class line after a \r rank counter (docs/darknet.md 6.1)
    lines = dlog.split_text(" rank = 0 of ranks = 54 \rclass_id = 0, name = obj, ap = 95.46%   "
                            "\t (TP = 21, FP = 0)\n")
    assert lines[1].startswith("class_id = 0, name = obj")
    assert dlog.parse_line(" calculation mAP (mean average precision)...") is None


@pytest.mark.parametrize("line, kind, path", [
    ("Couldn't open file: /data/run/obj.cfg", "missing-file", "/data/run/obj.cfg"),
    ("Loading weights from /nonexist.weights...tiny", None, None),
    ("Couldn't open file: /nonexist.weights", "missing-file", "/nonexist.weights"),
    ('Cannot load image "/data/prep/train/a.png"', "missing-file", "/data/prep/train/a.png"),
    ('Cannot load image "data/labels/32_0.png"', None, None),  # AB test's font glyphs
    ("Can't open label file. (This can be normal only if you use MSCOCO): /d/train/a.txt",
     "missing-file", "/d/train/a.txt"),
    ("darknet: ./src/parser.c:315: parse_yolo: Assertion `l.outputs == params.inputs' failed.",
     "error", None),
    ("Darknet error location: ./src/parser.c, parse_network_cfg_custom(), line #1348", "error",
     None),
    ("Error: l.outputs == params.inputs, filters= in the [convolutional]-layer doesn't "
     "correspond to classes= or mask= in [yolo]-layer", "error", None),
    ("* Error message:  image filename does not exist", "missing-file", None),
    ("Couldn't find activation function mish, going with ReLU", "error", None),
    ("CUDA status Error: file: ./src/dark_cuda.c : () : line: 39 : CUDA Error: out of memory",
     "out-of-memory", None),
    ("Calloc error - possibly out of CPU RAM ", "out-of-memory", None),
    (" Wrong annotation: class_id = 3. But class_id should be [from 0 to 0], file: /d/a.txt ",
     "bad-data", None),
    # healthy lines
    ("Loaded: 0.000168 seconds", None, None),
    ("Learning Rate: 0.001, Momentum: 0.9, Decay: 0.0005", None, None),
    ("Unused field: 'groups = 2'", None, None),
    (" Warning: You set batch=2 lower than 64! It is recommended to set batch=64 "
     "subdivision=64 ", None, None),
    ("    5 max          2 x 2 / 2    32 x  32 x  64   ->    16 x  16 x  64", None, None),
    ("Total Detection Time: 0.335339 Seconds", None, None),
])
def test_problem_lines(line, kind, path):
    event = dlog.parse_line(line)
    if kind is None:
        assert not isinstance(event, dlog.Problem)
    else:
        assert isinstance(event, dlog.Problem) and event.kind == kind
        if path is not None:
            assert event.path == path


def test_saving_weights_and_splitter_chunking():
    assert dlog.parse_line("Saving weights to /r/backup/tiny_final.weights") == \
        dlog.SavedWeights("/r/backup/tiny_final.weights")
    text = ("a\r\nb\rc\n\n\x1b[H\x1b[J1/6: loss=3.0 hours left=0.0\x07\n" + AB_ITERATION
            + "\nlast line without newline")
    whole = dlog.split_text(text)
    assert whole == ["a", "b", "c", "1/6: loss=3.0 hours left=0.0", AB_ITERATION,
                     "last line without newline"]
    data = text.encode()
    for size in (1, 2, 7):
        splitter = dlog.LineSplitter()
        parts = [line for i in range(0, len(data), size)
                 for line in splitter.feed(data[i:i + size])]
        assert parts + splitter.close() == whole


# ------------------------------------------------------------------------------------- runlog

def test_metrics_writer_header_once_rows_flushed_and_types(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    writer = runlog.MetricsWriter(path)
    writer.write({"step": 1, "epoch": 0.25, "loss": 3.5, "avg_loss": 3.5, "images": 2})
    # flushed: readable while the writer is still open (a crash loses nothing)
    assert runlog.read_metrics(path)[0]["loss"] == 3.5
    writer.write({"step": 2, "loss": float("nan"), "val_mAP50": 0.5})
    writer.close()
    with runlog.MetricsWriter(path) as again:  # appending keeps one header
        again.write({"step": 3})
    text = path.read_text()
    assert text.count("step,epoch") == 1
    assert text.splitlines()[0] == ",".join(runlog.METRICS_COLUMNS)
    rows = runlog.read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert isinstance(rows[0]["step"], int) and isinstance(rows[0]["images"], int)
    assert rows[0]["epoch"] == 0.25 and rows[0]["lr"] is None
    assert math.isnan(rows[1]["loss"]) and rows[1]["val_mAP50"] == 0.5
    assert set(rows[0]) == set(runlog.METRICS_COLUMNS)
    with pytest.raises(KeyError, match="unknown metrics column"):
        runlog.MetricsWriter(path).write({"stepp": 4})


def test_metrics_survive_a_cut_row_and_truncate_for_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    with runlog.MetricsWriter(path) as w:
        for step in range(1, 5):
            w.write({"step": step, "loss": float(step)})
    with open(path, "a") as f:
        f.write("5,0.1,")  # a killed run's half row
    assert [r["step"] for r in runlog.read_metrics(path)] == [1, 2, 3, 4]
    with runlog.MetricsWriter(path) as w:  # the half row is dropped, the next one is whole
        w.write({"step": 5, "loss": 5.0})
    assert [r["step"] for r in runlog.read_metrics(path)] == [1, 2, 3, 4, 5]
    assert "5,0.1,\n" not in path.read_text()
    assert runlog.truncate_metrics(path, 3) == 3
    assert [r["step"] for r in runlog.read_metrics(path)] == [1, 2]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(runlog.MetricsError, match="not a metrics.csv"):
        runlog.MetricsWriter(other)


# ------------------------------------------------------------------------- binary and fork

def test_find_darknet_explicit_bogus_path(tmp_path):
    with pytest.raises(DarknetNotFound) as info:
        dbinary.find_darknet(tmp_path / "no" / "darknet")
    assert "apt-get install darknet" in str(info.value)
    assert "--darknet" in str(info.value)
    not_exec = tmp_path / "darknet"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(DarknetNotFound, match="not an executable"):
        dbinary.find_darknet(not_exec)


def test_find_darknet_without_darknet_on_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DARKNET", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DarknetNotFound) as info:
        dbinary.find_darknet()
    assert "apt-get install darknet" in str(info.value)
    assert "AlexeyAB" in str(info.value)
    monkeypatch.setenv("DARKNET", str(tmp_path / "missing"))
    with pytest.raises(DarknetNotFound, match=r"\$DARKNET"):
        dbinary.find_darknet()


@needs_darknet
def test_find_darknet_env_and_path(monkeypatch):
    real = Path(shutil.which("darknet")).resolve()
    monkeypatch.setenv("DARKNET", str(real))
    assert dbinary.find_darknet() == real
    monkeypatch.delenv("DARKNET")
    assert dbinary.find_darknet() == real
    assert dbinary.find_darknet("darknet") == real         # a name is looked up on PATH


@needs_darknet
def test_detect_fork_real_pjreddie():
    binary = dbinary.find_darknet()
    assert dbinary.detect_fork(binary) == "pjreddie"
    assert dbinary.detect_fork(binary) == "pjreddie"  # cached


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_detect_fork_probe_rules_on_scripted_outputs(tmp_path):
    """The probe rules, on the outputs docs/darknet.md records for the forks we cannot run here."""
    hk = _script(tmp_path / "hk", 'echo "Darknet v5.1-104-gf684e1d7"\necho "  GPU is disabled."\n')
    assert dbinary.detect_fork(hk) == "hankai"
    ab = _script(tmp_path / "ab", 'echo " GPU isn\'t used "\n'
                 'if [ "$1" = version ]; then echo "Not an option: version" >&2; else '
                 'echo "usage: $0 $1 [train/test/valid/demo/map] [data] [cfg] [weights '
                 '(optional)]" >&2; fi\n')
    assert dbinary.detect_fork(ab) == "alexeyab"
    with pytest.raises(DarknetNotFound, match="does not behave like"):
        dbinary.detect_fork(_script(tmp_path / "other", "echo hello\n"))


def test_commands_carry_only_flags_the_fork_knows():
    pj = dtrain.train_command("/d", "pjreddie", "/r/obj.data", "/r/t.cfg")
    assert pj == ["/d", "detector", "train", "/r/obj.data", "/r/t.cfg"]
    with pytest.raises(ValueError, match="no -map"):
        dtrain.train_command("/d", "pjreddie", "/r/obj.data", "/r/t.cfg", map=True)
    ab = dtrain.train_command("/d", "alexeyab", "/r/obj.data", "/r/t.cfg", "/w.conv", map=True,
                              gpus="0,1")
    assert ab == ["/d", "detector", "train", "/r/obj.data", "/r/t.cfg", "/w.conv", "-dont_show",
                  "-map", "-gpus", "0,1"]
    assert dpredict.predict_command("/d", "pjreddie", "/s/p.data", "/t.cfg", "/w", 0.005,
                                    "/s/r.json") == ["/d", "detector", "valid", "/s/p.data",
                                                     "/t.cfg", "/w"]
    hk = dpredict.predict_command("/d", "hankai", "/s/p.data", "/t.cfg", "/w", 0.005,
                                  "/s/r.json")
    assert hk[2] == "test" and hk[6:] == ["-dont_show", "-ext_output", "-thresh", "0.005",
                                          "-out", "/s/r.json"]


# ------------------------------------------------------------------------- a tiny prepared set

def tiny_cfg(path: Path, max_batches: int = MAX_BATCHES, filters: int = 18,
             burn_in: int | None = None) -> Path:
    """A 1-class yolov3-tiny at 128 px made from the stock Debian cfg (batch 2; burn_in half of
    max_batches by default: the rate rises above 0, and no NaN)."""
    burn_in = max(1, max_batches // 2) if burn_in is None else burn_in
    text = STOCK_CFG.read_text()
    subs = [(r"(?m)^batch=1$", "batch=2"), (r"(?m)^width=416$", "width=128"),
            (r"(?m)^height=416$", "height=128"),
            (r"(?m)^max_batches = 500200$", f"max_batches = {max_batches}"),
            (r"(?m)^steps=400000,450000$", f"steps={max(1, int(max_batches * .8))},"
                                           f"{max(1, int(max_batches * .9))}"),
            (r"(?m)^burn_in=1000$", f"burn_in={burn_in}"), (r"(?m)^classes=80$", "classes=1"),
            (r"(?m)^filters=255$", f"filters={filters}"), (r"(?m)^random=1$", "random=0")]
    for pattern, replacement in subs:
        text, n = re.subn(pattern, replacement, text)
        assert n >= 1, pattern
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return darknet_safe_tmp(tmp_path_factory, "darknet")


@pytest.fixture(scope="module")
def prepared(base):
    return small_universal_prepared(base)


@pytest.fixture(scope="module")
def cfg(base):
    return tiny_cfg(base / "cfgs" / "tiny.cfg")


def copy_prepared(prepared: Path, dest: Path) -> Path:
    """A prepared folder whose lists still point at ``prepared``'s images (cheap to alter)."""
    dest.mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt", "obj.names", "obj.data"):
        shutil.copy(prepared / name, dest / name)
    shutil.copytree(prepared / "coco", dest / "coco")
    return dest


def _with_train_list(folder: Path, images: list[str]) -> None:
    (folder / "train.txt").write_text("".join(f"{p}\n" for p in images))


# --------------------------------------------------------------------------------- validation

def test_validate_accepts_the_prepared_folder(prepared, cfg, base):
    summary = dinputs.validate_inputs(prepared, cfg, ["train", "val", "test"],
                                      backup_dir=base / "v-backup", unique_ids=True)
    assert summary.cfg.classes == 1 and summary.cfg.max_batches == MAX_BATCHES
    assert summary.cfg.base == "tiny"
    n_train = len((prepared / "train.txt").read_text().split())
    assert summary.images[str(prepared / "train.txt")] == n_train > 0
    assert (base / "v-backup").is_dir()  # created


def _first_train_image_copy(prepared: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the first training image of ``prepared`` to ``dest`` (no label); return both."""
    first = Path((prepared / "train.txt").read_text().split()[0])
    dest.parent.mkdir()
    shutil.copy(first, dest)
    return first, dest


def test_validate_sixteen_bit_image(prepared, cfg, base):
    folder = copy_prepared(prepared, base / "v16")
    image = base / "v16-img" / "deep_16bit.png"
    image.parent.mkdir()
    Image.fromarray(np.full((128, 128), 33000, np.uint16)).save(image)
    shutil.copy(prepared / "train" / Path((prepared / "train.txt").read_text().split()[0])
                .with_suffix(".txt").name, image.with_suffix(".txt"))
    _with_train_list(folder, [str(image)])
    with pytest.raises(DarknetInputError) as info:
        dinputs.validate_inputs(folder, cfg)
    message = str(info.value)
    assert f"{folder / 'train.txt'}:1: {image}" in message and "16-bit PNG" in message


def test_validate_missing_label_and_missing_image(prepared, cfg, base):
    folder = copy_prepared(prepared, base / "vlabel")
    first, lonely = _first_train_image_copy(prepared, base / "vlabel-img" / "lonely.png")
    ghost = base / "vlabel-img" / "ghost.png"
    _with_train_list(folder, [str(first), str(lonely), str(ghost)])
    with pytest.raises(DarknetInputError) as info:
        dinputs.validate_inputs(folder, cfg)
    message = str(info.value)
    assert f"train.txt:2: {lonely}: no label file {lonely.with_suffix('.txt')}" in message
    assert f"train.txt:3: {ghost}: image does not exist" in message
    assert info.value.problems and len(info.value.problems) == 2


def test_validate_class_id_and_coordinates(prepared, cfg, base):
    folder = copy_prepared(prepared, base / "vclass")
    first, image = _first_train_image_copy(prepared, base / "vclass-img" / "typed.png")
    label = image.with_suffix(".txt")
    label.write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n0 1.5 0.5 0.1 0\n")
    _with_train_list(folder, [str(image)])
    with pytest.raises(DarknetInputError) as info:
        dinputs.validate_inputs(folder, cfg)
    message = str(info.value)
    assert f"{label}:2: class id 1 >= classes=1" in message
    assert f"{label}:3: x_center 1.5 is outside (0, 1]" in message
    assert f"{label}:3: height 0 is outside (0, 1]" in message


def test_validate_raw_in_path_for_pjreddie(prepared, cfg, base):
    folder = copy_prepared(prepared, base / "vraw")
    first, image = _first_train_image_copy(prepared, base / "raw" / "slice.png")
    shutil.copy(first.with_suffix(".txt"), image.with_suffix(".txt"))
    _with_train_list(folder, [str(image)])
    with pytest.raises(DarknetInputError) as info:
        dinputs.validate_inputs(folder, cfg, fork="pjreddie")
    message = str(info.value)
    assert str(image) in message and "'raw'" in message
    assert str(base / "labels" / "slice.txt") in message  # where pjreddie would look
    # AlexeyAB only rewrites /JPEGImages/ and /images/train2017/-style folders: fine there
    dinputs.validate_inputs(folder, cfg, fork="alexeyab")


def test_validate_list_and_cfg_problems(prepared, cfg, base):
    folder = copy_prepared(prepared, base / "vlist")
    first = (prepared / "train.txt").read_text().split()[0]
    (folder / "train.txt").write_text(f"{first}\n\nrelative/x.png\n")
    with pytest.raises(DarknetInputError) as info:
        dinputs.validate_inputs(folder, cfg)
    message = str(info.value)
    assert "train.txt:2: blank line" in message
    assert "train.txt:3: relative/x.png: relative path" in message
    # a cfg pjreddie would silently build differently, and a names file of the wrong length
    bad = base / "cfgs" / "mish.cfg"
    bad.write_text(cfg.read_text().replace("activation=leaky", "activation=mish", 1)
                   .replace("random=0", "random=1", 1))
    (folder / "obj.names").write_text("lesion\nextra\n")
    (folder / "train.txt").write_text(f"{first}\n")
    with pytest.raises(DarknetInputError) as info:
        dinputs.validate_inputs(folder, bad, fork="pjreddie")
    message = str(info.value)
    assert "activation=mish" in message and "random=1" in message
    assert "2 class names, but the cfg" in message


# ------------------------------------------------------------------------- end to end (real)

@pytest.fixture(scope="module")
def trained(prepared, cfg, base):
    start = time.monotonic()
    result = dtrain.train(prepared, cfg, base / "run", show_progress=False)
    seconds = time.monotonic() - start
    print(f"\ndarknet train ({MAX_BATCHES} iterations, 128 px, batch 2): {seconds:.1f} s")
    return result, seconds


@needs_darknet
def test_train_end_to_end(trained, prepared, base):
    result, seconds = trained
    run = base / "run"
    assert result.fork == "pjreddie" and result.run_dir == run
    assert result.final_weights == run / "backup" / "tiny_final.weights"
    assert result.final_weights.stat().st_size > 1000
    assert result.iterations == MAX_BATCHES and math.isfinite(result.avg_loss)
    # the command pjreddie got: no AlexeyAB flags, run-specific obj.data, cfg copy
    assert result.command[1:] == ["detector", "train", str(run / "obj.data"), str(run / "tiny.cfg")]
    data = dict(line.split(" = ") for line in (run / "obj.data").read_text().splitlines())
    assert data["backup"] == str(run / "backup") and data["train"] == str(run / "train.txt")
    assert data["classes"] == "1"
    # metrics.csv: one row per iteration, epochs from the number of training images
    rows = runlog.read_metrics(result.metrics_csv)
    n_train = len((prepared / "train.txt").read_text().split())
    assert [r["step"] for r in rows] == list(range(1, MAX_BATCHES + 1))
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["avg_loss"])
        assert r["images"] == 2 * r["step"]
        assert r["epoch"] == pytest.approx(r["images"] / n_train)
        assert r["seconds"] > 0 and r["images_per_s"] == pytest.approx(2 / r["seconds"])
        assert r["val_mAP50"] is None
    assert rows[-1]["avg_loss"] == pytest.approx(result.avg_loss)
    log = (run / "darknet.log").read_text()
    assert log.startswith("$ ") and f"{MAX_BATCHES}: " in log
    assert "\x1b" not in log and "\r" not in log
    assert not any(run.glob("*.jpg")) and seconds < 60


ARGS_KEYS = {"tool", "version", "command", "backend", "prepared", "cfg", "weights", "darknet",
             "gpus", "map", "resumed", "flags", "outputs", "options", "net"}
OPTION_KEYS = {"arch", "width", "height", "channels", "batch", "subdivisions", "max_batches",
               "burn_in", "learning_rate", "steps", "scales", "policy", "classes"}


@needs_darknet
def test_train_writes_args_json(trained, prepared, base):
    """args.json: what lesion report reads instead of darknet.log and the cfg (docs/formats.md)."""
    from deeplesion_cli import __version__

    result, _ = trained
    args = json.loads((result.run_dir / "args.json").read_text())
    assert set(args) == ARGS_KEYS
    assert (args["tool"], args["version"], args["command"], args["backend"]) == \
        ("lesion", __version__, "train yolo", "darknet")
    assert args["prepared"] == str(prepared.resolve()) and args["cfg"] == str(result.cfg_path)
    assert args["weights"] is None and args["gpus"] is None
    assert args["map"] is False and args["resumed"] is False
    assert args["darknet"] == {"binary": str(dbinary.find_darknet()), "fork": "pjreddie"}
    options = args["options"]
    assert set(options) == OPTION_KEYS
    assert options["arch"] == "tiny"  # no "# lesion: <arch> for" header: the cfg's file stem
    assert (options["width"], options["height"], options["channels"]) == (128, 128, 3)
    assert (options["batch"], options["subdivisions"]) == (2, 1)
    assert options["max_batches"] == MAX_BATCHES and options["burn_in"] == MAX_BATCHES // 2
    assert options["steps"] == [int(MAX_BATCHES * .8), int(MAX_BATCHES * .9)]
    assert options["scales"] == [0.1, 0.1] and options["policy"] == "steps"
    assert options["learning_rate"] == 0.001 and options["classes"] == 1
    # net: every [net] key of the cfg, its value as written (darknet drops the spaces)
    assert args["net"]["max_batches"] == str(MAX_BATCHES) and args["net"]["width"] == "128"
    assert args["net"]["saturation"] == "1.5" and len(args["net"]) == 17


def test_args_json_arch_from_the_lesion_header_and_resume_keeps_weights(tmp_path):
    from deeplesion_cli.darknet import runargs

    cfg = tmp_path / "yolo.cfg"
    cfg.write_text("# lesion: yolov4-tiny for 2 class(es) at 416 x 416, written by x\n\n"
                   "[net]\nwidth=416\nheight=416\nmax_batches=100\n\n[yolo]\nclasses=2\n")
    options, net = runargs.cfg_options(cfg, classes=2)
    assert options["arch"] == "yolov4-tiny" and options["classes"] == 2
    assert (options["width"], options["height"], options["max_batches"]) == (416, 416, 100)
    assert options["burn_in"] is None and options["steps"] is None and options["policy"] is None
    assert net == {"width": "416", "height": "416", "max_batches": "100"}
    common = dict(prepared=tmp_path, cfg_path=cfg, binary="/usr/bin/darknet", fork="alexeyab",
                  gpus="0", map=True, classes=2)
    runargs.write_run_args(tmp_path, weights=tmp_path / "x.conv.29", resumed=False, **common)
    # a resume keeps the weights the run started from (the ones it resumes from are its own)
    doc = runargs.write_run_args(tmp_path, weights=None, resumed=True, **common)
    assert doc["weights"] == str(tmp_path / "x.conv.29") and doc["resumed"] is True
    assert json.loads((tmp_path / "args.json").read_text()) == doc
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


@needs_darknet
def test_judge_training_on_the_real_log(trained):
    result, _ = trained
    outcome = dprocess.outcome_from_log(result.log_path)
    assert [it.iteration for it in outcome.iterations] == list(range(1, MAX_BATCHES + 1))
    assert dtrain.judge_training(outcome, MAX_BATCHES, result.final_weights) == []
    # the same log judged against a longer schedule: it stopped short
    reasons = dtrain.judge_training(outcome, MAX_BATCHES + 4, result.final_weights)
    assert reasons == [f"training stopped at iteration {MAX_BATCHES} of max_batches="
                       f"{MAX_BATCHES + 4}"]
    missing = result.final_weights.with_name("other_final.weights")
    assert any("no final weights" in r for r in
               dtrain.judge_training(outcome, MAX_BATCHES, missing))
    outcome.returncode = 0
    outcome.iterations.clear()
    assert "darknet printed no training iteration" in \
        dtrain.judge_training(outcome, MAX_BATCHES, result.final_weights)


@needs_darknet
def test_predict_end_to_end(trained, prepared, base):
    from deeplesion_cli.formats.groundtruth import load_ground_truth
    from deeplesion_cli.formats.detections import read_detections

    result, _ = trained
    scratch_root = Path(tempfile.gettempdir())
    before = set(scratch_root.glob("lesion-darknet-predict-*"))
    start = time.monotonic()
    out = dpredict.predict(prepared, result.cfg_path, result.final_weights, split="test",
                           out_json=base / "pred" / "yolo_test.json", show_progress=False)
    seconds = time.monotonic() - start
    print(f"\ndarknet predict (test split): {seconds:.1f} s")
    assert out == base / "pred" / "yolo_test.json"
    gt = load_ground_truth(prepared / "coco" / "test.json")
    dets = read_detections(out, gt, fmt="coco")
    document = json.loads(out.read_text())
    assert isinstance(document, list) and len(document) == len(dets)
    if len(dets):
        assert set(np.unique(dets.image)) <= set(range(gt.n_images))
        assert (dets.score >= 0.005).all() and (dets.box_xywh[:, 2:] >= 0).all()
        assert set(dets.category.tolist()) == {1}
    # the scratch folder is gone after success
    after = set(scratch_root.glob("lesion-darknet-predict-*"))
    assert after <= before
    assert seconds < 30


@needs_darknet
def test_predict_on_a_list_shorter_than_four_images(trained, prepared, base):
    """pjreddie's `detector valid` segfaults on fewer than 4 images; the runner pads the list."""
    from deeplesion_cli.formats.groundtruth import load_ground_truth
    from deeplesion_cli.formats.detections import read_detections

    result, _ = trained
    n_val = len((prepared / "valid.txt").read_text().split())
    assert 0 < n_val < 4  # what this test is about (synthetic set of 4 patients)
    out = dpredict.predict(prepared, result.cfg_path, result.final_weights, split="val",
                           out_json=base / "pred" / "yolo_val.json", show_progress=False)
    gt = load_ground_truth(prepared / "coco" / "val.json")
    dets = read_detections(out, gt, fmt="coco")
    assert "lesion_padding" not in out.read_text()
    assert set(np.unique(dets.image)) <= set(range(gt.n_images))


@needs_darknet
def test_train_refuses_missing_image_before_launching(prepared, cfg, base):
    folder = copy_prepared(prepared, base / "missing-image")
    images = (prepared / "train.txt").read_text().split()
    ghost = str(Path(images[0]).with_name("not_there.png"))
    _with_train_list(folder, images[:3] + [ghost])
    run = base / "run-missing"
    with pytest.raises(DarknetInputError) as info:
        dtrain.train(folder, cfg, run, show_progress=False)
    assert f"train.txt:4: {ghost}: image does not exist" in str(info.value)
    assert not (run / "darknet.log").exists()  # darknet never started
    assert not (run / "args.json").exists()


@needs_darknet
def test_bad_cfg_is_refused_before_launch_and_real_darknet_failures_are_judged(prepared, base):
    # filters=21 before a 1-class [yolo]: the cfg check refuses it, naming both lines...
    bad = tiny_cfg(base / "cfgs-bad" / "tiny.cfg", filters=21)
    run = base / "run-bad"
    with pytest.raises(DarknetInputError, match=r"tiny.cfg:\d+: filters=21 before the \[yolo\]"):
        dtrain.train(prepared, bad, run, show_progress=False)
    assert not (run / "darknet.log").exists()
    # ...and had it reached darknet, pjreddie aborts on an assertion (rc 134) while writing no
    # weights: run the real binary on it directly and judge what it did.
    scratch = base / "run-bad-direct"
    scratch.mkdir()
    data = scratch / "obj.data"
    data.write_text(f"classes = 1\ntrain = {prepared / 'train.txt'}\nvalid = "
                    f"{prepared / 'valid.txt'}\nnames = {prepared / 'obj.names'}\n"
                    f"backup = {scratch}\n")
    cmd = dtrain.train_command(dbinary.find_darknet(), "pjreddie", data, bad)
    outcome = dprocess.run_darknet(cmd, scratch, scratch / "darknet.log")
    reasons = dtrain.judge_training(outcome, MAX_BATCHES, scratch / "tiny_final.weights")
    assert any("SIGABRT (exit status 134" in r for r in reasons)
    assert any("Assertion" in r for r in reasons)
    assert any("no training iteration" in r for r in reasons)
    assert outcome.tail and "Assertion" in outcome.tail[-1]


@needs_darknet
def test_a_run_that_never_leaves_its_warm_up_fails(prepared, base):
    """The stock burn_in=1000 in a 4-iteration run: darknet prints `0.000000 rate` throughout
    and exits 0 with final weights; lesion calls it a failure and names burn_in."""
    cfg = tiny_cfg(base / "cfgs-burn" / "tiny.cfg", max_batches=4, burn_in=1000)
    run = base / "run-burn"
    with pytest.raises(DarknetRunError) as caught:
        dtrain.train(prepared, cfg, run, show_progress=False)
    message = str(caught.value)
    assert "the learning rate was 0 at every iteration (1-4)" in message
    assert "burn_in=1000" in message and "--burn-in" in message
    assert (run / "backup" / "tiny_final.weights").is_file()  # darknet itself saw no problem
    assert json.loads((run / "args.json").read_text())["options"]["burn_in"] == 1000
    rows = runlog.read_metrics(run / "metrics.csv")
    assert [r["lr"] for r in rows] == [0.0] * 4


def test_judge_training_zero_rate_rule_reads_every_iteration(tmp_path):
    from deeplesion_cli.darknet.process import RunOutcome

    def outcome(rates):
        out = RunOutcome(returncode=0, log_path=tmp_path / "darknet.log")
        for i, rate in enumerate(rates, 1):
            out.record(f"{i}: 5.0, 6.0 avg, {rate:f} rate, 0.3 seconds, {2 * i} images")
        return out

    final = tmp_path / "x_final.weights"
    final.write_bytes(b"w")
    assert dtrain.judge_training(outcome([0, 0, 0.000001]), 3, final, burn_in=3) == []
    reasons = dtrain.judge_training(outcome([0, 0, 0]), 3, final, burn_in=0)
    assert reasons == ["the learning rate was 0 at every iteration (1-3), so nothing was "
                       "learnt: learning_rate is 0 or the policy brought it to 0"]


@needs_darknet
def test_map_needs_alexeyab_and_resume_rules(trained, prepared, cfg, base):
    with pytest.raises(DarknetError, match="needs AlexeyAB or hank-ai"):
        dtrain.train(prepared, cfg, base / "run-map", map=True, show_progress=False)
    result, _ = trained
    # a fresh run into a folder that holds weights is refused; resuming a finished run too
    with pytest.raises(DarknetError, match="already holds trained weights"):
        dtrain.train(prepared, cfg, result.run_dir, show_progress=False)
    with pytest.raises(DarknetError, match="already reached max_batches"):
        dtrain.train(prepared, cfg, result.run_dir, resume=True, show_progress=False)
    # darknet's own count in the weights header: 6 iterations x 2 images
    assert dtrain.weights_images_seen(result.final_weights) == 2 * MAX_BATCHES
    with pytest.raises(DarknetError, match="nothing to resume from"):
        dtrain.train(prepared, cfg, base / "run-empty", resume=True, show_progress=False)


@needs_darknet
def test_resume_with_more_iterations(trained, prepared, base):
    result, _ = trained
    run = base / "run-resumed"
    shutil.copytree(result.run_dir, run)
    longer = tiny_cfg(base / "cfgs-longer" / "tiny.cfg", max_batches=MAX_BATCHES + 2)
    resumed = dtrain.train(prepared, longer, run, resume=True, show_progress=False)
    assert resumed.first_iteration == MAX_BATCHES + 1
    assert resumed.iterations == MAX_BATCHES + 2
    assert resumed.command[-1] == str(run / "backup" / "tiny_final.weights")
    rows = runlog.read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, MAX_BATCHES + 3))
    assert (run / "darknet.log").read_text().count("$ ") == 2  # both runs logged
    args = json.loads((run / "args.json").read_text())  # rewritten by the resume
    assert args["resumed"] is True and args["cfg"] == str(run / "tiny.cfg")
    assert args["options"]["max_batches"] == MAX_BATCHES + 2 and args["weights"] is None


def test_result_json_check_matches_frames_by_filename(tmp_path):
    """AlexeyAB / hank-ai `detector test -out` output (docs/darknet.md 8.1): every listed image must
    have a frame, matched by file name (frame ids shift when a path is split)."""
    listing = tmp_path / "test.txt"
    listing.write_text("/p/test/a.png\n/p/test/b.png\n")
    result = tmp_path / "result.json"
    frame = ('{\n "frame_id":%d, \n "filename":"%s", \n "objects": [ \n {"class_id":0, '
             '"name":"lesion", "relative_coordinates":{"center_x":0.5, "center_y":0.5, '
             '"width":0.1, "height":0.1}, "confidence":0.9} \n ] \n}')
    result.write_text("[\n" + frame % (1, "/p/test/b.png") + ", \n"
                      + frame % (2, "/p/test/a.png") + "\n]")
    assert dpredict._check_result_json(result, listing) == []
    result.write_text("[\n" + frame % (1, "/p/test/a.png") + "\n]")
    assert dpredict._check_result_json(result, listing) == [
        "1 of 2 listed images are missing from result.json (first: /p/test/b.png)"]
    result.write_text("[\n" + frame % (1, "/p/test/a.png"))  # a crash leaves no closing ]
    assert "not valid JSON" in dpredict._check_result_json(result, listing)[0]
