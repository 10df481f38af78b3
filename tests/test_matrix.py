"""`lesion matrix` (deeplesion_cli.matrix): a TOML table of experiments run, skipped, resumed,
predicted, evaluated together and compared, on a tiny synthetic prepared set on the CPU.

Real mobilenet_v3_fpn runs at 96 px (1-2 epochs), the real evaluator, the real report; the yolo
test (marked darknet) runs Debian's darknet for a few yolov3-tiny iterations.
"""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli import matrix as mx
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn import engine

REPO = Path(__file__).resolve().parents[1]

FRCNN_TOML = """
prepared = "{prepared}"
out = "out"
split = "test"

[defaults.frcnn]
arch = "mobilenet_v3_fpn"
size_px = 96
batch_size = 4
workers = 0
augment = "none"
eval_train_images = 0
lr = 1e-3
rois_per_image = 64            # few proposals and RoIs: a tiny run's cost is in the box head
rpn_post_nms_train = 200
rpn_post_nms_test = 100

[[experiment]]
name = "adam"
backend = "frcnn"
epochs = 1

[[experiment]]
name = "sgd"
backend = "frcnn"
optimizer = "sgd"
epochs = 2
"""


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On 2 shared cores, torch's 2 intra-op threads make an epoch 5x slower than one thread
    (measured: 43 s against 8 s while other jobs run)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("matrix")
    synthesize(root / "synth", patients=6, seed=11, size_px=96, workers=1, show_progress=False)
    prepare(root / "synth", root / "prep",
            PrepareOptions(task="universal", split="patient", ratios=(0.5, 0.25, 0.25)),
            show_progress=False)
    return root / "prep"


@pytest.fixture(scope="module")
def first_run(prepared, tmp_path_factory):
    """The matrix with 'sgd' interrupted after epoch 1 of 2, then one run_matrix."""
    folder = tmp_path_factory.mktemp("frcnn_matrix")
    toml = folder / "experiments.toml"
    toml.write_text(FRCNN_TOML.format(prepared=prepared))
    matrix = mx.load_matrix(toml)
    sgd = matrix.experiment("sgd")
    engine.train(prepared, sgd.run_dir, sgd.options, stop_after=1, show_progress=False)
    assert ckpt.load(sgd.run_dir / "last.pt")["epoch"] == 1
    steps_before = mx.plan(matrix)
    lines_before = mx.remaining_lines(matrix)
    log: list[str] = []
    result = mx.run_matrix(toml, show_progress=False, log=log.append)
    return {"toml": toml, "matrix": matrix, "steps_before": steps_before,
            "lines_before": lines_before, "result": result, "log": log}


# ------------------------------------------------------------------ printed lines = CLI commands

def _parse(line: str):
    """The click command and parameters a printed `lesion ...` line means (nothing run)."""
    from deeplesion_cli.cli import main

    words = shlex.split(line.split(" && ")[-1])
    assert words[0] == "lesion"
    command = main.commands[words[1]]
    args = words[2:]
    if hasattr(command, "commands"):
        command, args = command.commands[args[0]], args[1:]
    return command.name, command.make_context(command.name, args,
                                              **main.context_settings).params


def _cli_train_options(params: dict) -> engine.TrainOptions:
    """What `lesion train frcnn` builds from its parameters (as cli.train_frcnn does)."""
    from deeplesion_cli.spec.frcnn import TRAIN_FRCNN

    return engine.TrainOptions(**TRAIN_FRCNN.from_cli(params))


