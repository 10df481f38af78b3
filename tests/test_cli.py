"""The command line through click's CliRunner and as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from deeplesion_cli.cli import main


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from deeplesion_cli.cli import main\n"
        "for args in (['--help'], ['prepare', '--help'], ['synth', '--help'], ['demo', '--help'],"
        " ['eval', '--help'], ['anchors', '--help'], ['cfg', '--help'], ['train', '--help'],"
        " ['train', 'yolo', '--help'], ['predict', '--help'], ['predict', 'yolo', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "    assert 'Example' in result.output, args\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print(len(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "deeplesion_cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("lesion, version ")


def test_synth_then_prepare_json_through_the_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synth", str(tmp_path / "dl"), "--patients", "4", "--size", "96",
                                  "--workers", "1", "--newline", "lf"])
    assert result.exit_code == 0, result.output
    assert b"\r\n" not in (tmp_path / "dl" / "DL_info.csv").read_bytes()
    result = runner.invoke(main, ["prepare", str(tmp_path / "dl"), str(tmp_path / "p"),
                                  "--task", "universal", "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest == json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["options"]["split"] == "official"


def test_bad_options_are_usage_errors(tmp_path):
    (tmp_path / "dl").mkdir()
    runner = CliRunner()
    for args, message in [
        (["--window", "300,100"], "LO must be below HI"),
        (["--window", "-1024,3071", "--window", "-175,275"], "give one window or three"),
        (["--context", "3", "--window", "a,b"], "expected LO,HI"),
        (["--ratios", "0.5,0.5"], "three non-negative numbers"),
    ]:
        result = runner.invoke(main, ["prepare", str(tmp_path / "dl"), str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    result = runner.invoke(main, ["prepare", str(tmp_path / "dl"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "DL_info.csv: not found" in result.output


def test_demo_runs_end_to_end(tmp_path):
    import json
    import shutil

    out = tmp_path / "demo"
    args = ["demo", str(out), "--patients", "8", "--epochs", "1", "--size", "64",
            "--darknet-iterations", "2", "--workers", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    backends = {"frcnn", "yolo"} if shutil.which("darknet") else {"frcnn"}
    assert set(metrics["runs"]) == backends
    for name in backends:
        dets = json.loads((out / f"{name}.json").read_text())
        assert metrics["runs"][name]["n_detections"] == len(dets)
    index = (out / "report" / "index.md").read_text()
    assert "frcnn" in index and str(out / "report" / "index.md") in result.output
    assert (out / "runs" / "frcnn" / "last.pt").is_file()
    assert "lesion train frcnn" in result.output  # each step shows its command
    import csv

    report = out / "report"
    for name in backends:
        assert (report / "runs" / f"{name}_curves.png").is_file()
    assert (report / "eval" / "froc.png").is_file()
    with open(report / "tables" / "backends.csv", newline="") as f:
        table = {row["run"]: row for row in csv.DictReader(f)}
    for name in backends:
        coco = metrics["runs"][name]["coco"]
        assert float(table[name]["AP50"]) == coco["AP50"]
        assert float(table[name]["FROC mean@0.5-4"]) == \
            metrics["runs"][name]["froc"]["mean_sens_0.5_4"]
    # a second run reuses everything and trains nothing
    mtime = (out / "runs" / "frcnn" / "last.pt").stat().st_mtime_ns
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "already trained" in result.output
    assert (out / "runs" / "frcnn" / "last.pt").stat().st_mtime_ns == mtime


def test_darknet_unsafe_output_path_is_warned_about(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["synth", str(tmp_path / "dl"), "--patients", "3", "--size", "64",
                                "--workers", "1"]).exit_code == 0
    result = runner.invoke(main, ["prepare", str(tmp_path / "dl"), str(tmp_path / "raw" / "p"),
                                  "--task", "universal", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "contains 'raw'" in result.stderr and "wrong place" in result.stderr


def test_progress_prints_plain_lines_when_piped():
    import io

    from deeplesion_cli.progress import Progress

    stream = io.StringIO()
    with Progress(4, "prepare", unit="images", interval_s=0.0, stream=stream) as progress:
        for _ in range(4):
            progress.advance()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("prepare: 1/4 images (25.0%), ") and "images/s, ETA" in lines[0]
    assert lines[-1].startswith("prepare: 4/4 images (100.0%)") and "ETA" not in lines[-1]
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in a log
