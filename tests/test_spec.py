"""The options spec: one declaration per option gives the click option, the check, the TOML value,
the printed command line and the args.json record (deeplesion_cli.spec)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deeplesion_cli import steps
from deeplesion_cli.cli import main
from deeplesion_cli.frcnn.options import RESUMABLE_OVERRIDES, TrainOptions
from deeplesion_cli.spec.core import Option, OptionError, Spec
from deeplesion_cli.spec.darknet import CFG, PREDICT_YOLO, TRAIN_YOLO
from deeplesion_cli.spec.evaluation import EVAL, REPORT
from deeplesion_cli.spec.frcnn import PREDICT_FRCNN, TRAIN_FRCNN


def _command(*path):
    command = main
    for name in path:
        command = command.commands[name]
    return command


def _params(command) -> dict:
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("spec,path", [
    (TRAIN_FRCNN, ("train", "frcnn")), (PREDICT_FRCNN, ("predict", "frcnn")), (CFG, ("cfg",)),
    (TRAIN_YOLO, ("train", "yolo")), (PREDICT_YOLO, ("predict", "yolo")), (EVAL, ("eval",)),
    (REPORT, ("report",))])
def test_every_declared_option_is_the_commands_click_option(spec, path):
    params = _params(_command(*path))
    for option in spec:
        if not option.cli:
            assert option.name not in params
            continue
        param = params[option.name]
        assert option.cli_flag in param.opts, option.name
        if option.kind == "bool":
            assert param.is_flag and param.default is False
        elif option.kind == "int_list" and option.default is not None:
            assert param.default == ",".join(map(str, option.default))
        elif option.kind == "str_list":
            assert param.multiple and tuple(param.default) == tuple(option.default)
        else:
            assert param.default == option.default, option.name


def test_train_options_fields_are_the_spec():
    fields = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    assert fields == {o.name: o.default for o in TRAIN_FRCNN}
    assert RESUMABLE_OVERRIDES == {"epochs", "workers", "device", "eval_batch_size", "log_every",
                                   "test", "save_every"}


def test_bounds_and_choices_come_from_the_declaration():
    with pytest.raises(OptionError, match=r"--rois-per-image must be >= 1 \(got 0\)") as info:
        TrainOptions(rois_per_image=0).check()
    assert info.value.option == "rois_per_image"
    with pytest.raises(OptionError, match=r"--nms-iou must be > 0 and <= 1"):
        TrainOptions(nms_iou=0.0).check()
    with pytest.raises(OptionError, match=r"--rpn-score-thresh must be >= 0 and < 1"):
        TrainOptions(rpn_score_thresh=1.0).check()
    with pytest.raises(OptionError, match=r"--arch 'resnet9': one of resnet50_fpn"):
        TrainOptions(arch="resnet9").check()
    with pytest.raises(OptionError, match=r"--lr-steps \[0, 3\]: every value must be >= 1"):
        TrainOptions(lr_steps=(0, 3)).check()
    TrainOptions(nms_iou=1.0, rpn_score_thresh=0.0).check()  # the closed ends are allowed


def test_toml_values_are_coerced_and_checked(tmp_path):
    assert TRAIN_FRCNN["lr"].from_toml(1, tmp_path) == 1.0
    assert TRAIN_FRCNN["lr_steps"].from_toml([3, 4], tmp_path) == (3, 4)
    assert TRAIN_FRCNN["anchors"].from_toml("a.json", tmp_path) == str(tmp_path / "a.json")
    assert CFG["size"].from_toml("608X416", tmp_path) == "608x416"
    assert TRAIN_YOLO["gpus"].from_toml([0, 1], tmp_path) == "0,1"
    with pytest.raises(ValueError, match="expected an integer, got a string"):
        TRAIN_FRCNN["epochs"].from_toml("3", tmp_path)
    with pytest.raises(ValueError, match=r"^must be >= 1 \(got 0\)$"):
        TRAIN_FRCNN["epochs"].from_toml(0, tmp_path)
    with pytest.raises(ValueError, match="multiples of 32"):
        CFG["size"].from_toml(100, tmp_path)


def _parse(words: list[str]):
    """The click command and parameter values a printed `lesion ...` line gives."""
    assert words[0] == "lesion"
    command, args = main.commands[words[1]], words[2:]
    if hasattr(command, "commands"):
        command, args = command.commands[args[0]], args[1:]
    # with the group's context settings, as a real invocation inherits them: click caches a
    # command's help option from the first context it sees (-h would be lost for later --help)
    return command.make_context(command.name, list(map(str, args)),
                                **main.context_settings).params


def _not_default(option: Option, tmp_path: Path):
    """A legal value of ``option`` that differs from its default."""
    if option.choices:
        return next(c for c in option.choices if c != option.default)
    if option.kind == "bool":
        return True
    if option.kind == "path":
        path = tmp_path / f"{option.name}.json"
        path.write_text("{}")
        return str(path)
    if option.kind == "int_list":
        return (3, 5)
    if option.kind == "int":
        return int(option.default or option.low or 0) + 3
    if option.kind == "float":
        return 0.125 if option.default != 0.125 else 0.25
    return "cuda:1"


def test_printed_train_line_gives_back_the_same_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # printed paths are relative to where the line runs
    (tmp_path / "p").mkdir()
    values = {o.name: _not_default(o, tmp_path) for o in TRAIN_FRCNN if o.cli}
    values["pretrained"] = "none"  # a weights file with --pretrained none: a legal pair
    options = TrainOptions(**values)
    words = steps.train_frcnn_words(tmp_path / "p", tmp_path / "run", options, cwd=tmp_path)
    params = _parse(words)
    assert params["run_dir"] == Path("run")
    assert TrainOptions(**TRAIN_FRCNN.from_cli(params)) == options
    # a resumed run's line carries only what --resume may change
    resumed = _parse(steps.train_frcnn_words(tmp_path / "p", tmp_path / "run", options,
                                             cwd=tmp_path, resume=True))
    defaults = _parse(["lesion", "train", "frcnn", "p", "--out", "run"])
    typed = {o.name for o in TRAIN_FRCNN if o.cli and resumed[o.name] != defaults[o.name]}
    assert resumed["resume"] and typed == {"epochs", "workers", "device", "test", "save_every"}
    # the demo shows only what differs from the defaults, and it means the same run
    short = steps.train_frcnn_words(tmp_path / "p", tmp_path / "run",
                                    TrainOptions(epochs=7, nms_iou=0.3), changed_only=True)
    assert short[-4:] == ["--epochs", "7", "--nms-iou", "0.3"]
    assert TrainOptions(**TRAIN_FRCNN.from_cli(_parse(short))) == TrainOptions(epochs=7,
                                                                               nms_iou=0.3)


def test_printed_cfg_eval_report_lines_give_back_their_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p").mkdir()
    cfg_values = {"arch": "yolov3-tiny", "size": "128", "batch": 8, "subdivisions": 2,
                  "max_batches": 40, "burn_in": 5, "lr": 0.002, "flip": True}
    params = _parse(steps.cfg_words(tmp_path / "p", tmp_path / "y.cfg", cfg_values, tmp_path))
    assert {k: params[k] for k in cfg_values} == cfg_values and params["out_path"] == Path("y.cfg")
    eval_values = {"iou": 0.21, "score": 0.5, "froc_strict": True, "bootstrap": 10, "seed": 3}
    params = _parse(steps.evaluate_words(tmp_path / "p", {"a": tmp_path / "a.json"}, eval_values,
                                         tmp_path, split="val", out_dir=tmp_path / "e"))
    assert {k: params[k] for k in eval_values} == eval_values
    assert params["named_preds"] == ("a=a.json",) and params["split"] == ("val",)
    report_values = {"pdf": True, "images": ("a.png", "b.png"), "n_overlay": 2}
    (tmp_path / "run").mkdir()
    params = _parse(steps.report_words([tmp_path / "run"], [], None, tmp_path / "r",
                                       report_values, tmp_path))
    assert REPORT.from_cli(params) == report_values


NEW_OPTION = """
import json, sys
import deeplesion_cli.spec.frcnn as frcnn_spec
from deeplesion_cli.spec.core import Option, Spec

