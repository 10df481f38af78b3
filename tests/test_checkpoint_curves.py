"""mAP over training (issue 14): `lesion train frcnn --save-every N` keeps epoch weights,
`runs.list_checkpoints` lists a run's progress points (Faster R-CNN epochs, darknet iterations),
`lesion eval --run NAME=RUN --checkpoint every --split train --split test --out DIR` scores each
through the run's detection cache into checkpoints.csv, and `lesion report --eval DIR` draws it.

Real parts throughout: one tiny Faster R-CNN run (mobilenet_v3_fpn at 64 px, 2 epochs of 4
images, 1 per batch) trained through the CLI, the real evaluator (its figures compared with
`lesion predict frcnn` + `lesion eval --pred` on the same epoch file), and a real pjreddie darknet
run (2 iterations) whose weights files are also copied under the names darknet gives them.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from deeplesion_cli import runs
from deeplesion_cli.cli import main
from deeplesion_cli.curves import parse_splits, score_checkpoints
from deeplesion_cli.report import checkpoints as report_checkpoints
from tests.conftest import darknet_safe_tmp, small_universal_prepared

TRAIN = ["--arch", "mobilenet_v3_fpn", "--size", "64", "--batch-size", "1", "--workers", "0",
         "--augment", "none", "--eval-train-images", "0", "--deterministic", "--lr", "1e-3",
         "--rois-per-image", "64", "--rpn-pre-nms-train", "300", "--rpn-post-nms-train", "300",
         "--rpn-post-nms-test", "300", "--epochs", "2", "--save-every", "1"]
#: an IoU low enough for the untrained boxes to hit some lesions: metrics that are not all 0
EVAL = ["--iou", "0.1"]


def _invoke(*args, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prepared folder: 4 train, 4 val, 6 test images at 64 px; run trained with --save-every 1
    for 2 epochs)."""
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("curves")
    synthesize(root / "synth", patients=3, seed=11, size_px=64, workers=1, show_progress=False)
    prepare(root / "synth", root / "prep",
            PrepareOptions(task="universal", split="patient", ratios=(0.34, 0.33, 0.33)),
            workers=1, show_progress=False)
    _invoke("train", "frcnn", root / "prep", "--out", root / "run", *TRAIN)
    return root / "prep", root / "run"


@pytest.fixture(scope="module")
def scored(trained, tmp_path_factory):
    """`lesion eval --checkpoint every --split train --split test` on the run: (out folder, its
    output, the cached detection files with their modification times)."""
    prepared, run = trained
    out = tmp_path_factory.mktemp("scored") / "curves"
    result = _invoke("eval", prepared, "--run", f"tiny={run}", "--checkpoint", "every",
                     "--split", "train", "--split", "test", "--out", out, *EVAL)
    cached = {p.name: p.stat().st_mtime_ns for p in (run / "detections").iterdir()}
    return out, result.output, cached


def test_save_every_keeps_each_epoch_as_weights_only(trained):
    from deeplesion_cli.frcnn import checkpoint as ckpt

    _, run = trained
    kept = sorted((run / "epochs").iterdir())
    assert [p.name for p in kept] == ["epoch_0001.pt", "epoch_0002.pt"]
    for epoch, path in enumerate(kept, start=1):
        state = ckpt.load(path)
        assert state["kind"] == "weights" and state["epoch"] == epoch
        assert not any(key in state for key in ckpt.TRAINING_ONLY)
        # the size of best.pt (docs/formats.md): weights and what predicting needs
        assert abs(path.stat().st_size - (run / "best.pt").stat().st_size) < 10_000
    assert (run / "last.pt").stat().st_size > 2 * kept[0].stat().st_size
    listed = runs.list_checkpoints(run)
    assert [(c.checkpoint.name, c.unit, c.step, c.backend) for c in listed] == [
        ("epoch_0001.pt", "epoch", 1, "frcnn"), ("epoch_0002.pt", "epoch", 2, "frcnn")]
    assert ckpt.save_epoch_due(10, 25, 10) and ckpt.save_epoch_due(25, 25, 10)
    assert not ckpt.save_epoch_due(11, 25, 10) and not ckpt.save_epoch_due(25, 25, None)


