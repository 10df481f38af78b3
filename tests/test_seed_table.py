"""docs/examples/seed-table2.toml is the seed study's experiment table, exactly: checked against
the study's facts (tests/data/seed_study.json, restated from the study), printed as the command
lines a cluster would run, and run end to end as a reduced copy (tiny models, few epochs and
iterations, Debian's darknet) through training, per-checkpoint scoring, the resized-cfg
prediction and comparison.md with the study's columns.
"""

from __future__ import annotations

import copy
import csv
import json
import shlex
from pathlib import Path

import pytest

from deeplesion_cli import matrix as mx

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SEED_TOML = REPO / "docs" / "examples" / "seed-table2.toml"
FACTS = json.loads((Path(__file__).parent / "data" / "seed_study.json").read_text())


def _flags(exp) -> dict:
    o = exp.options
    return {"pretrained_coco": o.pretrained == "coco", "optimizer": o.optimizer,
            "balanced": o.balanced, "augment": o.augment == "seed"}


def test_frcnn_experiments_are_table2_exactly():
    matrix = mx.load_matrix(SEED_TOML)
    facts = FACTS["frcnn"]
    frcnn = [e for e in matrix.experiments if e.backend == "frcnn"]
    assert [_flags(e) for e in frcnn] == [
        {k: row[k] for k in ("pretrained_coco", "optimizer", "balanced", "augment")}
        for row in facts["table2"]]
    for exp in frcnn:
        o = exp.options
        assert (o.arch, o.epochs, o.scheduler, o.batch_size) == (
            facts["arch"], facts["epochs"], facts["scheduler"], facts["batch_size"])
        assert o.resolved_lr() == facts["lr"][o.optimizer]
        if o.optimizer == "sgd":
            assert o.momentum == facts["sgd_momentum"]
        # COCO weights come from a local file the user names: never downloaded
        assert (o.weights is not None) == (o.pretrained == "coco")
        if o.weights is not None:
            assert Path(o.weights).name == "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
        # the study's resize to 240 px comes with its augmentation only: size_px unset
        # (`lesion train frcnn`: 240 px with --augment seed, else the images' own size)
        from types import SimpleNamespace

        from deeplesion_cli.frcnn.setup import model_size_px

        slices = SimpleNamespace(images=[{"width": 512, "height": 512}])
        assert model_size_px(o, slices) == (facts["augment_size_px"] if o.augment == "seed"
                                            else 512)
    # reported figures: the Table 3 row with the same flags, each figure
    for exp in frcnn:
        rows = [r for r in facts["table3"] if all(r[k] == v for k, v in _flags(exp).items())]
        assert len(rows) == 1, exp.name
        assert {k: exp.reported[k] for k in ("best_epoch", "map_train", "map_test",
                                             "iou_train", "iou_test")} == {
            k: rows[0][k] for k in ("best_epoch", "map_train", "map_test", "iou_train",
                                    "iou_test")}
    assert matrix.eval_options.iou == FACTS["scoring"]["iou"] == matrix.reported["iou"]
    assert matrix.curves == ("train", "test")


def test_yolo_experiments_are_the_study_s_two_runs():
    matrix = mx.load_matrix(SEED_TOML)
    facts = FACTS["yolo"]
    first, second = [e for e in matrix.experiments if e.backend == "yolo"]
    for exp in (first, second):
        o = exp.options
        assert (o.arch, o.batch, o.subdivisions, o.max_batches, o.flip) == (
            facts["arch"], facts["batch"], facts["subdivisions"], facts["max_batches"],
            facts["flip"])
        assert o.save_every == facts["save_every_iterations"] and o.darknet_map is True
        assert Path(o.weights).name == "yolov4.conv.137"     # the COCO-pretrained start
    # experiment 1: the stock anchors at 416 (the results table's reading of 448/416)
    assert first.options.size == "416" and 416 in facts["size_readings"]
    assert first.options.anchors is None and not first.options.small_objects
    assert first.options.predict_size is None
    # experiment 2: the study's anchors, the small-object path, trained at the multiple of 32
    # nearest at or above 816 (869 and 816 are not multiples of 32), evaluated at 1024
    e2 = facts["experiment2"]
    anchors = json.loads(Path(second.options.anchors).read_text())
    assert anchors["anchors"] == e2["anchors"] and anchors["network_size"] == [816, 816]
    assert second.options.small_objects is e2["small_objects"]
    size = int(second.options.size)
    assert size % 32 == 0 and all(s % 32 for s in e2["train_size_readings"])
    assert size == min(s for s in range(32, 2048, 32) if s >= min(e2["train_size_readings"]))
    assert second.options.predict_size == str(e2["test_size"])
    for exp, row in zip((first, second), facts["table4"]):
        assert {k: exp.reported[k] for k in ("best_epoch", "map_train", "map_test",
                                             "iou_train", "iou_test")} == {
            k: row[k] for k in ("best_epoch", "map_train", "map_test", "iou_train", "iou_test")}


