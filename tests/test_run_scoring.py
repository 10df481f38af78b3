"""Run folders that score themselves: `lesion eval --run NAME=RUN` (detections predicted from the
run's checkpoint, cached in RUN/detections/) and `lesion train frcnn|yolo --test` (RUN/test/).

One tiny Faster R-CNN run (mobilenet_v3_fpn, 96 px, 1 epoch on CPU), trained once through the real
`lesion train frcnn --test`; its results are compared with the manual path (`lesion predict
frcnn` + `lesion eval --pred`). The darknet checkpoint choice is checked on real files of a run
folder's layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from deeplesion_cli import runs
from deeplesion_cli.cli import main

TRAIN = ["--arch", "mobilenet_v3_fpn", "--size", "96", "--batch-size", "4", "--workers", "0",
         "--augment", "none", "--eval-train-images", "0", "--deterministic", "--lr", "1e-3",
         "--epochs", "1"]
CACHED = re.compile(r"test-(best|last)\.pt-[0-9a-f]{12}\.json")


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prepared folder, run folder trained with --test, the command's output)."""
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("run_scoring")
    synthesize(root / "synth", patients=6, seed=11, size_px=96, workers=1, show_progress=False)
    prepare(root / "synth", root / "prep",
            PrepareOptions(task="universal", split="patient", ratios=(0.5, 0.25, 0.25)),
            show_progress=False)
    run = root / "tiny"
    result = _invoke("train", "frcnn", root / "prep", "--out", run, *TRAIN, "--test")
    return root / "prep", run, result.output


@pytest.fixture(scope="module")
def manual(trained, tmp_path_factory):
    """The manual path on the run: `lesion predict frcnn` then `lesion eval --pred tiny=FILE`."""
    prepared, run, _ = trained
    base = tmp_path_factory.mktemp("manual")
    _invoke("predict", "frcnn", run, prepared, "--split", "test", "-o", base / "dets.json",
            "--workers", "0")
    result = _invoke("eval", prepared, "--pred", f"tiny={base / 'dets.json'}", "--json")
    return base / "dets.json", json.loads(result.stdout)


def _scores(document: dict, name: str) -> dict:
    """A run's block of metrics.json without the detections file's path."""
    block = dict(document["runs"][name])
    block.pop("detections")
    return block


def _copy_run(run, dest):
    """The run folder without its cache and test folder."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("detections", "test"))
    return dest


def test_train_test_writes_what_predict_and_eval_write(trained, manual):
    prepared, run, output = trained
    dets, document = manual
    test = json.loads((run / "test" / "metrics.json").read_text())
    assert _scores(test, "tiny") == _scores(document, "tiny")
    assert (run / "test" / "summary.md").is_file()
    assert list((run / "test").glob("*.png")), "the eval folder's plots"
    cached = list((run / "detections").iterdir())
    assert len(cached) == 1 and CACHED.fullmatch(cached[0].name)
    assert json.loads(cached[0].read_text()) == json.loads(dets.read_text())
    block = document["runs"]["tiny"]
    from deeplesion_cli import steps
    from deeplesion_cli.spec.core import shell_line

    line = shell_line(steps.score_test_words(run, prepared))
    assert f"--run tiny={run} " in line and line.endswith(f"--out {run / 'test'}")
    assert f"test tiny: AP50 {block['coco']['AP50']:.4f}, AP {block['coco']['AP']:.4f}" in output
    assert f"{block['n_detections']} detections on {block['n_images']} images" in output


def test_eval_run_equals_eval_pred_and_its_cache_is_reused_then_invalidated(trained, manual,
                                                                           tmp_path):
    from deeplesion_cli import steps

    prepared, run, _ = trained
    _, document = manual
    copy = _copy_run(run, tmp_path / "copy")
    result = _invoke("eval", prepared, "--run", f"tiny={copy}", "--json")
    assert "predicted in" in result.output
    assert _scores(json.loads(result.stdout), "tiny") == _scores(document, "tiny")
    [first] = list((copy / "detections").iterdir())
    assert CACHED.fullmatch(first.name)
    stamp = first.stat().st_mtime_ns

    # the same inputs again: nothing is predicted, the file is untouched
    result = _invoke("eval", prepared, "--run", f"tiny={copy}", "--out", tmp_path / "e2")
    assert f"reused from {first}" in result.output
    assert first.stat().st_mtime_ns == stamp
    assert _scores(json.loads((tmp_path / "e2" / "metrics.json").read_text()), "tiny") \
        == _scores(document, "tiny")

    # a changed checkpoint (a new best) is predicted again; the old cache file goes
    chosen = first.name.split("-")[1]
    os.utime(copy / chosen, ns=(stamp + 10**9, stamp + 10**9))
    found = steps.predict_run(copy, prepared, values={"workers": 0}, show_progress=False)
    assert not found.reused and found.run.checkpoint == copy / chosen
    assert list((copy / "detections").iterdir()) == [found.path] and found.path != first
    assert steps.predict_run(copy, prepared, show_progress=False).reused

    # --checkpoint last: last.pt, cached under its own name
    last = runs.pick_checkpoint(copy, "last")
    assert (last.checkpoint, last.which, last.note) == (copy / "last.pt", "last", None)
    assert runs.cache_path(last, prepared, "test").name.startswith("test-last.pt-")


def test_run_and_pred_names_must_differ_and_runs_need_a_prepared_folder(trained, manual,
                                                                       tmp_path):
    prepared, run, _ = trained
    dets, _ = manual
    result = CliRunner().invoke(main, ["eval", str(prepared), "--pred", f"a={dets}",
                                       "--run", f"a={run}"])
    assert result.exit_code == 2 and "'a' is given twice" in result.output
    result = CliRunner().invoke(main, ["eval", str(prepared / "coco" / "test.json"),
                                       "--run", f"a={run}"])
    assert result.exit_code == 2 and "must be a prepared folder" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["eval", str(prepared), "--run", f"a={tmp_path / 'empty'}"])
    assert result.exit_code == 2 and "no args.json" in result.output


def _darknet_run(folder, binary="/usr/bin/darknet"):
    """A darknet run folder's layout: args.json naming its cfg, and backup/."""
    folder.mkdir()
    (folder / "tiny.cfg").write_text("[net]\n")
    (folder / "backup").mkdir()
    (folder / "args.json").write_text(json.dumps({
        "command": "train yolo", "cfg": "/elsewhere/tiny.cfg",
        "darknet": {"binary": binary, "fork": "pjreddie"}}))
    return folder