def test_every_checkpoint_on_each_split_equals_predict_then_eval(trained, scored, tmp_path):
    prepared, run = trained
    out, output, cached = scored
    rows = report_checkpoints.read_checkpoints_csv(out / "checkpoints.csv")
    assert [(r["checkpoint"], r["unit"], r["step"], r["split"]) for r in rows] == [
        ("epoch_0001.pt", "epoch", 1, "train"), ("epoch_0001.pt", "epoch", 1, "test"),
        ("epoch_0002.pt", "epoch", 2, "train"), ("epoch_0002.pt", "epoch", 2, "test")]
    assert {r["run"] for r in rows} == {"tiny"} and {r["backend"] for r in rows} == {"frcnn"}
    assert [r["n_images"] for r in rows] == [4, 6, 4, 6]
    assert len(cached) == 4 and "4 checkpoint x split predicted, 0 reused" in output
    # the manual path on one epoch file: lesion predict frcnn + lesion eval --pred
    dets = tmp_path / "dets.json"
    _invoke("predict", "frcnn", run / "epochs" / "epoch_0002.pt", prepared, "--split", "test",
            "-o", dets, "--workers", "0")
    manual = json.loads(_invoke("eval", prepared, "--pred", f"tiny={dets}", *EVAL,
                                "--json").stdout)["runs"]["tiny"]
    row = rows[3]
    assert row["n_detections"] == manual["n_detections"] > 0
    assert row["coco_ap50"] == manual["coco"]["AP50"]
    assert row["seed_map"] == manual["seed_protocol"]["map"] > 0
    assert row["voc_ap"] == manual["voc"]["map_all"]
    assert row["darknet_map"] == manual["voc"]["darknet_map"]
    assert row["mean_iou_tp"] == manual["at_score"]["mean_iou_tp"]
    [cache] = [n for n in cached if n.startswith("test-epoch_0002.pt-")]
    assert json.loads((run / "detections" / cache).read_text()) == json.loads(dets.read_text())
    # checkpoints.json: the rows, the eval settings, the best per run and split (seed mAP)
    doc = json.loads((out / "checkpoints.json").read_text())
    assert doc["rows"] == rows and doc["options"]["iou"] == 0.1 and doc["splits"] == ["train",
                                                                                      "test"]
    for split in ("train", "test"):
        mine = [r for r in rows if r["split"] == split]
        top = max(r["seed_map"] for r in mine)
        assert doc["best"]["tiny"][split] == next(r for r in mine if r["seed_map"] == top)
        assert f"best tiny on {split}: {doc['best']['tiny'][split]['checkpoint']}" in output


def test_a_rerun_predicts_nothing(trained, scored):
    prepared, run = trained
    out, _, cached = scored
    before = (out / "checkpoints.csv").read_text()
    result = _invoke("eval", prepared, "--run", f"tiny={run}", "--checkpoint", "every",
                     "--split", "train,test", "--out", out, *EVAL)   # comma-separated splits
    assert "0 checkpoint x split predicted, 4 reused" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (run / "detections").iterdir()} == cached
    assert (out / "checkpoints.csv").read_text() == before


