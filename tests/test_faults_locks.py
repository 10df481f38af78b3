"""Faults at the folder and the command boundary (issue 12, items 2 and 13): one writer per folder
(`deeplesion_cli.lock`), a disk full or read-only while a command writes, and a binary file given
to `lesion cfg --check`.

A second writer is a real second process: a helper that takes the folder's lock through
`deeplesion_cli.lock` and waits, while the real command runs here. Disk-full and read-only folders
are real file systems: a small tmpfs mounted by root (remounted read-only), skipped with the
reason where mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deeplesion_cli import atomic, lock
from deeplesion_cli.cli import main
from deeplesion_cli.cli.group import LesionGroup
from deeplesion_cli.prepare import PrepareOptions, prepare

HOLDER = textwrap.dedent("""
    import sys
    from deeplesion_cli import lock
    with lock.folder_lock(sys.argv[1], "lesion test-holder"):
        print("locked", flush=True)
        sys.stdin.read()          # hold until the test closes stdin (or kills this process)
""")


@contextlib.contextmanager
def held(folder: Path):
    """A second process holding ``folder``'s lock until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)
        proc.stdout.close()


def assert_names_holder(output: str, folder: Path, pid: int) -> None:
    assert f"{folder} is in use by another lesion command" in output, output
    assert f"pid {pid} on host {socket.gethostname()}" in output, output
    assert "started 20" in output and "lesion test-holder" in output, output
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def prepared(synth_set, tmp_path_factory):
    root, _ = synth_set
    out = tmp_path_factory.mktemp("faults") / "prepared"
    prepare(root, out, PrepareOptions(task="universal", split="patient", seed=1), workers=1,
            show_progress=False)
    return out


@pytest.fixture(scope="module")
def detections(prepared):
    """The test split's lesions as detections (a perfect detector)."""
    gt = json.loads((prepared / "coco" / "test.json").read_text())
    path = prepared.parent / "dets.json"
    path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"],
                                 "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]))
    return path


def eval_args(prepared, detections, out) -> list[str]:
    return ["eval", str(prepared), "--pred", f"a={detections}", "--out", str(out)]


# ------------------------------------------------------------------------------ folder locks

def test_prepare_into_a_held_folder_exits_2_naming_the_holder(synth_set, tmp_path):
    root, _ = synth_set
    out = tmp_path / "prep"
    with held(out) as proc:
        result = CliRunner().invoke(main, ["prepare", str(root), str(out), "--workers", "1"])
        assert result.exit_code == 2, result.output
        assert_names_holder(result.output, out, proc.pid)
        assert os.listdir(out) == [lock.LOCK_NAME]           # nothing written
    assert not out.exists()      # the holder made the folder and left it empty: removed


def test_eval_out_held_then_taken_over_from_a_killed_holder(prepared, detections, tmp_path):
    out = tmp_path / "eval"
    with held(out) as proc:
        result = CliRunner().invoke(main, eval_args(prepared, detections, out))
        assert result.exit_code == 2, result.output
        assert_names_holder(result.output, out, proc.pid)
        assert not (out / "metrics.json").exists()
        proc.kill()              # SIGKILL: the kernel drops its flock, its record stays
        proc.wait(timeout=30)
    assert json.loads((out / lock.LOCK_NAME).read_text())["pid"] == proc.pid
    result = CliRunner().invoke(main, eval_args(prepared, detections, out))
    assert result.exit_code == 0, result.output
    assert (f"Warning: took over the lock of {out} left by a command that no longer runs "
            f"(pid {proc.pid} on host {socket.gethostname()}") in result.output
    assert (out / "metrics.json").is_file() and not (out / lock.LOCK_NAME).exists()


def test_a_lock_of_another_host_is_refused_with_how_to_remove_it(prepared, detections, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / lock.LOCK_NAME).write_text(json.dumps(
        {"pid": 4242, "host": "gpu-node-7", "started": "2026-01-02 03:04:05 UTC",
         "command": "lesion eval p --out eval"}))
    result = CliRunner().invoke(main, eval_args(prepared, detections, out))
    assert result.exit_code == 2, result.output
    assert "pid 4242 on host gpu-node-7, started 2026-01-02 03:04:05 UTC" in result.output
    assert f"delete {out / lock.LOCK_NAME} and run again" in result.output
    assert sorted(os.listdir(out)) == [lock.LOCK_NAME]


def test_train_frcnn_into_a_held_run_folder_exits_2(prepared, tmp_path):
    run = tmp_path / "run"
    with held(run) as proc:
        result = CliRunner().invoke(main, ["train", "frcnn", str(prepared), "--out", str(run),
                                           "--arch", "mobilenet_v3_fpn", "--epochs", "1"])
        assert result.exit_code == 2, result.output
        assert_names_holder(result.output, run, proc.pid)
        assert os.listdir(run) == [lock.LOCK_NAME]       # no train.log, no metrics.csv