# the one declaration
frcnn_spec.TRAIN_FRCNN = Spec("train frcnn", [*frcnn_spec.TRAIN_FRCNN, Option(
    "anchor_jitter_px", "int", 0, low=0, high=8, help="Jitter anchors by up to this many px.")])

from click.testing import CliRunner
from deeplesion_cli import steps
from deeplesion_cli.cli import main
from deeplesion_cli.frcnn.options import TrainOptions
from deeplesion_cli.spec.core import OptionError

out = {}
out["help"] = CliRunner().invoke(main, ["train", "frcnn", "--help"]).output
out["default"] = TrainOptions().anchor_jitter_px
out["record"] = TrainOptions(anchor_jitter_px=3).to_json()["anchor_jitter_px"]
out["words"] = steps.train_frcnn_words("p", "run", TrainOptions(anchor_jitter_px=3),
                                       changed_only=True)
try:
    TrainOptions(anchor_jitter_px=9).check()
except OptionError as exc:
    out["refused"] = str(exc)
bad = CliRunner().invoke(main, ["train", "frcnn", "p", "--out", "r", "--anchor-jitter-px", "9"])
out["cli_exit"], out["cli_output"] = bad.exit_code, bad.output
json.dump(out, sys.stdout)
"""


def test_a_new_train_frcnn_option_is_one_declaration(tmp_path):
    """Declaring an option in TRAIN_FRCNN is all it takes: the command line offers it (with its
    bounds), TrainOptions has it, args.json records it, printed lines carry it."""
    done = subprocess.run([sys.executable, "-c", NEW_OPTION], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "--anchor-jitter-px INTEGER RANGE" in out["help"] and "0<=x<=8" in out["help"]
    assert out["default"] == 0 and out["record"] == 3
    assert out["words"][-2:] == ["--anchor-jitter-px", "3"]
    assert out["refused"] == "--anchor-jitter-px must be >= 0 and <= 8 (got 9)"
    assert out["cli_exit"] == 2 and "--anchor-jitter-px" in out["cli_output"]


def test_spec_refuses_a_twice_declared_option():
    with pytest.raises(ValueError, match="declared twice"):
        Spec("x", [Option("a", "int"), Option("a", "int")])


def test_lesion_help_reads_the_spec_without_torch():
    code = ("import sys; from click.testing import CliRunner; from deeplesion_cli.cli import main;"
            "r = CliRunner().invoke(main, ['train', 'frcnn', '--help']); assert r.exit_code == 0;"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_words_quote_paths_with_spaces(tmp_path):
    words = steps.train_frcnn_words(tmp_path / "my data", tmp_path / "run 1", TrainOptions(),
                                    cwd=tmp_path, changed_only=True)
    assert shlex.split(" ".join(shlex.quote(w) for w in words))[3:6] == [
        "my data", "--out", "run 1"]