def test_darknet_checkpoint_choice(tmp_path):
    run = _darknet_run(tmp_path / "yolo")
    with pytest.raises(runs.RunFolderError, match="tiny_final.weights"):
        runs.pick_checkpoint(run)
    (run / "backup" / "tiny.backup").write_bytes(b"x")
    chosen = runs.pick_checkpoint(run, "last")
    assert chosen.checkpoint.name == "tiny.backup" and "did not finish" in chosen.note
    (run / "backup" / "tiny_final.weights").write_bytes(b"x")
    chosen = runs.pick_checkpoint(run)   # pjreddie writes no _best: the last, said
    assert (chosen.backend, chosen.checkpoint.name, chosen.which) \
        == ("darknet", "tiny_final.weights", "last")
    assert "recorded no best" in chosen.note and chosen.cfg == run / "tiny.cfg"
    (run / "backup" / "tiny_best.weights").write_bytes(b"x")
    assert runs.pick_checkpoint(run).checkpoint.name == "tiny_best.weights"
    assert runs.pick_checkpoint(run).note is None
    assert runs.pick_checkpoint(run, "last").checkpoint.name == "tiny_final.weights"


@pytest.mark.darknet
def test_train_yolo_test_equals_predict_and_eval(trained, tmp_path):
    prepared, _, _ = trained
    cfg = tmp_path / "tiny.cfg"
    _invoke("cfg", prepared, "--arch", "yolov3-tiny", "--size", "96", "--batch", "2",
            "--subdivisions", "1", "--max-batches", "2", "-o", cfg)
    run = tmp_path / "yolo"
    result = _invoke("train", "yolo", prepared, "--cfg", cfg, "--out", run, "--test")
    final = run / "backup" / "tiny_final.weights"
    assert f"{final}:" in result.output and "recorded no best" in result.output  # pjreddie
    [cached] = list((run / "detections").iterdir())
    assert re.fullmatch(r"test-tiny_final\.weights-[0-9a-f]{12}\.json", cached.name)
    test = json.loads((run / "test" / "metrics.json").read_text())
    assert test["runs"]["yolo"]["n_detections"] == len(json.loads(cached.read_text()))
    assert test["runs"]["yolo"]["detections"] == str(cached)
    # eval --run on the darknet run: its cache, nothing predicted
    result = _invoke("eval", prepared, "--run", f"yolo={run}")
    assert f"reused from {cached}" in result.output