def test_print_lists_exactly_the_remaining_steps(first_run, prepared):
    matrix, lines = first_run["matrix"], first_run["lines_before"]
    adam, sgd = matrix.experiment("adam"), matrix.experiment("sgd")
    cwd = Path.cwd()
    assert [(s.experiment, s.kind, s.done) for s in first_run["steps_before"]] == [
        ("adam", "train", False), ("adam", "predict", False), ("sgd", "resume", False),
        ("sgd", "predict", False), (None, "eval", False), (None, "report", False),
        (None, "compare", False)]
    assert lines == [mx.frcnn_train_line(matrix, adam, cwd),
                     mx.frcnn_predict_line(matrix, adam, cwd),
                     mx.frcnn_train_line(matrix, sgd, cwd, resume=True),
                     mx.frcnn_predict_line(matrix, sgd, cwd),
                     mx.eval_line(matrix, ["adam", "sgd"], cwd),
                     mx.report_line(matrix, ["adam", "sgd"], cwd),
                     f"lesion matrix {first_run['toml']}"]
    assert lines[2] == (f"lesion train frcnn {prepared} --out {sgd.run_dir} --resume --epochs 2 "
                        "--device auto --workers 0")
    # every line is a valid `lesion` command meaning what the matrix does
    name, params = _parse(lines[0])
    assert name == "frcnn" and params["run_dir"] == adam.run_dir
    assert _cli_train_options(params) == adam.options
    name, params = _parse(lines[2])
    assert params["resume"] and params["epochs"] == 2 and params["run_dir"] == sgd.run_dir
    name, params = _parse(lines[1])
    assert (params["run_or_checkpoint"], params["out_json"], params["split"], params["workers"]) \
        == (adam.run_dir, adam.run_dir / "test.json", "test", 0)
    name, params = _parse(lines[4])
    assert name == "eval" and params["ground_truth"] == prepared
    assert params["named_preds"] == (f"adam={adam.run_dir / 'test.json'}",
                                     f"sgd={sgd.run_dir / 'test.json'}")
    assert params["out_dir"] == matrix.eval_dir
    name, params = _parse(lines[5])
    assert (name, params["runs"], params["evals"], params["prepared"], params["out_dir"]) == (
        "report", (adam.run_dir, sgd.run_dir), (matrix.eval_dir,), prepared, matrix.report_dir)


def test_first_run_trains_resumes_predicts_evaluates(first_run, prepared):
    result, matrix = first_run["result"], first_run["matrix"]
    assert result.ok, result.failures
    assert [(s.experiment, s.kind) for s in result.ran][:4] == [
        ("adam", "train"), ("adam", "predict"), ("sgd", "resume"), ("sgd", "predict")]
    assert ckpt.load(matrix.experiment("adam").run_dir / "last.pt")["epoch"] == 1
    sgd_dir = matrix.experiment("sgd").run_dir
    assert ckpt.load(sgd_dir / "last.pt")["epoch"] == 2
    assert "resume from" in (sgd_dir / "train.log").read_text()

    # out/eval is what `lesion eval --out` writes for the same predictions
    metrics = json.loads((matrix.eval_dir / "metrics.json").read_text())
    assert list(metrics["runs"]) == ["adam", "sgd"] == result.evaluated
    from deeplesion_cli.cli import main

    ref = prepared.parent / "eval-ref"
    cli = CliRunner().invoke(main, shlex.split(mx.eval_line(matrix, ["adam", "sgd"], Path.cwd())
                                               )[1:-2] + ["--out", str(ref)])
    assert cli.exit_code == 0, cli.output
    assert json.loads((ref / "metrics.json").read_text()) == metrics
    assert sorted(p.name for p in ref.iterdir()) == sorted(p.name
                                                           for p in matrix.eval_dir.iterdir())

    # comparison.md / .csv: one row per experiment, the numbers of metrics.json
    md = (matrix.out / "comparison.md").read_text()
    rows = {r["experiment"]: r for r in csv.DictReader((matrix.out / "comparison.csv").open())}
    assert list(rows) == ["adam", "sgd"]
    for name in ("adam", "sgd"):
        block = metrics["runs"][name]
        want = [block["coco"]["AP50"], block["coco"]["AP"], block["froc"]["mean_sens_0.5_4"],
                block["froc"]["sens"][block["froc"]["fps"].index(4)]]
        line = next(l for l in md.splitlines() if l.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-4:] == [f"{v:.4f}" for v in want], line
        assert [float(rows[name][k]) for k in ("ap50", "ap", "froc_mean", "sens4")] == want
        assert cells[3] == "evaluated"
    assert "optimizer=adam" in md and "optimizer=sgd" in md and "epochs=1" in md
    assert "Shared frcnn options:" in md and "size_px=96" in md

    # the report over the run folders and out/eval
    assert result.report is not None and Path(result.report.index).exists()
    assert Path(result.report.out_dir) == matrix.report_dir


