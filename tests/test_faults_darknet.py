"""Faults of the darknet path (issue 12: items 4, 7, 8, 9, 10) driven through the real commands
with Debian's real darknet (/usr/bin/darknet, pjreddie, CPU): a moved prepared folder, weights
that are not weights of the cfg, a finished run's weights, SIGTERM / SIGHUP to a running
``lesion train yolo``, and a NaN loss.

Every darknet run here is a 1-class yolov3-tiny at 64 px (``fast_cfg``), a few iterations each,
except the SIGTERM test, which trains past iteration 100 (where pjreddie saves its first
``.backup``) so that ``--resume`` has something to continue from.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli import runlog
from deeplesion_cli.cli import main
from deeplesion_cli.darknet import inputs as dinputs
from deeplesion_cli.darknet import weights as dweights
from deeplesion_cli.darknet.cfg import parse_cfg
from deeplesion_cli.darknet.process import RunOutcome
from deeplesion_cli.darknet.train import judge_training
from tests.test_darknet_runner import tiny_cfg
from tests.conftest import darknet_safe_tmp, small_universal_prepared

needs_darknet = pytest.mark.darknet
REPO = Path(__file__).resolve().parents[1]
ITERATION = re.compile(r"(?m)^(\d+): \S+, \S+ avg, ")


def fast_cfg(path: Path, max_batches: int, size: int = 64, learning_rate: float | None = None,
             burn_in: int | None = None) -> Path:
    """:func:`tiny_cfg` at ``size`` px with 1 image per iteration (pjreddie: ~0.05 s each)."""
    tiny_cfg(path, max_batches=max_batches, burn_in=burn_in)
    text = path.read_text()
    for key, value in (("width", size), ("height", size), ("batch", 1)):
        text, n = re.subn(rf"(?m)^{key}=\d+$", f"{key}={value}", text)
        assert n == 1, key
    if learning_rate is not None:
        text, n = re.subn(r"(?m)^learning_rate=.*$", f"learning_rate={learning_rate}", text)
        assert n == 1
    path.write_text(text)
    return path


def lesion(*args, **kwargs) -> subprocess.Popen:
    """``lesion ARGS`` as its own process (the way a shell script or a scheduler starts it)."""
    return subprocess.Popen([sys.executable, "-m", "deeplesion_cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def processes_naming(text: str) -> list[str]:
    """Command lines of the live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                                  "replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