def test_report_draws_checkpoints_and_lists_the_best(scored, tmp_path):
    out, _, _ = scored
    _invoke("report", "--eval", out, "--out", tmp_path / "report")
    png = tmp_path / "report" / "eval" / "checkpoints.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "report" / "index.md").read_text()
    assert "## Checkpoints: mAP over training" in index and "eval/checkpoints.png" in index
    best = (tmp_path / "report" / "tables" / "checkpoints_best.csv").read_text().splitlines()
    assert best[0].startswith("run,split,checkpoint,unit,step,seed mAP")
    assert len(best) == 3 and best[1].startswith("tiny,train,epoch_000")
    # the figure: x in the rows' unit at whole numbers, train solid and test dashed
    fig = report_checkpoints.checkpoint_figure(
        report_checkpoints.read_checkpoints_csv(out / "checkpoints.csv"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_title() == "tiny: seed-protocol mAP"
    assert {line.get_label(): line.get_linestyle() for line in ax.get_lines()} == {
        "train": "-", "test": "--"}
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_runs_without_checkpoints_and_bad_options_are_refused(trained, tmp_path):
    prepared, run = trained
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "args.json", bare / "args.json")   # a run trained without --save-every
    result = _invoke("eval", prepared, "--run", f"bare={bare}", "--checkpoint", "every",
                     "--out", tmp_path / "o", code=2)
    assert "no epochs/epoch_*.pt" in result.output and "--save-every N" in result.output
    assert not (tmp_path / "o" / "checkpoints.csv").exists()
    result = _invoke("eval", prepared, "--run", f"tiny={run}", "--checkpoint", "every", code=2)
    assert "give --out DIR" in result.output
    result = _invoke("eval", prepared, "--run", f"tiny={run}", "--split", "train",
                     "--split", "test", code=2)
    assert "one split at a time" in result.output
    result = _invoke("eval", prepared, "--run", f"tiny={run}", "--checkpoint", "every",
                     "--out", tmp_path / "o", "--bootstrap", "10", code=2)
    assert "--bootstrap 10" in result.output
    assert parse_splits(["train,test", "val", "test"]) == ("train", "test", "val")
    assert parse_splits(None) == ("train", "test")


# ----------------------------------------------------------------------------------- darknet

@pytest.fixture(scope="module")
def darknet_run(tmp_path_factory):
    """(prepared folder, a real pjreddie run of 2 iterations: backup/tiny_final.weights)."""
    base = darknet_safe_tmp(tmp_path_factory, "curves_darknet")
    prepared = small_universal_prepared(base)
    cfg = base / "tiny.cfg"
    _invoke("cfg", prepared, "--arch", "yolov3-tiny", "--size", "96", "--batch", "2",
            "--subdivisions", "1", "--max-batches", "2", "-o", cfg)
    _invoke("train", "yolo", prepared, "--cfg", cfg, "--out", base / "yolo")
    return prepared, base / "yolo"


@pytest.mark.darknet
def test_darknet_checkpoints_in_iteration_order_final_last(darknet_run, tmp_path):
    prepared, run = darknet_run
    [final] = runs.list_checkpoints(run)   # 2 iterations: pjreddie saved _final only
    assert (final.checkpoint.name, final.unit, final.step) == ("tiny_final.weights",
                                                                "iteration", 2)
    assert final.cfg == run / "tiny.cfg" and final.darknet.endswith("darknet")
    # the files a longer run leaves (darknet's names), made from the real weights
    copy = tmp_path / "long"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("detections"))
    args = json.loads((copy / "args.json").read_text())
    args["options"]["max_batches"] = 20000
    (copy / "args.json").write_text(json.dumps(args))
    weights = copy / "backup" / "tiny_final.weights"
    for name in ("tiny_100.weights", "tiny_900.weights", "tiny_1000.weights",
                 "tiny_10000.weights", "tiny_20000.weights", "tiny_last.weights",
                 "tiny_best.weights", "tiny.backup"):
        shutil.copy(weights, copy / "backup" / name)
    listed = runs.list_checkpoints(copy)
    assert [(c.checkpoint.name, c.step) for c in listed] == [
        ("tiny_100.weights", 100), ("tiny_900.weights", 900), ("tiny_1000.weights", 1000),
        ("tiny_10000.weights", 10000), ("tiny_final.weights", 20000)]   # _20000 is _final
    # no max_batches in args.json: the run's cfg says it
    del args["options"]["max_batches"]
    (copy / "args.json").write_text(json.dumps(args))
    assert {c.checkpoint.name: c.step for c in runs.list_checkpoints(copy)}[
        "tiny_final.weights"] == 2
    # nothing saved yet: refused, saying when darknet saves
    for path in (copy / "backup").iterdir():
        path.unlink()
    with pytest.raises(runs.RunFolderError, match="every 100 up to 1,000"):
        runs.list_checkpoints(copy)


@pytest.mark.darknet
def test_darknet_run_scored_over_training(darknet_run, tmp_path):
    prepared, run = darknet_run
    curves = score_checkpoints({"yolo": run}, prepared, splits=("test",), out_dir=tmp_path,
                               show_progress=False)
    [row] = curves.rows
    assert (row["backend"], row["checkpoint"], row["unit"], row["step"], row["split"]) == (
        "darknet", "tiny_final.weights", "iteration", 2, "test")
    [cache] = (run / "detections").glob("test-tiny_final.weights-*.json")
    assert row["n_detections"] == len(json.loads(cache.read_text()))
    assert curves.predicted == 1 and curves.best["yolo"]["test"] in (row, None)
    again = score_checkpoints({"yolo": run}, prepared, splits=("test",), out_dir=tmp_path,
                              show_progress=False)
    assert (again.predicted, again.reused, again.rows) == (0, 1, curves.rows)