@pytest.fixture(scope="module")
def typed_prepared(tmp_path_factory):
    """A typed (8-class) prepared folder of a small synthetic set: the TOML's `prepared`."""
    from tests.conftest import darknet_safe_tmp

    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = darknet_safe_tmp(tmp_path_factory, "seedtable")
    synthesize(root / "synth", patients=12, seed=3, size_px=96, workers=1, show_progress=False)
    prepare(root / "synth", root / "prepared",
            PrepareOptions(task="typed", split="patient", ratios=(0.5, 0.25, 0.25)),
            show_progress=False)
    return root


def test_print_gives_the_study_s_command_lines(typed_prepared):
    toml = typed_prepared / "seed-table2.toml"
    toml.write_text(SEED_TOML.read_text())
    (typed_prepared / "seed-anchors.json").write_text(
        (SEED_TOML.parent / "seed-anchors.json").read_text())
    matrix = mx.load_matrix(toml)
    lines = mx.remaining_lines(matrix, cwd=typed_prepared)
    words = [shlex.split(line.split(" && ")[-1]) for line in lines]

    def line_of(kind: str, name: str) -> list[str]:
        found = [w for w in words if w[1:1 + len(kind.split())] == kind.split() and
                 any(name in part for part in w)]
        assert found, (kind, name, lines)
        return found[0]

    train1 = line_of("train frcnn", "frcnn-1-coco-adam")
    for flag, value in (("--pretrained", "coco"), ("--optimizer", "adam"), ("--lr", "0.0001"),
                        ("--epochs", "110"), ("--batch-size", "32"), ("--save-every", "10"),
                        ("--augment", "none")):
        assert train1[train1.index(flag) + 1] == value
    assert train1[train1.index("--weights") + 1].endswith(
        "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    assert "--balanced" not in train1
    train4 = line_of("train frcnn", "frcnn-4-sgd-balanced")
    assert "--balanced" in train4 and train4[train4.index("--lr") + 1] == "2e-05"
    assert train4[train4.index("--pretrained") + 1] == "none"
    train6 = line_of("train frcnn", "frcnn-6-coco-adam-balanced-aug")
    assert train6[train6.index("--augment") + 1] == "seed"
    cfg2 = line_of("cfg", "yolov4-2-small-832-1024")
    for flag, value in (("--arch", "yolov4"), ("--size", "832"), ("--batch", "64"),
                        ("--subdivisions", "32"), ("--max-batches", "16000")):
        assert cfg2[cfg2.index(flag) + 1] == value
    assert "--small-objects" in cfg2 and cfg2[cfg2.index("--anchors") + 1].endswith(
        "seed-anchors.json")
    train_y = line_of("train yolo", "yolov4-2-small-832-1024")
    assert train_y[train_y.index("--save-every") + 1] == "1000"
    assert train_y[train_y.index("--weights") + 1].endswith("yolov4.conv.137")
    predict2 = line_of("predict yolo", "yolov4-2-small-832-1024")
    assert predict2[predict2.index("--size") + 1] == "1024" and "--darknet-map" in predict2
    predict1 = line_of("predict yolo", "yolov4-1-416")
    assert "--size" not in predict1
    evals = [w for w in words if w[1] == "eval"]
    assert len(evals) == 2
    assert evals[0][evals[0].index("--iou") + 1] == "0.21"
    curves = evals[1]
    assert curves[curves.index("--checkpoint") + 1] == "every"
    assert curves[curves.index("--split") + 1] == "train,test"
    assert len([w for w in curves if w == "--run"]) == 8


def _reduced(doc: dict) -> dict:
    """The shipped table made tiny: Faster R-CNN experiment 6 and YOLOv4 experiment 2,
    on CPU-sized models (no pretrained files: the same options otherwise), 2 epochs with every
    epoch kept, a yolov3-tiny on Debian's darknet trained at 64 px and predicted at 96."""
    doc = copy.deepcopy(doc)
    frcnn = doc["defaults"]["frcnn"]
    frcnn.update(arch="mobilenet_v3_fpn", epochs=2, batch_size=8, size_px=64, workers=0,
                 eval_train_images=0, save_every=1)
    yolo = doc["defaults"]["yolo"]
    yolo.update(arch="yolov3-tiny", batch=2, subdivisions=1, max_batches=4, size=64)
    yolo.pop("weights")
    yolo.pop("save_every")          # pjreddie saves on its own schedule (refused otherwise)
    keep = {"frcnn-6-coco-adam-balanced-aug", "yolov4-2-small-832-1024"}
    doc["experiment"] = [e for e in doc["experiment"] if e["name"] in keep]
    for exp in doc["experiment"]:
        if exp["backend"] == "frcnn":
            exp.update(pretrained="none", lr=1e-3)
            exp.pop("weights", None)
        else:
            exp.pop("small_objects")
            exp.update(size=64, predict_size=96)
    return doc


@pytest.mark.darknet
def test_reduced_copy_runs_end_to_end(typed_prepared):
    import torch

    doc = _reduced(tomllib.loads(SEED_TOML.read_text()))
    (typed_prepared / "seed-anchors.json").write_text(
        (SEED_TOML.parent / "seed-anchors.json").read_text())
    path = typed_prepared / "reduced.toml"
    path.write_text("# reduced copy of seed-table2.toml, built by the test\n")
    matrix = mx.matrix_from_dict(doc, path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log: list[str] = []
        result = mx.run_matrix(matrix, show_progress=False, log=log.append)
    finally:
        torch.set_num_threads(threads)
    assert result.ok, (result.failures, log)
    names = [e.name for e in matrix.experiments]
    assert any(w.startswith(f"{names[1]}: darknet_map = true, but ") and "pjreddie" in w
               for w in result.warnings), result.warnings

    # every kept checkpoint scored on train and test
    with open(matrix.curves_dir / "checkpoints.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["step"], r["split"]) for r in rows if r["run"] == names[0]) == [
        ("1", "test"), ("1", "train"), ("2", "test"), ("2", "train")]
    assert {r["split"] for r in rows if r["run"] == names[1]} == {"train", "test"}
    assert (matrix.report_dir / "checkpoints.png").is_file() or any(
        p.name == "checkpoints.png" for p in matrix.report_dir.rglob("*.png"))

    # the yolo experiment predicted with a cfg resized to 96 px, anchors as trained
    yolo = matrix.experiment(names[1])
    resized = [p for p in yolo.run_dir.glob("*.cfg") if "96x96" in p.name]
    assert resized, sorted(p.name for p in yolo.run_dir.iterdir())
    text = resized[0].read_text()
    assert "width=96" in text and "height=96" in text
    trained = yolo.cfg_path.read_text()
    anchor_lines = lambda t: [l for l in t.splitlines() if l.startswith("anchors")]  # noqa: E731
    assert anchor_lines(text) == anchor_lines(trained)

    # comparison.md: the study's figures beside ours, both ways
    md = (matrix.out / "comparison.md").read_text()
    assert "## Reported by the publication, measured here" in md
    metrics = json.loads((matrix.eval_dir / "metrics.json").read_text())
    section = md.split("## Reported by the publication, measured here")[1]
    for exp in matrix.experiments:
        line = next(l for l in section.splitlines() if l.startswith(f"| {exp.name} "))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == str(exp.reported["best_epoch"])
        assert cells[2] == f"{100 * exp.reported['map_test']:.1f}%"
        seed = metrics["runs"][exp.name]["seed_protocol"]
        assert cells[3] == f"{100 * seed['map']:.1f}%"
        assert cells[4] == f"{100 * metrics['runs'][exp.name]['voc']['darknet_map']:.1f}%"
        # pjreddie has no `detector map`: darknet's own column stays empty for the yolo row
        assert cells[5] == ("–" if exp.backend == "yolo" else "n/a")
    assert "Over training" in section


@pytest.mark.parametrize("extra, key, message", [
    ('[experiment.reported]\nmap_test = 19\n', "reported.map_test",
     "expected a fraction in [0, 1], got 19 (write 0.19 for 19%)"),
    ('[experiment.reported]\nmap_tset = 0.19\n', "reported.map_tset", "did you mean 'map_test'"),
    ('[experiment.reported]\nbest_epoch = "110"\n', "reported.best_epoch",
     "expected a whole number >= 0"),
])
def test_reported_figures_are_checked(tmp_path, extra, key, message):
    toml = tmp_path / "t.toml"
    toml.write_text('prepared = "p"\n[[experiment]]\nname = "a"\nbackend = "frcnn"\n' + extra)
    with pytest.raises(mx.MatrixError) as info:
        mx.load_matrix(toml)
    assert info.value.key == key and message in str(info.value)
    assert info.value.experiment == "'a' (#1)"


def test_curves_names_real_splits(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('prepared = "p"\ncurves = ["train", "tset"]\n'
                    '[[experiment]]\nname = "a"\nbackend = "frcnn"\n')
    with pytest.raises(mx.MatrixError, match=r"key 'curves': 'tset' is not a split"):
        mx.load_matrix(toml)
    toml.write_text('prepared = "p"\ncurves = "test"\n[[experiment]]\nname = "a"\n'
                    'backend = "frcnn"\n')
    assert mx.load_matrix(toml).curves == ("test",)


@pytest.mark.darknet
def test_save_every_on_pjreddie_is_refused_before_anything_runs(typed_prepared):
    toml = typed_prepared / "save.toml"
    toml.write_text('prepared = "prepared"\nout = "save-out"\n[[experiment]]\nname = "y"\n'
                    'backend = "yolo"\narch = "yolov3-tiny"\nsize = 64\nbatch = 2\n'
                    'subdivisions = 1\nmax_batches = 4\nsave_every = 1000\n')
    with pytest.raises(mx.MatrixError) as info:
        mx.run_matrix(toml, show_progress=False, log=lambda line: None)
    assert info.value.key == "save_every" and "pjreddie" in str(info.value)
    assert not (typed_prepared / "save-out" / "y").exists()