def wait_for_iteration(log: Path, iteration: int, proc: subprocess.Popen,
                       timeout: float = 120) -> int:
    """Wait until darknet.log shows an iteration >= ``iteration``; return the last one seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        text = log.read_text() if log.is_file() else ""
        seen = [int(m) for m in ITERATION.findall(text)]
        if seen and seen[-1] >= iteration:
            return seen[-1]
        time.sleep(0.05)
    raise AssertionError(f"darknet did not reach iteration {iteration} in {timeout} s")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return darknet_safe_tmp(tmp_path_factory, "faults_darknet")


@pytest.fixture(scope="module")
def prepared(base):
    return small_universal_prepared(base)


# ------------------------------------------------------------------ 4. a moved prepared folder

@pytest.fixture(scope="module")
def moved(prepared, base):
    """A prepared folder moved after `lesion prepare` wrote it: its lists and obj.data still name
    the place it was written at, which no longer exists."""
    written_at = base / "written-here"
    shutil.copytree(prepared, written_at)
    for name in ("train.txt", "valid.txt", "test.txt", "obj.data"):
        path = written_at / name
        path.write_text(path.read_text().replace(str(prepared), str(written_at)))
    moved_to = base / "moved-there"
    written_at.rename(moved_to)
    return written_at, moved_to


@pytest.fixture(scope="module")
def moved_run(moved, base):
    """`lesion train yolo` (3 iterations) on the moved folder."""
    _, folder = moved
    cfg = fast_cfg(base / "cfgs" / "tiny.cfg", max_batches=3)
    run = base / "run-moved"
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", run)
    return result, run, cfg


@needs_darknet
def test_a_moved_prepared_folder_trains_on_its_own_images(moved, moved_run):
    written_at, folder = moved
    result, run, _ = moved_run
    assert result.exit_code == 0, result.output
    assert not written_at.exists()
    assert str(written_at) in (folder / "train.txt").read_text()  # the prepared list is stale
    # darknet read the run's own lists, re-rooted to where the folder is now
    data = dict(line.split(" = ") for line in (run / "obj.data").read_text().splitlines())
    assert data["train"] == str(run / "train.txt") and data["valid"] == str(run / "valid.txt")
    assert data["names"] == str(folder / "obj.names")
    for split, name in (("train", "train.txt"), ("val", "valid.txt")):
        lines = (run / name).read_text().splitlines()
        stale = (folder / name).read_text().splitlines()
        assert len(lines) == len(stale) > 0
        assert all(line == str(folder / split / Path(old).name)
                   for line, old in zip(lines, stale))
    log = (run / "darknet.log").read_text()
    assert "Cannot load image" not in log and "Couldn't open" not in log
    assert [r["step"] for r in runlog.read_metrics(run / "metrics.csv")] == [1, 2, 3]


@needs_darknet
def test_predict_yolo_reads_a_moved_folder(moved, moved_run, base):
    _, folder = moved
    _, run, cfg = moved_run
    out = base / "pred-moved.json"
    result = invoke("predict", "yolo", folder, "--cfg", cfg, "--weights",
                    run / "backup" / "tiny_final.weights", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and re.search(r"wrote \d+ detections", result.output)


def test_relocated_list_keeps_line_numbers_and_what_it_cannot_place(prepared, base):
    """A copied folder: each line naming the original's image is re-rooted to the copy's; a
    line naming an image the copy lacks is kept (and reported by the validation), and so are
    blank lines, so messages keep the prepared list's line numbers."""
    copy = base / "copied"
    shutil.copytree(prepared, copy)
    images = (prepared / "train.txt").read_text().splitlines()
    ghost = str(Path(images[0]).with_name("not_there.png"))
    (copy / "train.txt").write_text("\n".join([images[0], "", ghost, images[1]]) + "\r\n")
    out = base / "relocated"
    out.mkdir()
    written = dinputs.relocated_list(copy, "train", out)
    assert written == out / "train.txt"
    assert written.read_text().splitlines() == [
        str(copy / "train" / Path(images[0]).name), "", ghost,
        str(copy / "train" / Path(images[1]).name)]
    with pytest.raises(dinputs.DarknetInputError) as info:
        dinputs.validate_inputs(copy, fast_cfg(base / "cfgs-rel" / "tiny.cfg", 3), [written],
                                list_sources={str(written): copy / "train.txt"})
    message = str(info.value)
    assert f"{copy / 'train.txt'}:2: blank line" in message
    assert f"{copy / 'train.txt'}:3: {ghost}: image does not exist" in message
    assert str(written) not in message


# --------------------------------------------------------------- 7. weights that do not fit

def _weights_file(path: Path, floats: int, seen: int = 0, header=(0, 2, 0)) -> Path:
    path.write_bytes(struct.pack("<iiiQ", *header, seen) + b"\0" * (4 * floats))
    return path