def test_second_run_trains_nothing(first_run):
    matrix = first_run["matrix"]
    watched = [p for e in matrix.experiments
               for p in (e.run_dir / "last.pt", e.run_dir / "best.pt", e.predictions("test"))
               if p.exists()] + [matrix.eval_dir / "metrics.json"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    assert mx.remaining_lines(matrix) == []
    log: list[str] = []
    result = mx.run_matrix(first_run["toml"], show_progress=False, log=log.append)
    assert result.ok and result.ran == []
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    text = "\n".join(log)
    assert "[adam] skipped train: finished 1/1 epochs" in text
    assert "[sgd] skipped train: finished 2/2 epochs" in text
    assert "[sgd] skipped predict" in text and "skipped eval" in text
    assert "skipped report" in text
    assert result.rows[1]["ap50"] == first_run["result"].rows[1]["ap50"]


def test_only_and_changed_options(first_run):
    toml, matrix = first_run["toml"], first_run["matrix"]
    steps = mx.plan(matrix, only=["sgd"])
    assert [(s.experiment, s.kind, s.done) for s in steps] == [
        ("sgd", "train", True), ("sgd", "predict", True), (None, "eval", True),
        (None, "report", True), (None, "compare", True)]
    assert steps[-1].line == f"lesion matrix {toml} --only sgd"
    with pytest.raises(mx.MatrixError, match="--only 'nope'"):
        mx.plan(matrix, only=["nope"])

    changed = toml.with_name("changed.toml")
    # a non-resumable option differs from the trained run: a clear error, not a mixed row
    changed.write_text(toml.read_text().replace('name = "adam"\nbackend = "frcnn"\n',
                                                'name = "adam"\nbackend = "frcnn"\n'
                                                'optimizer = "sgd"\n'))
    with pytest.raises(mx.MatrixError) as info:
        mx.plan(mx.load_matrix(changed))
    assert (info.value.experiment, info.value.key) == ("'adam' (#1)", "optimizer")
    assert str(changed) in str(info.value) and "'adam'" in str(info.value)
    # more epochs: the finished run is resumed, and its predictions, the eval and report redone
    changed.write_text(toml.read_text().replace("epochs = 1", "epochs = 3"))
    steps = [s for s in mx.plan(mx.load_matrix(changed)) if not s.done]
    assert [(s.experiment, s.kind) for s in steps] == [
        ("adam", "resume"), ("adam", "predict"), (None, "eval"), (None, "report"),
        (None, "compare")]
    assert " --resume --epochs 3 " in steps[0].line


def test_missing_input_files_stop_before_anything_runs(prepared, tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text(FRCNN_TOML.format(prepared=prepared) + 'weights = "no-such.pth"\n')
    with pytest.raises(mx.MatrixError) as info:
        mx.run_matrix(toml, show_progress=False, log=lambda _: None)
    assert (info.value.experiment, info.value.key) == ("'sgd' (#2)", "weights")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- validation

BASE = 'prepared = "p"\n[[experiment]]\nname = "a"\nbackend = "frcnn"\n'


@pytest.mark.parametrize("text, experiment, key, message", [
    (BASE + "optimiser = 'adam'\n", "'a' (#1)", "optimiser", "did you mean 'optimizer'"),
    (BASE + "epochs = '10'\n", "'a' (#1)", "epochs", "expected an integer"),
    (BASE + "lr = true\n", "'a' (#1)", "lr", "expected a number"),
    (BASE + "balanced = 1\n", "'a' (#1)", "balanced", "expected true or false"),
    (BASE + "arch = 'resnet18'\n", "'a' (#1)", "arch", "one of"),
    (BASE + "epochs = 0\n", "'a' (#1)", "epochs", ">= 1"),
    (BASE + "log_every = 5\n", "'a' (#1)", "log_every", "unknown frcnn option"),
    (BASE + "rpn_score_thresh = 1.5\n", "'a' (#1)", "rpn_score_thresh", "in [0, 1)"),
    (BASE + "threads = 0\n", "'a' (#1)", "threads", ">= 1"),
    (BASE + "[[experiment]]\nname = 'y'\nbackend = 'yolo'\narch = 'yolov3'\nburn_in = -1\n",
     "'y' (#2)", "burn_in", ">= 0"),
    (BASE + "[[experiment]]\nname = 'a'\nbackend = 'yolo'\narch = 'yolov4'\n", "'a' (#2)",
     "name", "the same name as experiment #1"),
    (BASE + "[[experiment]]\nname = 'A'\nbackend = 'frcnn'\n", "'A' (#2)", "name",
     "differing only by case"),
    (BASE + "[[experiment]]\nname = '../x'\nbackend = 'frcnn'\n", "'../x' (#2)", "name",
     "not a safe folder name"),
    (BASE + "[[experiment]]\nname = 'v1.2'\nbackend = 'frcnn'\n", "'v1.2' (#2)", "name",
     "not a safe folder name"),
    (BASE + "[[experiment]]\nname = 'eval'\nbackend = 'frcnn'\n", "'eval' (#2)", "name",
     "reserved"),
    (BASE + "[[experiment]]\nbackend = 'frcnn'\n", "#2", "name", "missing"),
    (BASE + "[[experiment]]\nname = 'b'\nbackend = 'detr'\n", "'b' (#2)", "backend",
     "one of frcnn, yolo"),
    (BASE + "[[experiment]]\nname = 'y'\nbackend = 'yolo'\n", "'y' (#2)", "arch", "missing"),
    (BASE + "[[experiment]]\nname = 'y'\nbackend = 'yolo'\narch = 'yolov3'\nsize = 400\n",
     "'y' (#2)", "size", "multiples of 32"),
    (BASE + "[[experiment]]\nname = 'y'\nbackend = 'yolo'\narch = 'yolov3'\nepochs = 3\n",
     "'y' (#2)", "epochs", "unknown yolo option"),
    (BASE + "[[experiment]]\nname = 'y'\nbackend = 'yolo'\narch = 'yolov3'\nbatch = 10\n"
            "subdivisions = 4\n", "'y' (#2)", "subdivisions", "multiple of subdivisions"),
    ('prepared = "p"\nsplit = "dev"\n' + BASE.split("\n", 1)[1], None, "split", "one of"),
    ('prepared = "p"\nworkers = 2\n' + BASE.split("\n", 1)[1], None, "workers",
     "unknown top-level key"),
    ('prepared = "p"\n[defaults.frcnn]\nepoch = 3\n' + BASE.split("\n", 1)[1], None,
     "defaults.frcnn.epoch", "did you mean 'epochs'"),
    ('prepared = "p"\n[defaults.frcnn]\nlr = "1e-4"\n' + BASE.split("\n", 1)[1], None,
     "defaults.frcnn.lr", "expected a number"),
    ('prepared = "p"\n[defaults.ssd]\nx = 1\n' + BASE.split("\n", 1)[1], None,
     "defaults.ssd", "unknown backend"),
    ('prepared = "p"\n[eval]\niou = 2\n' + BASE.split("\n", 1)[1], None, "eval.iou", "0..1"),
    ('prepared = "p"\n', None, "experiment", "nothing to run"),
    (BASE.replace('prepared = "p"\n', ""), None, "prepared", "missing"),
])
def test_validation_names_file_experiment_and_key(tmp_path, text, experiment, key, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(mx.MatrixError) as info:
        mx.load_matrix(toml)
    assert (info.value.experiment, info.value.key) == (experiment, key)
    assert str(info.value).startswith(str(toml)) and message in str(info.value)


def test_toml_syntax_error_names_the_file(tmp_path):
    toml = tmp_path / "broken.toml"
    toml.write_text('prepared = "p"\n[[experiment]\n')
    with pytest.raises(mx.MatrixError, match=r"broken\.toml: not valid TOML"):
        mx.load_matrix(toml)


def test_option_tables_match_the_cli_flags():
    """The TOML keys are the spec's options: a frcnn experiment takes exactly the options of
    `lesion train frcnn` that have a flag (each listed by its --help), a yolo experiment those of
    cfg / train yolo / predict yolo, [eval] and [report] those of eval and report."""
    import dataclasses

    from deeplesion_cli.cli import (cfg_, eval_, main, predict_yolo, report, train_frcnn,
                                    train_yolo)
    from deeplesion_cli.spec import darknet as darknet_spec
    from deeplesion_cli.spec import evaluation as eval_spec
    from deeplesion_cli.spec import frcnn as frcnn_spec

    def flags(command):
        return {o for p in command.params for o in p.opts if o.startswith("--")}

    keys = mx.frcnn_keys()
    assert keys.names() == [o.name for o in frcnn_spec.TRAIN_FRCNN if o.cli]
    help_text = CliRunner().invoke(main, ["train", "frcnn", "--help"], terminal_width=200).output
    for option in keys:
        assert option.cli_flag in flags(train_frcnn), option.name
        assert f"{option.cli_flag} " in help_text, option.name
    fields = {f.name for f in dataclasses.fields(engine.TrainOptions)}
    assert set(keys.names()) <= fields
    # every TrainOptions field the CLI can set is accepted, and no other
    assert {p.name for p in train_frcnn.params} & fields == set(keys.names())
    for hidden in (o.name for o in frcnn_spec.TRAIN_FRCNN if not o.cli):
        assert hidden not in keys and hidden in fields

    assert mx.yolo_keys().names() == list(darknet_spec.YOLO_EXPERIMENT)
    commands = {"cfg": cfg_, "train yolo": train_yolo, "predict yolo": predict_yolo}
    for key, spec in darknet_spec.YOLO_EXPERIMENT.items():
        assert spec[key].cli_flag in flags(commands[spec.command]), key
    assert {o.cli_flag for o in mx.eval_keys()} <= flags(eval_)
    assert {o.cli_flag for o in mx.report_keys()} <= flags(report)
    assert mx.eval_keys() is eval_spec.EVAL and mx.report_keys() is eval_spec.REPORT
    assert {"--eval", "--prepared", "--out", "--pdf", "--image", "--n-overlay"} <= flags(report)


def test_a_new_train_frcnn_option_is_one_declaration(monkeypatch, tmp_path):
    """An option added to `lesion train frcnn`'s spec, and nothing else, is a matrix key: its
    value is checked against its declared bounds, printed as its flag and compared."""
    import dataclasses

    from deeplesion_cli.frcnn import options as frcnn_options
    from deeplesion_cli.spec import frcnn as frcnn_spec
    from deeplesion_cli.spec.core import Option, Spec

    knob = Option("fpn_channels", "int", 256, low=16, high=1024,
                  help="Channels of the FPN's outputs.")
    spec = Spec("train frcnn", [*frcnn_spec.TRAIN_FRCNN, knob])
    monkeypatch.setattr(frcnn_spec, "TRAIN_FRCNN", spec)
    monkeypatch.setattr(frcnn_options, "TRAIN_FRCNN", spec)
    # TrainOptions is made from the spec when its module is imported: the class it would make
    with_knob = dataclasses.make_dataclass(
        "TrainOptions", [(knob.name, "int | None", dataclasses.field(default=knob.default))],
        bases=(frcnn_options.TrainOptions,))
    monkeypatch.setattr(frcnn_options, "TrainOptions", with_knob)

    toml = tmp_path / "knob.toml"
    toml.write_text('prepared = "p"\n[defaults.frcnn]\nfpn_channels = 128\n'
                    '[[experiment]]\nname = "a"\nbackend = "frcnn"\n'
                    '[[experiment]]\nname = "b"\nbackend = "frcnn"\nfpn_channels = 512\n')
    matrix = mx.load_matrix(toml)
    a, b = matrix.experiment("a"), matrix.experiment("b")
    assert (a.options.fpn_channels, b.options.fpn_channels) == (128, 512)
    assert "fpn_channels" in mx.frcnn_keys()
    line = mx.frcnn_train_line(matrix, b, tmp_path)
    assert line.endswith(" --fpn-channels 512"), line  # declared last, printed last
    assert "--fpn-channels" not in mx.frcnn_train_line(matrix, b, tmp_path, resume=True)
    rows = mx.comparison_rows(matrix, {}, None)
    assert [r["options"] for r in rows] == ["arch=resnet50_fpn fpn_channels=128",
                                            "arch=resnet50_fpn fpn_channels=512"]

    for value, message in (("8", "expected 16..1024, got 8"), ("2048", "expected 16..1024"),
                           ("'wide'", "expected an integer"), ("1.5", "expected an integer")):
        toml.write_text(BASE + f"fpn_channels = {value}\n")
        with pytest.raises(mx.MatrixError) as info:
            mx.load_matrix(toml)
        assert (info.value.experiment, info.value.key) == ("'a' (#1)", "fpn_channels")
        assert message in str(info.value), str(info.value)
    toml.write_text(BASE + "fpn_channel = 64\n")
    with pytest.raises(mx.MatrixError, match="did you mean 'fpn_channels'"):
        mx.load_matrix(toml)


def test_comparison_table_columns(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('prepared = "p"\n[defaults.frcnn]\nepochs = 5\nworkers = 0\n'
                    '[[experiment]]\nname = "a"\nbackend = "frcnn"\noptimizer = "sgd"\n'
                    '[[experiment]]\nname = "b"\nbackend = "frcnn"\n'
                    '[[experiment]]\nname = "y"\nbackend = "yolo"\narch = "yolov3-tiny"\n')
    matrix = mx.load_matrix(toml)
    block = {"n_images": 3, "n_ground_truth": 4, "coco": {"AP50": 0.51234, "AP": 0.25},
             "froc": {"mean_sens_0.5_4": 0.375, "fps": [0.5, 1, 2, 4, 8, 16],
                      "sens": [0.1, 0.2, 0.3, 0.4375, 0.5, 0.6]}}
    document = {"runs": {"a": block}}
    states = {"b": mx.ExperimentState(matrix.experiment("b"))}
    rows = mx.comparison_rows(matrix, states, document)
    assert rows[0] == {"experiment": "a", "backend": "frcnn",
                       "options": "arch=resnet50_fpn optimizer=sgd lr=2e-05",
                       "status": "evaluated", "n_detections": None, "ap50": 0.51234, "ap": 0.25,
                       "froc_mean": 0.375, "sens4": 0.4375}
    assert rows[1]["status"] == "not trained" and rows[1]["ap50"] is None
    assert rows[2]["options"] == "arch=yolov3-tiny"
    md = mx.comparison_markdown(matrix, rows, document)
    assert "| a | frcnn | arch=resnet50_fpn optimizer=sgd lr=2e-05 | evaluated | – | 0.5123 | " \
           "0.2500 | 0.3750 | 0.4375 |" in md
    assert ("| b | frcnn | arch=resnet50_fpn optimizer=adam lr=0.0001 | not trained | – | – |"
            in md)
    assert "Shared frcnn options: pretrained=none, epochs=5," in md  # workers: not compared
    assert "workers" not in md


# ---------------------------------------------------------------------------------- darknet

@pytest.mark.darknet
def test_yolo_experiment_with_debian_darknet(prepared, tmp_path):
    toml = tmp_path / "yolo.toml"
    toml.write_text(f"""
prepared = "{prepared}"
[[experiment]]
name = "tiny"
backend = "yolo"
arch = "yolov3-tiny"
size = 128
batch = 2
subdivisions = 1
max_batches = 6
""")
    matrix = mx.load_matrix(toml)
    lines = mx.remaining_lines(matrix)
    assert [l.split(" && ")[-1].split()[1:3] for l in lines] == [
        ["cfg", str(prepared)], ["train", "yolo"], ["predict", "yolo"], ["eval", str(prepared)],
        ["report", str(matrix.experiment("tiny").run_dir)], ["matrix", str(toml)]]
    log: list[str] = []
    result = mx.run_matrix(toml, show_progress=False, log=log.append)
    assert result.ok, result.failures
    exp = matrix.experiment("tiny")
    final = exp.run_dir / "backup" / "tiny_final.weights"
    assert final.is_file() and exp.predictions("test").is_file()
    metrics = json.loads((matrix.eval_dir / "metrics.json").read_text())
    assert list(metrics["runs"]) == ["tiny"]
    assert result.rows[0]["ap50"] == metrics["runs"]["tiny"]["coco"]["AP50"]
    # the cfg is what `lesion cfg` writes
    name, params = _parse(lines[0])
    assert name == "cfg" and params["out_path"] == exp.cfg_path and params["max_batches"] == 6
    name, params = _parse(lines[1])
    assert (name, params["cfg_path"], params["run_dir"], params["resume"]) == (
        "yolo", exp.cfg_path, exp.run_dir, False)
    name, params = _parse(lines[2])
    assert (name, params["weights"], params["out_json"]) == ("yolo", final,
                                                             exp.predictions("test"))

    mtime = final.stat().st_mtime_ns
    log.clear()
    again = mx.run_matrix(toml, show_progress=False, log=log.append)
    assert again.ok and again.ran == [] and final.stat().st_mtime_ns == mtime
    assert "[tiny] skipped train: finished 6/6 iterations" in log
    assert mx.remaining_lines(matrix) == []

    # a larger max_batches rewrites the cfg and resumes; any other cfg change is refused
    longer = tmp_path / "longer.toml"
    longer.write_text(toml.read_text().replace("max_batches = 6", "max_batches = 8"))
    steps = [s for s in mx.plan(mx.load_matrix(longer)) if not s.done]
    assert [(s.experiment, s.kind) for s in steps][:3] == [
        ("tiny", "cfg"), ("tiny", "resume"), ("tiny", "predict")]
    assert steps[1].line.endswith(" --resume") and "--max-batches 8" in steps[0].line
    burn = tmp_path / "burn.toml"
    burn.write_text(toml.read_text().replace('name = "tiny"', 'name = "burn"') + "burn_in = 2\n")
    assert "--burn-in 2" in mx.remaining_lines(mx.load_matrix(burn))[0]
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace("size = 128", "size = 160"))
    with pytest.raises(mx.MatrixError, match="only max_batches may change") as info:
        mx.plan(mx.load_matrix(other))
    assert info.value.experiment == "'tiny' (#1)"
