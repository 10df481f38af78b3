"""Faults and bad input around `lesion train frcnn` / `lesion predict frcnn` (issue 12, items 3,
6, 11, 12, 14): a full disk while saving checkpoints (a real tmpfs, shrunk under the run), SIGTERM
to a running `lesion train frcnn` process, `--device` forms, a prepared folder made otherwise than
the training one, a val split with no images.

Real commands and models (mobilenet_v3_fpn at 96 px on a tiny synthetic set, as in
tests/test_frcnn_train.py), nothing mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deeplesion_cli import errors
from deeplesion_cli.cli import main
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn import engine
from deeplesion_cli.frcnn.distributed import Dist, device_for_rank
from deeplesion_cli.frcnn.interrupt import Interrupted, StopRequest, stop_on_signals
from deeplesion_cli.spec.frcnn import PREDICT_FRCNN, TRAIN_FRCNN, parse_device

# the CPU recipe's cost options (docs/user-guide.md): a few seconds per epoch
FAST = dict(arch="mobilenet_v3_fpn", size_px=96, batch_size=4, workers=0, augment="none",
            eval_train_images=0, deterministic=True, lr=1e-3, rois_per_image=64,
            rpn_pre_nms_train=300, rpn_post_nms_train=300, rpn_post_nms_test=300)
FAST_FLAGS = ["--arch", "mobilenet_v3_fpn", "--size", "96", "--batch-size", "4", "--workers", "0",
              "--augment", "none", "--eval-train-images", "0", "--deterministic", "--lr", "1e-3",
              "--rois-per-image", "64", "--rpn-pre-nms-train", "300", "--rpn-post-nms-train",
              "300", "--rpn-post-nms-test", "300"]


#: few val images (evaluated every epoch), a few more to predict
RATIOS = (0.34, 0.16, 0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One synthetic set prepared four ways: the reference folder, the same pixels split
    otherwise, another window (other pixels), and no val split."""
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("faults_frcnn")
    synthesize(root / "synth", patients=6, seed=11, size_px=96, workers=1, show_progress=False)
    folders = {}
    for name, options in {
            "ref": PrepareOptions(task="universal", split="patient", ratios=RATIOS),
            "resplit": PrepareOptions(task="universal", split="patient", ratios=RATIOS,
                                      seed=3),
            "lung": PrepareOptions(task="universal", split="patient", ratios=RATIOS,
                                   windows=((-1500.0, 500.0),)),
            "noval": PrepareOptions(task="universal", split="patient", ratios=(0.34, 0.0, 0.66)),
    }.items():
        result = prepare(root / "synth", root / name, options, show_progress=False)
        folders[name] = root / name
        if name == "noval":
            assert result.manifest["counts"]["val"]["images"] == 0
        else:
            assert result.manifest["counts"]["val"]["images"] > 0
    return folders


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A one-epoch run on the reference folder (its best.pt: epoch 1)."""
    run = tmp_path_factory.mktemp("faults_run") / "run"
    result = engine.train(data["ref"], run, engine.TrainOptions(**FAST, epochs=1),
                          show_progress=False)
    assert result.best_epoch == 1 and (run / "best.pt").is_file()
    return run


def _checkpoint_epoch(path: Path) -> int:
    return ckpt.peek(path)["epoch"]


def _best_is_consistent(run: Path) -> None:
    """The best record of last.pt names exactly the best.pt on disk."""
    record = ckpt.peek(run / "last.pt")["best"]
    if record["epoch"] is None:
        return
    assert (run / "best.pt").is_file()
    assert _checkpoint_epoch(run / "best.pt") == record["epoch"]


# -------------------------------------------------------------------------------- --device

def test_device_forms_are_parsed_the_way_users_type_them():
    assert parse_device("auto") == ("auto", ())
    assert parse_device("CPU") == ("cpu", ())
    assert parse_device("cuda") == ("cuda", ())
    assert parse_device("cuda:1") == ("cuda", (1,))
    assert parse_device("0") == ("cuda", (0,))
    assert parse_device("0,1") == ("cuda", (0, 1))
    for bad in ("gpu", "cuda:x", "", "0,0", "mps0", "-1"):
        with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or N|listed twice"):
            parse_device(bad)
    # the one declaration checks every source: library, matrix TOML
    assert "cuda:N or N" in TRAIN_FRCNN["device"].problem("gpu")
    assert "a GPU is cuda" in TRAIN_FRCNN["device"].problem("gpu")
    assert TRAIN_FRCNN["device"].problem("0") is None
    with pytest.raises(ValueError, match="cuda:N or N"):
        PREDICT_FRCNN["device"].from_toml("cuda:x", Path("."))


def test_bad_device_is_refused_before_anything_is_loaded(data, trained, tmp_path):
    runner = CliRunner()
    for bad in ("gpu", "cuda:x", ""):
        out = tmp_path / f"run_{bad or 'empty'}"
        result = runner.invoke(main, ["train", "frcnn", str(data["ref"]), "--out", str(out),
                                      "--device", bad, "--epochs", "1"])
        assert result.exit_code == 2, result.output
        assert "auto, cpu, cuda, cuda:N or N" in result.output and "Traceback" not in result.output
        assert not out.exists()
        result = runner.invoke(main, ["predict", "frcnn", str(trained), str(data["ref"]), "-o",
                                      str(tmp_path / "x.json"), "--device", bad])
        assert result.exit_code == 2 and "cuda:N or N" in result.output, result.output
    # a list of GPUs without torchrun: one process per GPU
    result = runner.invoke(main, ["train", "frcnn", str(data["ref"]), "--out",
                                  str(tmp_path / "two"), "--device", "0,1", "--epochs", "1"])
    assert result.exit_code == 2 and "torchrun --nproc_per_node 2" in result.output, result.output
    result = runner.invoke(main, ["predict", "frcnn", str(trained), str(data["ref"]), "-o",
                                  str(tmp_path / "x.json"), "--device", "0,1"])
    assert result.exit_code == 2 and "one device" in result.output, result.output
    assert not (tmp_path / "x.json").exists()
    if not torch.cuda.is_available():
        for form in ("0", "cuda", "cuda:0"):
            result = runner.invoke(main, ["train", "frcnn", str(data["ref"]), "--out",
                                          str(tmp_path / "gpu"), "--device", form])
            assert result.exit_code == 2, result.output
            assert "no GPU" in result.output and "--device cpu" in result.output
            with pytest.raises(errors.LesionInputError, match="no GPU"):
                device_for_rank(form, Dist(0, 2, 0, launched=True, local_world_size=2))
    else:  # a GPU machine: 0 is cuda:0, an index it lacks is named
        assert device_for_rank("0", Dist()) == torch.device("cuda", 0)
        count = torch.cuda.device_count()
        with pytest.raises(errors.LesionInputError, match=f"no CUDA device {count}"):
            device_for_rank(str(count), Dist())
    assert device_for_rank("cpu", Dist()) == torch.device("cpu")


# ------------------------------------------------------------------------ predict's choices

def test_a_recorded_best_pt_that_is_missing_is_never_replaced_silently(data, trained,
                                                                         tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("best.pt"))
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "frcnn", str(copy), str(data["ref"]), "-o",
                                  str(tmp_path / "e.json"), "--workers", "0"])
    assert result.exit_code == 2, result.output
    assert f"{copy / 'best.pt'} is missing" in result.output and "epoch 1" in result.output
    assert str(copy / "last.pt") in result.output and not (tmp_path / "e.json").exists()
    # what --resume does with the record (ckpt.check_best): cleared when the file is gone...
    counters = ckpt.Counters(epoch=1, best=dict(ckpt.peek(copy / "last.pt")["best"]))
    message = ckpt.check_best(copy, counters, "map50")
    assert "best.pt is missing" in message and counters.best["epoch"] is None
    # ... and following the file when best.pt holds another epoch (a stop between the saves)
    state = ckpt.load(trained / "best.pt")
    state.update(epoch=2, best={"metric": "map50", "value": 0.5, "epoch": 2})
    ckpt.save(copy / "best.pt", state)
    counters = ckpt.Counters(epoch=1, best=dict(ckpt.peek(copy / "last.pt")["best"]))
    message = ckpt.check_best(copy, counters, "map50")
    assert "holds epoch 2" in message and counters.best == state["best"]
    assert ckpt.check_best(copy, counters, "map50") is None


def test_predict_refuses_a_prepared_folder_with_other_pixels(data, trained, tmp_path):
    runner = CliRunner()
    out = tmp_path / "lung.json"
    result = runner.invoke(main, ["predict", "frcnn", str(trained), str(data["lung"]), "-o",
                                  str(out), "--workers", "0", "--split", "val"])
    assert result.exit_code == 2, result.output
    assert "windows_hu ['-1500,500'] here" in result.output and "at training" in result.output
    assert "--allow-other-render" in result.output and not out.exists()
    # on purpose (a robustness study): a warning; the output names the checkpoint it used
    result = runner.invoke(main, ["predict", "frcnn", str(trained), str(data["lung"]), "-o",
                                  str(out), "--workers", "0", "--split", "val",
                                  "--allow-other-render"])
    assert result.exit_code == 0 and "Warning:" in result.output and out.is_file()
    assert f"with {trained / 'best.pt'}, epoch 1" in result.output
    # the same pixels split otherwise (another config_hash) are fine
    assert (ckpt.peek(trained / "last.pt")["prepared_config_hash"]
            != __import__("json").loads((data["resplit"] / "manifest.json").read_text())
            ["config_hash"])
    result = runner.invoke(main, ["predict", "frcnn", str(trained), str(data["resplit"]), "-o",
                                  str(tmp_path / "re.json"), "--workers", "0", "--split", "val"])
    assert result.exit_code == 0 and "Warning" not in result.output, result.output


# ------------------------------------------------------------------------- no val images

def test_a_split_without_val_images_says_there_is_no_best(data, tmp_path):
    run = tmp_path / "noval"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "frcnn", str(data["noval"]), "--out", str(run),
                                  "--epochs", "1", *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    assert "Warning: the val split of" in result.output and "no best.pt" in result.output
    assert "best map50" not in result.output and not (run / "best.pt").exists()
    assert "the val split of" in (run / "train.log").read_text()
    result = runner.invoke(main, ["predict", "frcnn", str(run), str(data["noval"]), "-o",
                                  str(tmp_path / "n.json"), "--workers", "0", "--split", "val"])
    assert result.exit_code == 0 and f"with {run / 'last.pt'}, epoch 1" in result.output


# ------------------------------------------------------------------------------ disk full

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk (root only); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _resize(mount: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(mount)], check=True,
                   capture_output=True)


def _used(mount: Path) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_disk_full_while_saving_keeps_the_previous_checkpoints(data, trained, small_disk):
    run = small_disk / "run"
    shutil.copytree(trained, run)                  # epoch 1 done: last.pt and best.pt
    _resize(small_disk, _used(small_disk) + 256 * 1024)  # room for log lines, not a checkpoint
    runner = CliRunner()
    command = ["train", "frcnn", str(data["ref"]), "--out", str(run), "--resume", "--epochs", "2"]
    result = runner.invoke(main, command)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and f"cannot write {run}{os.sep}" in result.output
    assert "errno ENOSPC" in result.output and "epoch 2 is not saved" in result.output
    assert f"kept {run / 'last.pt'} (epoch 1)" in result.output and "--resume" in result.output
    # the previous checkpoints are whole, no temporary file is left, the log says what was kept
    assert ckpt.load(run / "last.pt")["epoch"] == 1
    _best_is_consistent(run)
    assert not list(run.glob(".*.tmp"))
    assert "epoch 2 is not saved; kept" in (run / "train.log").read_text()
    # room again (and best.pt lost meanwhile): --resume says so, redoes epoch 2 and records a
    # best that is on disk
    _resize(small_disk, 1 << 30)
    (run / "best.pt").unlink()
    result = runner.invoke(main, command)
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.output and "best.pt is missing" in result.output
    assert "trained epochs 2-2" in result.output and "at epoch 2" in result.output
    assert _checkpoint_epoch(run / "last.pt") == 2
    _best_is_consistent(run)
    assert _checkpoint_epoch(run / "best.pt") == 2


def test_a_failed_save_names_the_file_and_errno_and_keeps_the_old_file(small_disk):
    path = small_disk / "last.pt"
    ckpt.save(path, {"format": ckpt.FORMAT, "model_args": {}, "epoch": 1})
    _resize(small_disk, _used(small_disk) + 64 * 1024)
    with pytest.raises(ckpt.CheckpointSaveError, match=r"last\.pt: .*errno ENOSPC"):
        ckpt.save(path, {"format": ckpt.FORMAT, "model_args": {},
                         "blob": torch.zeros(1 << 20)})
    assert ckpt.load(path)["epoch"] == 1 and not list(small_disk.glob(".*.tmp"))


# ------------------------------------------------------------------------------- signals

def test_signal_handlers_record_then_stop_at_once_and_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stop = StopRequest()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        assert stop.requested and stop.name == "SIGHUP"
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert caught.value.exit_code == 128 + signal.SIGINT
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_inside_an_epoch_abandons_it_and_keeps_the_last_completed(data, trained,
                                                                          tmp_path):
    run = tmp_path / "abandon"
    shutil.copytree(trained, run)
    log = run / "train.log"
    started = log.read_text().count("resume from")

    def signal_once_epoch_2_runs():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.read_text().count("resume from") > started:
                time.sleep(0.5)  # inside epoch 2: its training takes seconds
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=signal_once_epoch_2_runs, daemon=True)
    thread.start()
    with pytest.raises(Interrupted) as caught:
        engine.train(data["ref"], run, resume=True, overrides={"epochs": 3}, show_progress=False)
    thread.join()
    message = str(caught.value)
    assert caught.value.exit_code == 143
    assert message.startswith("stopped by SIGTERM") and "epoch 2 abandoned" in message
    assert f"{run / 'last.pt'} holds epoch 1 of 3: continue with --resume" in message
    assert message in log.read_text() and _checkpoint_epoch(run / "last.pt") == 1
    _best_is_consistent(run)


def test_sigterm_stops_training_at_a_step_and_resume_finishes(data, tmp_path):
    run = tmp_path / "term"
    cmd = [sys.executable, "-m", "deeplesion_cli", "train", "frcnn", str(data["ref"]), "--out",
           str(run), "--epochs", "2", *FAST_FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        log = run / "train.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and "epoch 1/2" in log.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    text = log.read_text()
    stopped = [line for line in text.splitlines() if "stopped by SIGTERM" in line]
    assert stopped and ("in epoch 2" in stopped[-1] or "after epoch 1" in stopped[-1]), text
    saved = _checkpoint_epoch(run / "last.pt")
    assert saved == 1 and "holds epoch 1 of 2: continue with --resume" in stopped[-1]
    assert "stopped by SIGTERM" in stderr and f"holds epoch {saved}" in stderr
    assert not list(run.glob(".*.tmp"))
    result = CliRunner().invoke(main, ["train", "frcnn", str(data["ref"]), "--out", str(run),
                                       "--resume"])
    assert result.exit_code == 0, result.output
    assert "trained epochs 2-2" in result.output
    assert _checkpoint_epoch(run / "last.pt") == 2
    _best_is_consistent(run)