def test_weights_header_and_network_size(tmp_path):
    cfg = parse_cfg(fast_cfg(tmp_path / "tiny.cfg", 3).read_text())
    need = dweights.network_floats(cfg)
    assert need is not None and need > 1000
    good = _weights_file(tmp_path / "good.weights", need, seen=24)
    header = dweights.read_header(good)
    assert (header.version, header.seen, header.header_bytes) == ("0.2.0", 24, 20)
    assert dweights.weights_problems(good, cfg, "tiny.cfg", whole=True) == []
    # version 0.1: a 32-bit `seen` and a 16-byte header
    old = tmp_path / "old.weights"
    old.write_bytes(struct.pack("<iiii", 0, 1, 0, 7) + b"\0" * (4 * need))
    assert dweights.read_header(old).header_bytes == 16 and dweights.weights_images_seen(old) == 7
    assert dweights.weights_problems(old, cfg, "tiny.cfg", whole=True) == []
    # a prefix of the network (a .conv.N file) may start training, not predict
    part = _weights_file(tmp_path / "part.weights", need // 2)
    assert dweights.weights_problems(part, cfg, "tiny.cfg", whole=False) == []
    [problem] = dweights.weights_problems(part, cfg, "tiny.cfg", whole=True)
    assert f"{need // 2} values" in problem and f"needs {need} values" in problem
    big = _weights_file(tmp_path / "big.weights", need + 10)
    [problem] = dweights.weights_problems(big, cfg, "tiny.cfg", whole=False)
    assert "another network" in problem and "darknet partial" in problem
    odd = tmp_path / "odd.weights"
    odd.write_bytes(good.read_bytes()[:-2])
    assert "not a whole number" in dweights.weights_problems(odd, cfg, "x", whole=False)[0]
    # a layer whose weights are not counted: the header is still checked, the size is not
    deconv = parse_cfg(cfg.dumps().replace("[upsample]", "[deconvolutional]", 1))
    assert dweights.network_floats(deconv) is None
    assert dweights.weights_problems(part, deconv, "x", whole=True) == []


@needs_darknet
def test_predict_yolo_refuses_what_is_not_weights_of_the_cfg(moved, moved_run, base):
    _, folder = moved
    _, run, cfg = moved_run
    out = base / "pred-refused.json"
    result = invoke("predict", "yolo", folder, "--cfg", cfg, "--weights", cfg, "-o", out)
    assert result.exit_code == 2, result.output
    assert f"{cfg}: not a darknet weights file" in result.output
    assert "is it a cfg or text file?" in result.output
    final = run / "backup" / "tiny_final.weights"
    cut = base / "cut.weights"
    cut.write_bytes(final.read_bytes()[:100_000])
    need = (final.stat().st_size - 20) // 4
    result = invoke("predict", "yolo", folder, "--cfg", cfg, "--weights", cut, "-o", out)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{cut}: 100000 bytes = 20-byte header (version 0.2.0) + 24995 values" in message
    assert f"needs {need} values ({final.stat().st_size} bytes)" in message
    assert "cut short" in message
    assert not out.exists()


# -------------------------------------------------------------- 8. a finished run's weights

@needs_darknet
def test_a_finished_runs_weights_are_refused_then_trained_with_clear(moved, moved_run, base):
    _, folder = moved
    _, run, cfg = moved_run
    final = run / "backup" / "tiny_final.weights"
    assert dweights.weights_images_seen(final) == 3  # 3 iterations of 1 image
    again = base / "run-again"
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", again, "--weights", final)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{final} has been trained on 3 images = 3 iterations of batch=1" in message
    assert "reaches max_batches=3" in message and "train 0 iterations" in message
    assert "Add --clear" in message
    # nothing left behind that a later --resume would take for a finished run
    assert not again.exists() or not any(again.rglob("*.weights"))
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", again, "--resume")
    assert result.exit_code == 2 and "nothing to resume from" in result.output
    assert "already reached" not in result.output
    # --clear: darknet's -clear restarts the count, and the run trains all its iterations
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", again, "--weights", final,
                    "--clear")
    assert result.exit_code == 0, result.output
    assert "trained 3 iterations" in result.output
    assert [r["step"] for r in runlog.read_metrics(again / "metrics.csv")] == [1, 2, 3]
    assert (again / "darknet.log").read_text().splitlines()[0].endswith(f"{final} -clear")
    # weights of a run half-way: darknet would start late; said, not refused
    half = fast_cfg(base / "cfgs-half" / "tiny.cfg", max_batches=6)
    result = invoke("train", "yolo", folder, "--cfg", half, "--out", base / "run-half",
                    "--weights", final)
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.output and "starts at iteration 4 of 6" in result.output
    assert [r["step"] for r in runlog.read_metrics(base / "run-half" / "metrics.csv")] == \
        [4, 5, 6]


@needs_darknet
def test_train_yolo_refuses_a_text_file_as_weights(moved, moved_run, base):
    _, folder = moved
    _, _, cfg = moved_run
    notes = base / "notes.weights"
    notes.write_text("these are not weights\n")
    run = base / "run-notes"
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", run, "--weights", notes)
    assert result.exit_code == 2, result.output
    assert f"{notes}: not a darknet weights file" in result.output
    assert not run.exists()


# ------------------------------------------------------------------------- 9. signals