@pytest.mark.parametrize("command", ["train yolo", "report", "matrix"])
def test_other_writers_into_a_held_folder_exit_2(command, prepared, detections, tmp_path):
    out = tmp_path / "out"
    if command == "train yolo":
        cfg = tmp_path / "x.cfg"
        cfg.write_text("[net]\nwidth=64\nheight=64\n")
        args = ["train", "yolo", str(prepared), "--cfg", str(cfg), "--out", str(out)]
    elif command == "report":
        args = ["report", "--prepared", str(prepared), "--out", str(out)]
    else:
        toml = tmp_path / "m.toml"
        toml.write_text(f'prepared = "{prepared}"\nout = "{out}"\n\n[[experiment]]\n'
                        'name = "a"\nbackend = "frcnn"\nepochs = 1\n')
        args = ["matrix", str(toml)]
    with held(out) as proc:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert_names_holder(result.output, out, proc.pid)
        assert os.listdir(out) == [lock.LOCK_NAME]


def test_nested_and_reentrant_locks_and_torchrun_ranks(tmp_path, monkeypatch):
    outer, inner = tmp_path / "matrix", tmp_path / "matrix" / "eval"
    with lock.folder_lock(outer, "lesion matrix"):
        with lock.folder_lock(inner, "lesion eval"), lock.folder_lock(outer, "lesion matrix"):
            assert sorted(os.listdir(outer)) == [lock.LOCK_NAME, "eval"]
            assert set(lock.held()) == {outer.resolve(), inner.resolve()}
        assert lock.held() == [outer.resolve()] and (outer / lock.LOCK_NAME).is_file()
    assert lock.held() == [] and not outer.exists()

    @lock.locks("folder", "lesion train frcnn", when=lock.rank_zero)
    def write(folder):
        (Path(folder) / "x").write_text("x")

    with held(tmp_path / "run") as proc:
        monkeypatch.setenv("RANK", "1")        # a torchrun rank > 0 writes nothing: no lock
        write(tmp_path / "run")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(lock.FolderLockedError, match=f"pid {proc.pid} on host"):
            write(tmp_path / "run")


def test_a_failed_command_leaves_no_folder_it_created(prepared, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    out = tmp_path / "new" / "eval"
    result = CliRunner().invoke(main, ["eval", str(prepared), str(bad), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------- the OSError boundary

@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, read_only=False)``: a tmpfs at tmp_path/mnt (unmounted after the test)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(mnt)
        return mnt

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def test_prepare_on_a_full_disk_names_the_file_and_a_rerun_continues(synth_set, tmpfs):
    root, _ = synth_set
    out = tmpfs("96k") / "prep"
    args = ["prepare", str(root), str(out), "--workers", "1", "--task", "universal"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "No space left on device (errno ENOSPC)" in result.output, result.output
    assert f"Error: {out}{os.sep}" in result.output and "free space" in result.output
    assert "Traceback" not in result.output and not (out / lock.LOCK_NAME).exists()
    assert list(out.glob("*/*.png"))          # what was rendered is kept...
    remount(out.parent, "size=64m")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    reused = re.search(r"(\d+) reused from an earlier run", result.output)
    assert reused and int(reused.group(1)) > 0, result.output        # ...and reused
    assert (out / "manifest.json").is_file()


def test_eval_into_a_read_only_folder(prepared, detections, tmpfs):
    out = tmpfs("1m") / "eval"
    out.mkdir()
    remount(out.parent, "ro")
    result = CliRunner().invoke(main, eval_args(prepared, detections, out))
    assert result.exit_code == 2, result.output
    assert f"Error: {out}{os.sep}" in result.output, result.output
    assert "Read-only file system (errno EROFS)" in result.output
    assert "choose a folder you can write" in result.output and "Traceback" not in result.output


def test_train_frcnn_into_a_read_only_run_folder(prepared, tmpfs):
    run = tmpfs("1m") / "run"
    run.mkdir()
    remount(run.parent, "ro")
    result = CliRunner().invoke(main, ["train", "frcnn", str(prepared), "--out", str(run),
                                       "--arch", "mobilenet_v3_fpn", "--size", "64",
                                       "--epochs", "1", "--workers", "0"])
    assert result.exit_code == 2, result.output
    assert f"Error: {run}{os.sep}" in result.output, result.output
    assert "Read-only file system (errno EROFS)" in result.output


def test_a_write_error_without_a_file_name_names_the_file_written(tmpfs):
    """write() on a full disk raises an OSError with no file name: the boundary names the file
    being written (an atomic write's target, not its temporary name)."""
    target = tmpfs("16k") / "big.bin"

    @click.group(cls=LesionGroup)
    def group():
        pass

    @group.command()
    def write():
        atomic.write_bytes(target, b"x" * 1_000_000)

    result = CliRunner().invoke(group, ["write"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {target}: No space left on device (errno ENOSPC)\n")


def test_a_bug_keeps_its_traceback():
    @click.group(cls=LesionGroup)
    def group():
        pass

    @group.command()
    def bug():
        raise KeyError("not an OSError")

    result = CliRunner().invoke(group, ["bug"])
    assert isinstance(result.exception, KeyError)


# ------------------------------------------------------------------------------ cfg --check

def test_cfg_check_on_a_binary_file_is_an_input_error(tmp_path):
    weights = tmp_path / "yolo_final.weights"
    weights.write_bytes(bytes([0, 0, 0, 0, 2, 0, 0, 0]) + bytes(range(256)) * 8)
    result = CliRunner().invoke(main, ["cfg", "--check", str(weights)])
    assert result.exit_code == 2, result.output
    assert f"Error: {weights}: not a text cfg file" in result.output
    assert "Traceback" not in result.output
