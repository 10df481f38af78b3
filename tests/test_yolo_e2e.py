"""The darknet path end to end through the CLI, with Debian's real darknet on CPU:
lesion cfg -> lesion train yolo -> lesion predict yolo -> lesion eval."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deeplesion_cli import runlog
from deeplesion_cli.cli import main
from deeplesion_cli.darknet.cfg import check_cfg, errors, parse_cfg
from deeplesion_cli.formats.groundtruth import load_ground_truth
from deeplesion_cli.formats.detections import read_detections

ITERATIONS = 6


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("yolo_e2e")
    runner = CliRunner()
    result = runner.invoke(main, ["synth", str(base / "dl"), "--patients", "4", "--size", "128",
                                  "--workers", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["prepare", str(base / "dl"), str(base / "prep"), "--task",
                                  "universal", "--workers", "2"])
    assert result.exit_code == 0, result.output
    return base, base / "prep"


@pytest.mark.darknet
def test_cfg_train_predict_eval(prepared):
    base, prep = prepared
    runner = CliRunner()
    cfg = base / "tiny.cfg"
    result = runner.invoke(main, ["cfg", str(prep), "--arch", "yolov3-tiny", "--size", "128",
                                  "--batch", "2", "--subdivisions", "1", "--max-batches",
                                  str(ITERATIONS), "-o", str(cfg)])
    assert result.exit_code == 0, result.output
    parsed = parse_cfg(cfg.read_text())
    assert errors(check_cfg(parsed, data_classes=1)) == []
    assert [s.int("classes") for _, s in parsed.of_type("yolo")] == [1, 1]
    assert runner.invoke(main, ["cfg", "--check", str(cfg), "--data",
                                str(prep / "obj.data")]).exit_code == 0

    run = base / "run"
    result = runner.invoke(main, ["train", "yolo", str(prep), "--cfg", str(cfg), "--out",
                                  str(run)])
    assert result.exit_code == 0, result.output
    weights = run / "backup" / "tiny_final.weights"
    assert weights.is_file() and weights.stat().st_size > 1_000_000
    rows = runlog.read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert all(r["loss"] is not None and r["loss"] >= 0 for r in rows)

    dets = base / "yolo.json"
    result = runner.invoke(main, ["predict", "yolo", str(prep), "--cfg", str(cfg), "--weights",
                                  str(weights), "--split", "test", "-o", str(dets), "--draw", "2"])
    assert result.exit_code == 0, result.output
    drawn = sorted((base / "yolo_draw").glob("*.png"))   # --draw 2: two pictures beside it
    assert len(drawn) == 2 and f"drew 2 images to {base / 'yolo_draw'}" in result.output
    gt = load_ground_truth(prep / "coco" / "test.json")
    loaded = read_detections(dets, gt)  # valid COCO results for the test split
    assert (loaded.box_xywh[:, 2:] >= 0).all() and (loaded.score >= 0.005).all()

    result = runner.invoke(main, ["eval", str(prep), str(dets), "--json"])
    assert result.exit_code == 0, result.output
    block = json.loads(result.stdout)["runs"]["yolo"]
    assert block["n_detections"] == len(loaded)
    assert 0.0 <= block["coco"]["AP50"] <= 1.0


def test_missing_darknet_binary_is_a_clear_error(prepared, tmp_path):
    base, prep = prepared
    cfg = tmp_path / "tiny.cfg"
    assert CliRunner().invoke(main, ["cfg", str(prep), "--arch", "yolov3-tiny", "--size", "128",
                                     "-o", str(cfg)]).exit_code == 0
    result = CliRunner().invoke(main, ["train", "yolo", str(prep), "--cfg", str(cfg), "--out",
                                       str(tmp_path / "run"), "--darknet",
                                       str(tmp_path / "no-such-darknet")])
    assert result.exit_code == 2
    assert "no-such-darknet" in result.output and "apt-get install darknet" in result.output
    assert "Traceback" not in result.output


def test_anchors_command_feeds_cfg(prepared, tmp_path):
    base, prep = prepared
    out = tmp_path / "anchors.json"
    result = CliRunner().invoke(main, ["anchors", str(prep), "--clusters", "6", "--size", "128",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["network_size"] == [128, 128] and len(document["anchors"]) == 6
    areas = [w * h for w, h in document["anchors"]]
    assert areas == sorted(areas)
    line = result.output.splitlines()[0]
    assert line.startswith("anchors = ") and len(line.split(",")) == 12
    assert 0 < document["mean_iou"] <= 1
    cfg = tmp_path / "tiny.cfg"
    result = CliRunner().invoke(main, ["cfg", str(prep), "--arch", "yolov3-tiny", "--size", "128",
                                       "--anchors", str(out), "-o", str(cfg)])
    assert result.exit_code == 0, result.output
    from deeplesion_cli.darknet.cfg import parse_cfg

    yolo = [s for _, s in parse_cfg(cfg.read_text()).of_type("yolo")]
    anchors = [float(v) for v in yolo[0].get("anchors").split(",")]
    assert anchors == pytest.approx([v for wh in document["anchors"] for v in wh], abs=0.51)
    assert sorted(i for s in yolo for i in s.ints("mask")) == list(range(6))


def test_cfg_burn_in_follows_max_batches_and_warns(prepared, tmp_path):
    from deeplesion_cli.darknet.cfg import parse_cfg

    _, prep = prepared
    cfg = tmp_path / "short.cfg"
    result = CliRunner().invoke(main, ["cfg", str(prep), "--arch", "yolov3-tiny", "--size", "128",
                                       "--max-batches", "300", "-o", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "burn_in=50, max_batches=300, steps=240,270" in result.output
    assert parse_cfg(cfg.read_text()).net.int("burn_in") == 50
    assert "Warning" not in result.stderr
    # --burn-in sets it; at or beyond max_batches it is written, with a warning
    result = CliRunner().invoke(main, ["cfg", str(prep), "--arch", "yolov3-tiny", "--size", "128",
                                       "--max-batches", "300", "--burn-in", "1000",
                                       "-o", str(cfg)])
    assert result.exit_code == 0, result.output
    assert parse_cfg(cfg.read_text()).net.int("burn_in") == 1000
    assert "burn_in=1000 >= max_batches=300" in result.stderr
    check = CliRunner().invoke(main, ["cfg", "--check", str(cfg)])
    assert check.exit_code == 0 and "warning: [net] burn_in: burn_in=1000 >= max_batches=300" \
        in check.output
    assert "0 error(s), 1 warning(s)" in check.stderr