@needs_darknet
def test_sigterm_stops_darknet_exits_143_and_resume_continues(moved, moved_run, base):
    """SIGTERM (a scheduler's time limit) after darknet's first backup: exit 143, no darknet
    left running, and --resume continues from that backup. pjreddie saves `<base>.backup` at
    iterations 100, 200, ...: the run starts from real weights whose images-seen count says 96
    (darknet then counts from iteration 97), so that the backup comes after 4 iterations."""
    _, folder = moved
    _, first_run, _ = moved_run
    late = base / "late.weights"
    data = bytearray((first_run / "backup" / "tiny_final.weights").read_bytes())
    data[12:20] = struct.pack("<Q", 96)
    late.write_bytes(bytes(data))
    cfg = fast_cfg(base / "cfgs-term" / "tiny.cfg", max_batches=112)
    run = base / "run-term"
    proc = lesion("train", "yolo", folder, "--cfg", cfg, "--out", run, "--weights", late)
    try:
        reached = wait_for_iteration(run / "darknet.log", 101, proc)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM == 143, output
    assert processes_naming(str(run / "obj.data")) == []  # no darknet left racing a resume
    assert "stopped by SIGTERM at iteration" in output and "darknet got SIGTERM too" in output
    assert "--resume` continues from" in output and "tiny.backup (iteration 100)" in output
    assert "Traceback" not in output
    log = (run / "darknet.log").read_text()
    assert log.rstrip().splitlines()[-1].startswith("lesion: got SIGTERM after iteration ")
    steps = [r["step"] for r in runlog.read_metrics(run / "metrics.csv")]
    assert steps[0] == 97 and reached <= steps[-1] < 112
    # --resume continues from darknet's backup at iteration 100 to the end
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", run, "--resume")
    assert result.exit_code == 0, result.output
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    rows = runlog.read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(97, 113))
    assert all(math.isfinite(r["avg_loss"]) for r in rows)
    log = (run / "darknet.log").read_text()
    assert log.count("\n$ ") == 1 and log.rstrip().endswith("tiny_final.weights")


@needs_darknet
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=["SIGHUP", "SIGINT"])
def test_sighup_or_ctrl_c_before_the_first_backup(moved, base, signum):
    """SIGHUP (a closed terminal or ssh session) or SIGINT (Ctrl-C): exit 128 + signal, no
    darknet left, and since darknet saved nothing yet, the message (and --resume) say to start
    again, which the same folder accepts."""
    _, folder = moved
    cfg = fast_cfg(base / f"cfgs-{signum}" / "tiny.cfg", max_batches=60)
    run = base / f"run-{signum}"
    proc = lesion("train", "yolo", folder, "--cfg", cfg, "--out", run)
    try:
        wait_for_iteration(run / "darknet.log", 2, proc)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, output
    assert processes_naming(str(run / "obj.data")) == []
    name = signal.Signals(signum).name
    assert f"stopped by {name} at iteration" in output and "Traceback" not in output
    assert "darknet saved no weights yet" in output and "run it again without --resume" in output
    assert f"lesion: got {name} after iteration" in (run / "darknet.log").read_text()
    if signum == signal.SIGHUP:
        result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", run, "--resume")
        assert result.exit_code == 2 and "nothing to resume from" in result.output
        assert "the run stopped before darknet saved any" in result.output


# ------------------------------------------------------------------------- 10. a NaN loss

@needs_darknet
def test_a_nan_loss_stops_darknet_at_once(moved, base):
    _, folder = moved
    cfg = fast_cfg(base / "cfgs-nan" / "tiny.cfg", max_batches=400, learning_rate=1e6,
                   burn_in=1)
    run = base / "run-nan"
    start = time.monotonic()
    result = invoke("train", "yolo", folder, "--cfg", cfg, "--out", run)
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    match = re.search(r"the average loss became (-?nan|inf) at iteration (\d+), so lesion "
                      r"stopped darknet there", message)
    assert match, message
    assert "lower learning_rate" in message and "burn_in" in message
    nan_at = int(match.group(2))
    steps = [r["step"] for r in runlog.read_metrics(run / "metrics.csv")]
    assert steps[-1] <= nan_at + 1 < 400  # stopped at once, not judged after 400 iterations
    assert "lesion: stopped darknet after iteration" in (run / "darknet.log").read_text()
    assert processes_naming(str(run / "obj.data")) == []
    assert time.monotonic() - start < 60


def test_judge_training_of_a_stopped_run(tmp_path):
    """A run lesion stopped (a NaN loss): the reason is the divergence and what to change, not
    the SIGTERM exit, the missing final weights or the iterations short of max_batches."""
    outcome = RunOutcome(returncode=-signal.SIGTERM, log_path=tmp_path / "darknet.log")
    outcome.record("1: 5.0, 6.0 avg, 0.001 rate, 0.3 seconds, 2 images")
    outcome.record("2: nan, nan avg, 0.001 rate, 0.3 seconds, 4 images")
    outcome.stopped = "average loss nan at iteration 2"
    reasons = judge_training(outcome, 100, tmp_path / "x_final.weights", burn_in=10)
    assert reasons == ["the average loss became nan at iteration 2, so lesion stopped darknet "
                       "there: training diverged (lower learning_rate (`lesion cfg --lr`), "
                       "raise burn_in (`--burn-in`), or check the labels)"]
