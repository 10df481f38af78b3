"""`lesion train frcnn` / `lesion predict frcnn` on a small synthetic prepared set, on the CPU.

Real torchvision models (mobilenet_v3_fpn at 96-128 px, no pretrained weights), real data from
`lesion synth` + `lesion prepare`, the real evaluator. Kept small so the file runs in about a
minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplesion_cli import runlog
from deeplesion_cli.cli import main
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn import engine
from deeplesion_cli.frcnn.data import PreparedSplit, collate, to_model_input
from deeplesion_cli.frcnn.model import build_model

#: tiny runs: few proposals and sampled RoIs (the box head's cost is linear in them; what these
#: tests check does not depend on how many)
FAST = dict(arch="mobilenet_v3_fpn", size_px=96, batch_size=4, workers=0, augment="none",
            eval_train_images=4, deterministic=True, lr=1e-3, rois_per_image=64,
            rpn_pre_nms_train=200, rpn_post_nms_train=200, rpn_post_nms_test=100)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("frcnn")
    synthesize(root / "synth", patients=6, seed=11, size_px=96, workers=1, show_progress=False)
    result = prepare(root / "synth", root / "prep",
                     PrepareOptions(task="universal", split="patient", ratios=(0.5, 0.25, 0.25)),
                     show_progress=False)
    counts = result.manifest["counts"]
    assert all(counts[s]["images"] > 0 for s in ("train", "val", "test")), counts
    return root / "prep"


@pytest.fixture(scope="module")
def prepared_typed(tmp_path_factory):
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("frcnn_typed")
    synthesize(root / "synth", patients=8, seed=5, size_px=96, workers=1, show_progress=False)
    prepare(root / "synth", root / "prep", PrepareOptions(task="typed", split="patient",
                                                          ratios=(0.5, 0.5, 0.0)),
            show_progress=False)
    return root / "prep"


def test_dataset_items_match_coco(prepared):
    ds = PreparedSplit(prepared, "train")
    coco = json.loads((prepared / "coco" / "train.json").read_text())
    im = sorted(coco["images"], key=lambda i: i["id"])[0]
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape[1:] == (im["height"], im["width"])
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    assert torch.allclose(target["boxes"], want.float())
    assert target["labels"].tolist() == [1] * len(anns)  # category 1 -> label 1 (0: background)
    inputs, _ = to_model_input([image])
    assert inputs[0].shape[0] == 3 and float(inputs[0].max()) <= 1.0


def test_two_steps_lower_the_loss_of_a_fixed_batch(prepared):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_fpn", 2, size_px=96)
    ds = PreparedSplit(prepared, "train")
    images, targets = collate([ds[i] for i in range(4)])
    inputs, tgts = to_model_input(images, targets)

    def fixed_loss():
        torch.manual_seed(123)  # the RPN/ROI samplers draw at random: same draws both times
        model.train()
        with torch.no_grad():
            return float(sum(model(inputs, tgts).values()))

    before = fixed_loss()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(2):
        engine.train_step(model, optimizer, scaler, inputs, tgts)
    after = fixed_loss()
    assert after < before * 0.9, (before, after)


def _state(path: Path) -> dict:
    return ckpt.load(path)["model"]


def test_resume_gives_the_weights_of_an_uninterrupted_run(prepared, tmp_path):
    opts = dict(FAST, augment="seed", scheduler="cosine", warmup_steps=2, eval_train_images=0)
    full = engine.train(prepared, tmp_path / "full", engine.TrainOptions(**opts, epochs=2),
                        show_progress=False)
    assert full.epochs_done == 2
    # interrupted after epoch 1 (the cosine schedule still spans 2 epochs), then resumed
    engine.train(prepared, tmp_path / "split", engine.TrainOptions(**opts, epochs=2),
                 stop_after=1, show_progress=False)
    assert len(runlog.read_metrics(tmp_path / "split" / "metrics.csv")) == 1
    resumed = engine.train(prepared, tmp_path / "split", resume=True, show_progress=False)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_done == 2
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_full = runlog.read_metrics(tmp_path / "full" / "metrics.csv")
    rows_split = runlog.read_metrics(tmp_path / "split" / "metrics.csv")
    assert [r["step"] for r in rows_full] == [r["step"] for r in rows_split]
    assert [r["loss"] for r in rows_full] == [r["loss"] for r in rows_split]
    assert rows_full[0]["loss"] != rows_full[1]["loss"]
    # optimiser state restored too: the Adam step counts match
    oa = ckpt.load(tmp_path / "full" / "last.pt")["optimizer"]["state"]
    ob = ckpt.load(tmp_path / "split" / "last.pt")["optimizer"]["state"]
    assert all(torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"]) for k in oa)


def test_resume_with_more_epochs_equals_a_longer_run_without_schedule(prepared, tmp_path):
    opts = dict(FAST, augment="none", balanced=True, eval_train_images=0)
    engine.train(prepared, tmp_path / "full", engine.TrainOptions(**opts, epochs=2),
                 show_progress=False)
    engine.train(prepared, tmp_path / "split", engine.TrainOptions(**opts, epochs=1),
                 show_progress=False)
    engine.train(prepared, tmp_path / "split", resume=True, overrides={"epochs": 2},
                 show_progress=False)
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = _state(tmp_path / "split" / "best.pt") if False else None
    assert one is None


def test_resume_refuses_changed_options_and_reruns_are_refused(prepared, tmp_path):
    engine.train(prepared, tmp_path / "r", engine.TrainOptions(**FAST, epochs=1),
                 show_progress=False)
    with pytest.raises(engine.OptionError, match="--lr"):
        engine.train(prepared, tmp_path / "r", resume=True, overrides={"lr": 0.5},
                     show_progress=False)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "frcnn", str(prepared), "--out", str(tmp_path / "r"),
                                  "--epochs", "1"])
    assert result.exit_code == 2 and "--resume" in result.output
    # resuming a finished run with the same epochs does nothing and says so
    result = runner.invoke(main, ["train", "frcnn", str(prepared), "--out", str(tmp_path / "r"),
                                  "--resume"])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output


def test_metrics_csv_and_run_folder(prepared, tmp_path):
    from deeplesion_cli import steps

    run = tmp_path / "run"
    # the step behind `lesion train frcnn`: engine.train, drawing curves.png after each epoch
    result = steps.train_frcnn(prepared, run, engine.TrainOptions(**FAST, epochs=2, select="map"),
                               show_progress=False)
    for name in ("args.json", "metrics.csv", "train.log", "last.pt", "curves.png"):
        assert (run / name).is_file(), name
    rows = runlog.read_metrics(run / "metrics.csv")
    n_train = len(PreparedSplit(prepared, "train"))
    steps = -(-n_train // 4)
    assert [r["step"] for r in rows] == [steps, 2 * steps]
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert [r["images"] for r in rows] == [n_train, 2 * n_train]
    for r in rows:
        parts = sum(r[k] for k in engine.LOSS_PARTS)
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
        assert 0 <= r["data_wait"] <= 1
        for prefix in ("train", "val"):
            for key in ("mAP50", "mAP75", "mAP", "froc_sens4"):
                v = r[f"{prefix}_{key}"]
                assert v is not None and 0 <= v <= 1
    args = json.loads((run / "args.json").read_text())
    assert args["options"]["arch"] == "mobilenet_v3_fpn" and args["train_images"] == n_train
    # best.pt holds the epoch with the best val mAP
    best_epoch = 1 + int(np.argmax([r["val_mAP"] for r in rows]))
    if result.best_epoch is not None:
        assert result.best_epoch == best_epoch
        assert ckpt.load(run / "best.pt")["epoch"] == best_epoch


def test_on_epoch_sees_each_epoch_after_it_is_saved(prepared, tmp_path):
    run = tmp_path / "ev"
    seen = []

    def on_epoch(event):
        seen.append((event.stats.epoch, [s.epoch for s in event.history],
                     len(runlog.read_metrics(event.metrics_path)),
                     ckpt.load(event.run_dir / "last.pt")["epoch"], event.run_dir))
        if event.stats.epoch == 1:
            raise RuntimeError("boom")

    result = engine.train(prepared, run,
                          engine.TrainOptions(**dict(FAST, eval_train_images=0), epochs=2),
                          show_progress=False, on_epoch=on_epoch)
    # called after the epoch's metrics row and last.pt, with the history so far
    assert seen == [(1, [1], 1, 1, run), (2, [1, 2], 2, 2, run)]
    # a failing callback is logged and training goes on; training itself draws nothing
    assert result.epochs_done == 2
    assert "on_epoch after epoch 1 failed: boom" in (run / "train.log").read_text()
    assert not (run / "curves.png").exists()


def test_balanced_epoch_length_follows_the_largest_class(prepared_typed, tmp_path):
    ds = PreparedSplit(prepared_typed, "train")
    classes = ds.image_classes()
    per_class = np.bincount([c for cs in classes for c in cs])
    per_class = per_class[per_class > 0]
    expected = len(per_class) * int(per_class.max())
    engine.train(prepared_typed, tmp_path / "b",
                 engine.TrainOptions(**dict(FAST, batch_size=len(per_class), eval_train_images=0),
                                     epochs=1, balanced=True),
                 show_progress=False)
    rows = runlog.read_metrics(tmp_path / "b" / "metrics.csv")
    assert rows[0]["images"] == expected


def test_train_without_manifest_is_an_input_error_naming_the_file(tmp_path):
    folder = tmp_path / "not_prepared"
    folder.mkdir()
    result = CliRunner().invoke(main, ["train", "frcnn", str(folder), "--out",
                                       str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert str(folder / "manifest.json") in result.output and "not found" in result.output


def test_non_finite_loss_stops_with_a_clear_message(prepared, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "frcnn", str(prepared), "--out", str(tmp_path / "nan"),
                                  "--arch", "mobilenet_v3_fpn", "--size", "96", "--epochs", "1",
                                  "--workers", "0", "--augment", "none", "--optimizer", "sgd",
                                  "--lr", "1e30", "--batch-size", "2"])
    assert result.exit_code == 1, result.output
    assert "non-finite loss" in result.output and "epoch 1, step" in result.output
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_predict_output_passes_lesion_eval(prepared, tmp_path):
    run = tmp_path / "p"
    engine.train(prepared, run, engine.TrainOptions(**FAST, epochs=1), show_progress=False)
    runner = CliRunner()
    dets = tmp_path / "dets.json"
    result = runner.invoke(main, ["predict", "frcnn", str(run), str(prepared), "--split", "test",
                                  "-o", str(dets), "--workers", "0", "--max-dets", "7"])
    assert result.exit_code == 0, result.output
    detections = json.loads(dets.read_text())
    coco = json.loads((prepared / "coco" / "test.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    assert detections, "an untrained-but-trained-a-bit model still proposes boxes"
    per_image: dict[int, int] = {}
    for d in detections:
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        assert d["category_id"] == 1 and 0 <= d["score"] <= 1
        assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert max(per_image.values()) <= 7
    result = runner.invoke(main, ["eval", str(prepared), str(dets), "--split", "test",
                                  "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["runs"]["dets"]["n_detections"] == len(detections)
    # the library's inference equals what predict wrote
    from deeplesion_cli.frcnn.predict import infer_raw

    state = ckpt.load(run / "last.pt")
    model = ckpt.model_from_checkpoint(state, detections_per_img=7)
    raw = infer_raw(model, PreparedSplit(prepared, "test"), torch.device("cpu"), batch_size=3)
    assert len(raw[0]) == len(detections)


def test_amp_run_and_predict_refuses_other_classes(prepared, prepared_typed, tmp_path):
    run = tmp_path / "c"
    # --amp on the CPU: bfloat16 autocast for training, float32 evaluation
    # bfloat16 on a CPU is slow: fewer proposals and sampled RoIs still keep the epoch short
    cheap = dict(FAST, eval_train_images=0, rois_per_image=32, rpn_pre_nms_train=100,
                 rpn_post_nms_train=100, rpn_post_nms_test=50)
    engine.train(prepared, run, engine.TrainOptions(**cheap, epochs=1, amp=True),
                 show_progress=False)
    row = runlog.read_metrics(run / "metrics.csv")[0]
    assert np.isfinite(row["loss"]) and row["val_mAP50"] is not None
    result = CliRunner().invoke(main, ["predict", "frcnn", str(run / "last.pt"),
                                       str(prepared_typed), "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "classes" in result.output


def test_weights_file_through_the_cli(prepared, tmp_path):
    torch.manual_seed(42)
    source = build_model("mobilenet_v3_fpn", 2, size_px=96)
    weights = tmp_path / "init.pth"
    torch.save(source.state_dict(), weights)
    run = tmp_path / "w"
    result = CliRunner().invoke(main, [
        "train", "frcnn", str(prepared), "--out", str(run), "--arch", "mobilenet_v3_fpn",
        "--size", "96", "--epochs", "1", "--workers", "0", "--augment", "none",
        "--weights", str(weights), "--lr", "1e-30", "--eval-train-images", "0"])
    assert result.exit_code == 0, result.output
    trained = _state(run / "last.pt")
    params = dict(source.named_parameters())
    # Adam with lr 1e-30 moves a weight by about 1e-30: the run started from the file's weights
    # (a fresh initialisation would differ by about 1e-2)
    for name, p in params.items():
        assert torch.allclose(trained[name], p.detach(), rtol=1e-6, atol=1e-25), name
    bad = tmp_path / "bad.pth"
    torch.save(build_model("vgg16_uld", 2, size_px=96).state_dict(), bad)
    result = CliRunner().invoke(main, [
        "train", "frcnn", str(prepared), "--out", str(tmp_path / "w2"), "--arch",
        "mobilenet_v3_fpn", "--size", "96", "--epochs", "1", "--weights", str(bad)])
    assert result.exit_code == 2 and "bad.pth" in result.output


def test_torchrun_two_processes_share_an_epoch(prepared, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "deeplesion_cli", "train",
           "frcnn", str(prepared), "--out", str(run), "--arch", "mobilenet_v3_fpn", "--size",
           "96", "--epochs", "1", "--workers", "0", "--augment", "none", "--batch-size", "2",
           "--eval-train-images", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = json.loads((run / "args.json").read_text())
    assert args["world_size"] == 2
    rows = runlog.read_metrics(run / "metrics.csv")
    n_train = len(PreparedSplit(prepared, "train"))
    # DistributedSampler pads to an even count: every image once, at most one twice
    assert rows[0]["images"] == n_train + n_train % 2
    assert rows[0]["step"] == -(-((n_train + 1) // 2) // 2)
    assert rows[0]["val_mAP50"] is not None
