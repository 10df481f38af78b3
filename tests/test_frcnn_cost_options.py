"""The Faster R-CNN options that govern cost and early learning: RoIs per image, RPN proposals in
training, RPN score threshold, CPU threads. Each reaches torchvision's modules, is recorded in
args.json and the checkpoint, is kept by ``--resume`` (a change is refused), and is accepted in a
matrix TOML."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from deeplesion_cli import matrix as mx
from deeplesion_cli.cli import main
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn import engine, threads
from deeplesion_cli.frcnn.model import build_model

COST = ["--rois-per-image", "16", "--rpn-pre-nms-train", "120", "--rpn-post-nms-train", "40",
        "--rpn-post-nms-test", "200", "--rpn-score-thresh", "0", "--nms-iou", "0.4",
        "--threads", "1"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("cost")
    synthesize(root / "synth", patients=4, seed=3, size_px=96, workers=1, show_progress=False)
    prepare(root / "synth", root / "prep",
            PrepareOptions(task="universal", split="patient", ratios=(0.5, 0.25, 0.25)),
            show_progress=False)
    return root / "prep"


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    result = CliRunner().invoke(main, [
        "train", "frcnn", str(prepared), "--out", str(run_dir), "--arch", "mobilenet_v3_fpn",
        "--size", "96", "--epochs", "1", "--batch-size", "4", "--workers", "0",
        "--augment", "none", "--eval-train-images", "0", "--deterministic", *COST])
    assert result.exit_code == 0, result.output
    return run_dir


def test_build_model_passes_the_options_to_torchvision():
    model = build_model("mobilenet_v3_fpn", 2, size_px=96, rois_per_image=16,
                        rpn_pre_nms_train=120, rpn_post_nms_train=40, rpn_score_thresh=0.0)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert model.rpn._pre_nms_top_n == {"training": 120, "testing": 1000}
    assert model.rpn._post_nms_top_n == {"training": 40, "testing": 1000}
    assert model.rpn.score_thresh == 0.0
    # defaults: torchvision's, with mobilenet's own 0.05 score threshold
    default = build_model("mobilenet_v3_fpn", 2, size_px=96)
    assert default.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert default.rpn._post_nms_top_n["training"] == 2000
    assert default.rpn.score_thresh == 0.05
    assert build_model("resnet50_fpn", 2, size_px=96).rpn.score_thresh == 0.0
    with pytest.raises(ValueError, match="rois_per_image"):
        build_model("mobilenet_v3_fpn", 2, rois_per_image=0)
    with pytest.raises(ValueError, match="rpn_score_thresh"):
        build_model("mobilenet_v3_fpn", 2, rpn_score_thresh=1.0)


def test_training_samples_that_many_rois(prepared):
    """The box head really sees rois_per_image proposals per image (proposals of an untrained
    RPN are plentiful, so the sampler fills its quota)."""
    from deeplesion_cli.frcnn.data import PreparedSplit, collate, to_model_input

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_fpn", 2, size_px=96, rois_per_image=16,
                        rpn_post_nms_train=40, rpn_score_thresh=0.0).train()
    seen = []
    original = model.roi_heads.select_training_samples

    def spy(proposals, targets):
        out = original(proposals, targets)
        seen.append([len(p) for p in out[0]])
        return out

    model.roi_heads.select_training_samples = spy
    images, targets = collate([PreparedSplit(prepared, "train")[i] for i in range(2)])
    inputs, tgts = to_model_input(images, targets)
    model(inputs, tgts)
    assert seen == [[16, 16]]


def test_options_are_recorded_in_args_json_and_the_checkpoint(run):
    args = json.loads((run / "args.json").read_text())
    options = args["options"]
    assert (options["rois_per_image"], options["rpn_pre_nms_train"],
            options["rpn_post_nms_train"], options["rpn_post_nms_test"],
            options["rpn_score_thresh"], options["nms_iou"], options["threads"]) == (
        16, 120, 40, 200, 0.0, 0.4, 1)
    assert args["threads"] == 1
    keys = ("rois_per_image", "rpn_pre_nms_train", "rpn_post_nms_train", "rpn_post_nms_test",
            "rpn_score_thresh", "nms_iou")
    assert [args["model_args"][k] for k in keys] == [16, 120, 40, 200, 0.0, 0.4]
    # the model rebuilt for prediction keeps the inference settings
    model = ckpt.model_from_checkpoint(ckpt.load(run / "last.pt"))
    assert model.rpn.score_thresh == 0.0
    assert model.rpn._post_nms_top_n["testing"] == 200
    assert model.roi_heads.nms_thresh == 0.4
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert ckpt.model_from_checkpoint(ckpt.load(run / "last.pt"),
                                      nms_iou=0.3).roi_heads.nms_thresh == 0.3
    assert "1 CPU thread(s)" in (run / "train.log").read_text()


@pytest.mark.parametrize("flag,value", [("--rois-per-image", "32"),
                                        ("--rpn-pre-nms-train", "500"),
                                        ("--rpn-post-nms-train", "80"),
                                        ("--rpn-post-nms-test", "1000"),
                                        ("--rpn-score-thresh", "0.05"),
                                        ("--nms-iou", "0.5")])
def test_resume_refuses_a_changed_cost_option(prepared, run, flag, value):
    result = CliRunner().invoke(main, ["train", "frcnn", str(prepared), "--out", str(run),
                                       "--resume", "--epochs", "2", flag, value])
    assert result.exit_code == 2, result.output
    assert flag in result.output and "a resumed run keeps its options" in result.output
    assert ckpt.load(run / "last.pt")["epoch"] == 1  # nothing trained


def test_resume_keeps_the_options_and_the_thread_count(prepared, run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    # another thread count changes float rounding: refused, naming the run's count
    result = CliRunner().invoke(main, ["train", "frcnn", str(prepared), "--out", str(copy),
                                       "--resume", "--epochs", "2", "--threads", "2"])
    assert result.exit_code == 2, result.output
    assert "--threads 2 differs from the 1 thread(s) this run was trained with" in result.output
    threads_before = torch.get_num_threads()
    result = CliRunner().invoke(main, ["train", "frcnn", str(prepared), "--out", str(copy),
                                       "--resume", "--epochs", "2", "--threads", "1",
                                       "--rois-per-image", "16"])  # same values: accepted
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads_before  # restored after the call
    args = json.loads((copy / "args.json").read_text())
    assert args["threads"] == 1 and args["options"]["threads"] == 1
    assert args["options"]["rois_per_image"] == 16
    state = ckpt.load(copy / "last.pt")
    assert state["epoch"] == 2 and state["threads"] == 1


def test_a_chosen_thread_count_is_recorded_and_kept_on_resume(prepared, tmp_path, monkeypatch):
    """Without --threads the count is chosen from the cores (here: 3 of a pretend machine) and
    recorded; resumed on a machine with other cores, the run keeps it."""
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    options = engine.TrainOptions(arch="mobilenet_v3_fpn", size_px=96, epochs=2, batch_size=4,
                                  workers=0, augment="none", eval_train_images=0)
    engine.train(prepared, tmp_path / "r", options, stop_after=1, show_progress=False)
    assert ckpt.load(tmp_path / "r" / "last.pt")["threads"] == 3
    assert json.loads((tmp_path / "r" / "args.json").read_text())["options"]["threads"] is None
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n, original=torch.set_num_threads: (seen.append(n), original(n)))
    engine.train(prepared, tmp_path / "r", resume=True, show_progress=False)
    assert seen[0] == 3 and ckpt.load(tmp_path / "r" / "last.pt")["threads"] == 3


@pytest.mark.parametrize("cores,ranks,workers,expected", [
    (2, 1, 0, 2), (2, 1, 2, 2), (1, 1, 2, 1), (16, 1, 2, 15), (16, 4, 2, 3), (16, 4, 0, 4),
    (2, 4, 0, 1), (8, 8, 2, 1)])
def test_default_threads_share_the_cores(cores, ranks, workers, expected):
    assert threads.default_threads(cores, ranks, workers) == expected


def test_default_threads_follow_torchrun_local_ranks(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.resolve_threads(None, 0, world_size=8) == 2   # 4 of the 8 ranks are here
    assert threads.resolve_threads(3, 0, world_size=8) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.resolve_threads(None, 0) == 8


def test_matrix_toml_takes_the_options_and_prints_them(prepared, tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text(f'prepared = "{prepared}"\nout = "{tmp_path / "out"}"\n'
                    '[[experiment]]\nname = "cpu"\nbackend = "frcnn"\nepochs = 1\n'
                    'rois_per_image = 64\nrpn_pre_nms_train = 300\nrpn_post_nms_train = 300\n'
                    'rpn_score_thresh = 0.0\nthreads = 1\n')
    matrix = mx.load_matrix(toml)
    options = matrix.experiments[0].options
    assert (options.rois_per_image, options.rpn_pre_nms_train, options.rpn_post_nms_train,
            options.rpn_score_thresh, options.threads) == (64, 300, 300, 0.0, 1)
    result = CliRunner().invoke(main, ["matrix", str(toml), "--print"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "train frcnn" in x)
    for words in ("--rois-per-image 64", "--rpn-pre-nms-train 300", "--rpn-post-nms-train 300",
                  "--rpn-score-thresh 0", "--threads 1"):
        assert words in line, line
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace("rpn_score_thresh = 0.0", "rpn_score_thresh = 1.5"))
    with pytest.raises(mx.MatrixError, match="rpn_score_thresh"):
        mx.load_matrix(bad)
    bad.write_text(toml.read_text().replace("rois_per_image = 64", "rois_per_image = 0"))
    with pytest.raises(mx.MatrixError, match="rois_per_image"):
        mx.load_matrix(bad)


def test_a_single_torchrun_rank_trains_in_a_process_group(prepared, tmp_path):
    """`torchrun --nproc_per_node 1` joins a (gloo here, NCCL on GPUs) process group and wraps the
    model in DDP: the one-device check of the distributed path (benchmarks/gpu_check.py)."""
    import os
    import subprocess
    import sys

    run = tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "1", "-m", "deeplesion_cli", "train", "frcnn", str(prepared), "--out", str(run),
           "--arch", "mobilenet_v3_fpn", "--size", "96", "--epochs", "1", "--workers", "0",
           "--augment", "none", "--eval-train-images", "0", "--device", "cpu", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: gloo process group, 1 rank(s)" in (run / "train.log").read_text()
    assert ckpt.load(run / "last.pt")["epoch"] == 1
    # the weights are stored without DDP's "module." prefix: predict rebuilds the model from them
    assert not any(k.startswith("module.") for k in ckpt.load(run / "last.pt")["model"])


def test_predict_nms_iou_defaults_to_the_run_and_can_be_overridden(prepared, run, tmp_path):
    from deeplesion_cli.frcnn.predict import predict

    def boxes(nms_iou):
        out = tmp_path / f"nms{nms_iou}.json"
        predict(run, prepared, out, split="val", nms_iou=nms_iou, show_progress=False)
        return json.loads(out.read_text())

    # the untrained model's boxes overlap a lot: a stricter NMS keeps fewer of them
    run_default, strict, loose = boxes(None), boxes(0.1), boxes(0.9)
    assert len(strict) < len(run_default) <= len(loose)
    result = CliRunner().invoke(main, ["predict", "frcnn", str(run), str(prepared), "--split",
                                       "val", "-o", str(tmp_path / "cli.json"), "--nms-iou",
                                       "0.1", "--workers", "0", "--draw", "1"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "cli.json").read_text())) == len(strict)
    assert len(list((tmp_path / "cli_draw").glob("*.png"))) == 1   # --draw 1
