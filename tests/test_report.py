"""`lesion report` (deeplesion_cli.report.build): figures, tables and overlays from small fake
training runs, a synthetic prepared folder and a real `lesion eval` output folder."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deeplesion_cli import runlog
from deeplesion_cli.cli import main
from deeplesion_cli.formats.detections import write_coco_results
from deeplesion_cli.formats.groundtruth import load_ground_truth
from deeplesion_cli.report import overlays, plots, tables
from deeplesion_cli.report.build import ReportResult, build_report
from deeplesion_cli.report.inputs import ReportInputError, load_run
from deeplesion_cli.report.summaries import FRCNN_DEFAULT_LR, run_summary
from tests.conftest import make_dets, make_gt

FP_BOX = [2.0, 70.0, 14.0, 12.0]   # a false positive of run "a" on every image (bottom left)
SHIFT = 2.0                         # run "a": ground truth shifted by 2 px right and down
SPLIT = "train"                     # the split evaluated: 46 images of 3 patients (bootstrap)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("report")
    synthesize(root / "src", patients=5, seed=1, size_px=96, workers=1, show_progress=False)
    prepare(root / "src", root / "prepared", PrepareOptions(task="universal"), workers=1,
            show_progress=False)
    return root / "prepared"


def _frcnn_run(folder: Path, epochs: int = 5) -> list[dict]:
    folder.mkdir(parents=True)
    args = {"tool": "lesion", "command": "train frcnn", "prepared": "/x/prepared",
            "options": {"arch": "mobilenet_v3_fpn", "pretrained": "none", "optimizer": "adam",
                        "lr": None, "batch_size": 2, "size_px": None, "augment": "seed",
                        "scheduler": "none", "epochs": 10, "balanced": True, "amp": False,
                        "weight_decay": 0.0},
            "world_size": 1, "classes": ["lesion"]}
    (folder / "args.json").write_text(json.dumps(args))
    rows = []
    with runlog.MetricsWriter(folder / "metrics.csv") as writer:
        for e in range(1, epochs + 1):
            row = {"step": 10 * e, "epoch": float(e), "loss": 2.0 / e, "avg_loss": 2.1 / e,
                   "lr": 1e-4, "images": 20 * e, "seconds": 4.0, "images_per_s": 5.0 + e,
                   "train_mAP50": 0.1 * e, "train_mAP": 0.05 * e, "train_mean_iou": 0.5,
                   "train_froc_sens4": 0.15 * e, "val_mAP50": [0.1, 0.3, 0.45, 0.4, 0.45][e - 1],
                   "val_mAP": 0.02 * e, "val_mean_iou": 0.6, "val_froc_sens4": 0.1 * e,
                   "data_wait": 0.1}
            writer.write(row)
            rows.append(row)
    return rows


def _yolo_run(folder: Path, iterations: int = 120, args: bool = True) -> list[dict]:
    """A `lesion train yolo` run folder; ``args=False``: one of an older lesion, without
    args.json."""
    folder.mkdir(parents=True)
    (folder / "yolo.cfg").write_text(
        "# lesion: yolov4-tiny for 1 class(es) at 416 x 416, written by x\n\n"
        "[net]\nbatch=64\nsubdivisions=16\nwidth=416\nheight=416\nlearning_rate=0.00261\n"
        "max_batches=6000\n\n[convolutional]\nfilters=16\nsize=3\nstride=1\n")
    net = {"batch": "64", "subdivisions": "16", "width": "416", "height": "416",
           "learning_rate": "0.00261", "max_batches": "6000"}
    if args:
        (folder / "args.json").write_text(json.dumps({
            "tool": "lesion", "version": "0", "command": "train yolo", "backend": "darknet",
            "prepared": "/x/prepared", "cfg": str(folder / "yolo.cfg"), "weights": None,
            "darknet": {"binary": "/usr/bin/darknet", "fork": "alexeyab"}, "gpus": "0",
            "map": True, "resumed": False,
            "options": {"arch": "yolov4-tiny", "width": 416, "height": 416, "channels": 3,
                        "batch": 64, "subdivisions": 16, "max_batches": 6000, "burn_in": 1000,
                        "learning_rate": 0.00261, "steps": [4800, 5400], "scales": [0.1, 0.1],
                        "policy": "steps", "classes": 1},
            "net": net}))
    (folder / "darknet.log").write_text(
        f"$ /usr/bin/darknet detector train {folder}/obj.data {folder}/yolo.cfg -dont_show "
        "-map\n 1: 900.1, 900.1 avg loss, 0.000000 rate, 1.2 seconds, 64 images\n")
    rows = []
    with runlog.MetricsWriter(folder / "metrics.csv") as writer:
        for it in range(1, iterations + 1):
            row = {"step": it, "epoch": it * 64 / 46, "loss": 100.0 / it, "avg_loss": 90.0 / it,
                   "lr": 0.001, "images": 64 * it, "seconds": 1.5, "images_per_s": 64 / 1.5}
            if it % 40 == 0:
                row["val_mAP50"] = it / 200
            writer.write(row)
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    frcnn_rows = _frcnn_run(root / "frcnn_s0")
    yolo_rows = _yolo_run(root / "yolo_tiny")
    return root / "frcnn_s0", frcnn_rows, root / "yolo_tiny", yolo_rows


@pytest.fixture(scope="module")
def detections(prepared, tmp_path_factory):
    """Run "a": every lesion shifted by SHIFT px (scores from 0.95 down), except every fourth,
    missed by 30 px, plus FP_BOX (score 0.5) on every image; run "b": every other lesion only,
    and the same false positives (score 0.3)."""
    folder = tmp_path_factory.mktemp("dets")
    gt = load_ground_truth(prepared / "coco" / f"{SPLIT}.json")
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for k in range(len(gt.image)):
        box = gt.box_xywh[k] + np.array([SHIFT, SHIFT, 0, 0])
        s = float(round(0.95 - 0.02 * k, 3))
        missed = box + np.array([30.0, 30.0, 0, 0]) if k % 4 == 3 else box
        rows_a.append((int(gt.image[k]), 1, missed.tolist(), s))
        if k % 2 == 0:
            rows_b.append((int(gt.image[k]), 1, (box + rng.normal(0, 1, 4).clip(-1, 1)).tolist(),
                           s))
    for i in range(gt.n_images):
        rows_a.append((i, 1, FP_BOX, 0.5))
        rows_b.append((i, 1, FP_BOX, 0.3))
    for name, rows in (("a", rows_a), ("b", rows_b)):
        write_coco_results(folder / f"{name}.json", gt, make_dets(rows))
    return folder / "a.json", folder / "b.json", gt


@pytest.fixture(scope="module")
def eval_dirs(prepared, detections, tmp_path_factory):
    """The real `lesion eval --out` (bootstrap for intervals), which records each run's
    detection file, and a copy without those paths (a metrics.json from before they were
    recorded, or whose detection files were moved away)."""
    a, b, _ = detections
    root = tmp_path_factory.mktemp("evals")
    with_paths = root / "cmp_dets"
    result = CliRunner().invoke(main, ["eval", str(prepared), str(a), str(b), "--split", SPLIT,
                                       "--out", str(with_paths), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    doc = json.loads((with_paths / "metrics.json").read_text())
    assert doc["runs"]["a"]["detections"] == str(Path(a).resolve())
    plain = root / "cmp"
    shutil.copytree(with_paths, plain)
    for run in doc["runs"].values():
        del run["detections"]
    (plain / "metrics.json").write_text(json.dumps(doc))
    return plain, with_paths


@pytest.fixture(scope="module")
def full(train_runs, eval_dirs, prepared, detections, tmp_path_factory):
    frcnn, _, yolo, _ = train_runs
    gt = detections[2]
    chosen = gt.image_names[0]
    out = tmp_path_factory.mktemp("out") / "report"
    result = build_report([frcnn, yolo], [eval_dirs[1]], prepared, out, pdf=True,
                          images=[chosen, "no_such_image.png"], n_overlay=2)
    return result, chosen


def _links(index: Path) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", index.read_text())


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# --------------------------------------------------------------------------------- full report


def test_full_report_files(full):
    result, _ = full
    assert isinstance(result, ReportResult)
    out = result.out_dir
    assert result.index == out / "index.md" and result.index in result.files
    assert len(set(result.files)) == len(result.files)
    for f in result.files:
        assert f.is_file(), f
        if f.suffix == ".png":
            with Image.open(f) as im:
                im.verify()
            assert f.with_suffix(".pdf") in result.files, f  # pdf=True: every figure twice
        elif f.suffix == ".pdf":
            assert f.read_bytes().startswith(b"%PDF")
    rel = {f.relative_to(out).as_posix() for f in result.files}
    expected = {"index.md", "report.tex", "runs/frcnn_s0_curves.png", "runs/yolo_tiny_curves.png",
                "data/class_histogram.png", "data/box_size_mm.png", "eval/froc.png",
                "eval/pr_a.png", "eval/confusion_a.png",
                "eval/confusion_norm_b.png"}
    for name in ("runs", "data", "backends", "per_class", "froc", "box_size"):
        expected |= {f"tables/{name}.{ext}" for ext in ("md", "tex", "csv")}
    assert expected <= rel
    for run in ("a", "b"):
        shots = sorted(r for r in rel if r.startswith(f"overlays/{run}/")
                       and r.endswith(".png"))
        assert [s.split("/")[-1].split("_")[0] for s in shots].count("best") == 2
        assert [s.split("/")[-1].split("_")[0] for s in shots].count("worst") == 2
        assert sum(s.split("/")[-1].startswith("image_") for s in shots) == 1
    assert any("no_such_image.png" in w for w in result.warnings)


def test_index_links_exist_and_are_relative(full):
    result, _ = full
    links = _links(result.index)
    assert len(links) > 30
    for link in links:
        assert not link.startswith("/") and "://" not in link
        assert (result.out_dir / link).is_file(), link
    text = result.index.read_text()
    order = [text.index(h) for h in ("## Data", "## Training", "## Results", "## Curves",
                                     "## Overlays", "## Tables")]
    assert order == sorted(order)
    written_figures = {f for f in result.files if f.suffix == ".png"}
    linked = {result.out_dir / link for link in links}
    assert written_figures <= linked


def test_backend_table_numbers_are_metrics_json(full, eval_dirs):
    result, _ = full
    doc = json.loads((eval_dirs[1] / "metrics.json").read_text())
    rows = {r["run"]: r for r in _csv_rows(result.out_dir / "tables" / "backends.csv")}
    assert set(rows) == {"a", "b"}
    md = (result.out_dir / "tables" / "backends.md").read_text()
    tex = (result.out_dir / "tables" / "backends.tex").read_text()
    assert any(lo < hi for b in doc["runs"].values() for lo, hi in b["bootstrap"]["ci95"].values())
    for run, b in doc["runs"].items():
        row = rows[run]
        ci = b["bootstrap"]["ci95"]
        fps = b["froc"]["fps"]
        checks = {"COCO AP": (b["coco"]["AP"], ci["coco.AP"]),
                  "AP50": (b["coco"]["AP50"], ci["coco.AP50"]),
                  "AP75": (b["coco"]["AP75"], None),
                  "VOC mAP": (b["voc"]["map_all"], ci["voc.map_all"]),
                  "FROC@4": (b["froc"]["sens"][fps.index(4)], ci["froc.sens@4"]),
                  "FROC@0.5": (b["froc"]["sens"][0], None),
                  "FROC@16": (b["froc"]["sens"][fps.index(16)], None),
                  "FROC mean@0.5-4": (b["froc"]["mean_sens_0.5_4"], ci["froc.mean_sens_0.5_4"]),
                  "precision": (b["at_score"]["precision"], None),
                  "recall": (b["at_score"]["recall"], None),
                  "F1": (b["at_score"]["f1"], ci["at_score.f1"])}
        for column, (value, interval) in checks.items():
            assert float(row[column]) == pytest.approx(value, abs=1e-12), column
            text = f"{value:.3f}"
            if interval is not None:
                assert float(row[f"{column} ci95 low"]) == pytest.approx(interval[0], abs=1e-12)
                assert float(row[f"{column} ci95 high"]) == pytest.approx(interval[1], abs=1e-12)
                text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
            assert text in md, (column, text)
            assert text in tex, (column, text)
        assert int(row["images"]) == b["n_images"]
        assert float(row["score"]) == doc["options"]["score"]
        md_row = next(line for line in md.splitlines() if line.startswith(f"| {run} |"))
        assert f"| {b['coco']['AP']:.3f} [{ci['coco.AP'][0]:.3f}, {ci['coco.AP'][1]:.3f}] |" \
            in md_row


def test_other_eval_tables_are_metrics_json(full, eval_dirs):
    result, _ = full
    doc = json.loads((eval_dirs[1] / "metrics.json").read_text())
    tdir = result.out_dir / "tables"
    per_class = _csv_rows(tdir / "per_class.csv")
    assert len(per_class) == sum(len(b["per_class"]) for b in doc["runs"].values())
    for row in per_class:
        c = doc["runs"][row["run"]]["per_class"][row["category_id"]]
        assert row["class"] == c["name"] and int(row["n_gt"]) == c["n_gt"]
        for column, key in (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AR100", "AR100"),
                            ("VOC AP all-point", "voc_ap_all"), ("VOC AP 11-point", "voc_ap11")):
            assert float(row[column]) == pytest.approx(c[key], abs=1e-12)
    froc = _csv_rows(tdir / "froc.csv")
    for row in froc:
        b = doc["runs"][row["run"]]
        if row["subset"] == "all":
            f = b["froc"]
        else:
            kind, name = row["subset"].split(" ", 1)
            f = b["strata"][kind][name]["froc"]
        assert int(row["lesions"]) == f["n_lesions"]
        for fp, sens in zip(f["fps"], f["sens"]):
            cell = row[f"@{fp:g} FP/img"]
            assert (cell == "") if sens is None else float(cell) == pytest.approx(sens, abs=1e-12)
        mean = f["mean_sens_0.5_4"]
        assert (row["mean@0.5-4"] == "") if mean is None else \
            float(row["mean@0.5-4"]) == pytest.approx(mean, abs=1e-12)
    assert {r["subset"] for r in froc} >= {"all", "size 10-30mm"}
    box = {r["run"]: r for r in _csv_rows(tdir / "box_size.csv")}
    for run, b in doc["runs"].items():
        s = b["box_size"]
        assert int(box[run]["matched"]) == s["n_matched"]
        for column, value in (("bigger share", s["bigger"]["share"]),
                              ("smaller share", s["smaller"]["share"]),
                              ("pred/gt geo. mean", s["ratio_pred_over_gt"]["geometric_mean"])):
            if value is None:
                assert box[run][column] == ""
            else:
                assert float(box[run][column]) == pytest.approx(value, abs=1e-12)
                assert f"{value:.3f}" in (tdir / "box_size.md").read_text()
    tex = (tdir / "per_class.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "VOC AP all-point" in tex


def test_run_and_data_tables(full, train_runs, prepared):
    result, _ = full
    _, frcnn_rows, _, yolo_rows = train_runs
    rows = {r["run"]: r for r in _csv_rows(result.out_dir / "tables" / "runs.csv")}
    f, y = rows["frcnn_s0"], rows["yolo_tiny"]
    assert f["arch"] == "mobilenet_v3_fpn" and f["unit"] == "epoch"
    assert int(f["trained"]) == 5 and int(f["planned"]) == 10
    assert float(f["best val mAP50"]) == 0.45 and int(f["at"]) == 3  # first of the ties
    assert float(f["final loss"]) == frcnn_rows[-1]["loss"]
    assert float(f["images/s"]) == 8.0
    assert "adam lr 0.0001" in f["options"] and "balanced" in f["options"]
    assert FRCNN_DEFAULT_LR["adam"] == 1e-4
    assert y["arch"] == "yolov4-tiny" and y["unit"] == "iteration"
    assert int(y["trained"]) == 120 and int(y["planned"]) == 6000
    assert float(y["best val mAP50"]) == 0.6 and int(y["at"]) == 120
    assert float(y["final loss"]) == yolo_rows[-1]["avg_loss"]
    assert "size 416x416" in y["options"] and "-map" in y["options"]
    data = {r["split"]: r for r in _csv_rows(result.out_dir / "tables" / "data.csv")}
    manifest = json.loads((prepared / "manifest.json").read_text())
    for split, c in manifest["counts"].items():
        assert int(data[split]["images"]) == c["images"]
        assert int(data[split]["lesions"]) == c["lesions"]
        assert int(data[split]["lesion"]) == c["per_class"]["lesion"]
        assert int(data[split]["patients"]) == c["patients"]
    test_doc = json.loads((prepared / "coco" / "test.json").read_text())
    d = [a["recist_diameters_mm"][0] for a in test_doc["annotations"]]
    assert float(data["test"]["long diameter median (mm)"]) == pytest.approx(np.median(d))


def test_overlay_draws_boxes_where_they_are(full, detections, prepared):
    result, chosen = full
    _, _, gt = detections
    path = result.out_dir / "overlays" / "a" / f"image_{Path(chosen).stem}.png"
    assert path in result.files
    with Image.open(prepared / SPLIT / chosen) as src:
        width, height = src.size
    with Image.open(path) as im:
        im = im.convert("RGB")
        k = im.width // width
        assert im.width == k * width and k >= 5 and im.height > k * height  # caption band
        px = im.load()
    idx = gt.image_names.index(chosen)
    for g in np.flatnonzero(gt.image == idx):
        assert g % 4 != 3  # run "a" found this lesion
        x, y, w, h = gt.box_xywh[g]
        mid = int(round((y + h / 2) * k))
        assert px[int(round(x * k)), mid] == overlays.GT_COLOR
        assert px[int(round((x + w) * k)) - 1, mid] == overlays.GT_COLOR
        assert px[int(round((x + w / 2) * k)), int(round((y + h) * k)) - 1] == overlays.GT_COLOR
        # run "a" found it, shifted by SHIFT px: a true positive (orange) left edge inside
        tx = int(round((x + SHIFT) * k))
        assert px[tx, int(round((y + SHIFT + h / 2) * k))] == overlays.TP_COLOR
        assert px[tx + 3, int(round((y + SHIFT + h / 2) * k))] != overlays.TP_COLOR  # 2 px line
    fx, fy, fw, fh = FP_BOX
    assert px[int(round(fx * k)), int(round((fy + fh / 2) * k))] == overlays.FP_COLOR
    assert px[int(round((fx + fw) * k)) - 1, int(round((fy + fh / 2) * k))] == overlays.FP_COLOR


def test_best_and_worst_ranking():
    gt = make_gt(4, [(0, 1, [10, 10, 20, 20]), (1, 1, [10, 10, 20, 20]), (2, 1, [10, 10, 20, 20]),
                     (3, 1, [10, 10, 20, 20])])
    dets = make_dets([(0, 1, [10, 10, 20, 20], 0.9),                 # perfect
                      (1, 1, [12, 12, 20, 20], 0.9),                 # TP, lower IoU
                      (2, 1, [12, 12, 20, 20], 0.9), (2, 1, [60, 60, 5, 5], 0.8),  # TP + FP
                      (3, 1, [60, 60, 5, 5], 0.9), (3, 1, [10, 10, 20, 20], 0.1)])  # miss (low)
    scores = overlays.image_scores(gt, dets, score=0.25, iou=0.5)
    assert [(s.tp, s.fp, s.fn) for s in scores] == [(1, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 1)]
    best, worst = overlays.best_and_worst(scores, 2)
    assert [s.name for s in best] == ["0.png", "1.png"]
    assert [s.name for s in worst] == ["3.png", "2.png"]
    best, worst = overlays.best_and_worst(scores, 3)  # disjoint: halves
    assert len(best) == 2 and len(worst) == 2
    assert overlays.best_and_worst(scores, 0) == ([], [])


# ----------------------------------------------------------------------------- partial inputs


def test_runs_only(train_runs, tmp_path):
    frcnn, _, yolo, _ = train_runs
    result = build_report([frcnn, yolo], out_dir=tmp_path / "r")
    rel = {f.relative_to(result.out_dir).as_posix() for f in result.files}
    assert {"runs/frcnn_s0_curves.png", "runs/yolo_tiny_curves.png", "tables/runs.csv"} <= rel
    assert not any(r.endswith(".pdf") for r in rel)
    assert "## Results" not in result.index.read_text()
    for link in _links(result.index):
        assert (result.out_dir / link).is_file()


def test_eval_only_without_detection_paths(eval_dirs, tmp_path):
    plain, _ = eval_dirs
    result = build_report(evals=[plain], out_dir=tmp_path / "r", images=["x.png"])
    rel = {f.relative_to(result.out_dir).as_posix() for f in result.files}
    assert {"eval/froc.png", "eval/pr_a.png", "tables/backends.md"} <= rel
    assert not any(r.startswith("overlays/") for r in rel)
    assert sum("records no detection file" in w for w in result.warnings) == 2
    assert "## Warnings" in result.index.read_text()


def test_two_evals_are_labelled(eval_dirs, tmp_path):
    plain, with_paths = eval_dirs
    result = build_report(evals=[plain, with_paths], out_dir=tmp_path / "r", n_overlay=1)
    runs = [r["run"] for r in _csv_rows(result.out_dir / "tables" / "backends.csv")]
    assert runs == ["cmp/a", "cmp/b", "cmp_dets/a", "cmp_dets/b"]


def test_prepared_only_with_chosen_image(prepared, tmp_path):
    name = json.loads((prepared / "coco" / "val.json").read_text())["images"][0]["file_name"]
    result = build_report(prepared=prepared, out_dir=tmp_path / "r", images=[name], pdf=True)
    rel = {f.relative_to(result.out_dir).as_posix() for f in result.files}
    stem = Path(name).stem
    assert {"data/class_histogram.png", "data/class_histogram.pdf", "data/box_size_mm.png",
            f"overlays/prepared/val_{stem}.png", "tables/data.tex"} <= rel
    assert result.warnings == []


def test_bad_inputs(tmp_path, train_runs, eval_dirs):
    with pytest.raises(ReportInputError, match="nothing to report"):
        build_report(out_dir=tmp_path / "r")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ReportInputError, match=re.escape(f"{empty}: no metrics.csv")):
        build_report([empty], out_dir=tmp_path / "r")
    with pytest.raises(ReportInputError, match="no metrics.json"):
        build_report(evals=[empty], out_dir=tmp_path / "r")
    with pytest.raises(ReportInputError, match="not a folder"):
        build_report([tmp_path / "missing"], out_dir=tmp_path / "r")
    with pytest.raises(ReportInputError, match="not a prepared folder"):
        build_report(prepared=empty, out_dir=tmp_path / "r")
    odd = tmp_path / "odd_run"
    shutil.copytree(train_runs[0], odd)
    (odd / "args.json").write_text(json.dumps({"command": "predict frcnn"}))
    with pytest.raises(ReportInputError, match="args.json: not written by lesion train frcnn"):
        build_report([odd], out_dir=tmp_path / "r")
    (odd / "args.json").unlink()
    with pytest.raises(ReportInputError, match="neither args.json"):
        build_report([odd], out_dir=tmp_path / "r")
    broken = tmp_path / "broken_eval"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(ReportInputError, match="metrics.json is not valid JSON"):
        build_report(evals=[broken], out_dir=tmp_path / "r")
    assert issubclass(ReportInputError, ValueError)


def test_missing_detection_file_is_a_warning(eval_dirs, tmp_path):
    _, with_paths = eval_dirs
    copy = tmp_path / "moved"
    shutil.copytree(with_paths, copy)
    doc = json.loads((copy / "metrics.json").read_text())
    doc["runs"]["a"]["detections"] = str(tmp_path / "gone.json")
    del doc["runs"]["b"]["detections"]
    doc["detections"] = {"b": doc["ground_truth"]}  # not a detection file: read error
    (copy / "metrics.json").write_text(json.dumps(doc))
    result = build_report(evals=[copy], out_dir=tmp_path / "r", n_overlay=1)
    assert any("gone.json not found" in w for w in result.warnings)
    assert any("run b:" in w for w in result.warnings)
    assert not any("/overlays/" in f.as_posix() for f in result.files)


# ------------------------------------------------------------------------- library pieces


def test_training_curves_keeps_the_engine_call(tmp_path, train_runs):
    rows = runlog.read_metrics(train_runs[0] / "metrics.csv")
    png = tmp_path / "curves.png"
    plots.training_curves(rows, png, "title")  # frcnn.engine's call
    with Image.open(png) as im:
        im.verify()
    assert not png.with_suffix(".pdf").exists()


def test_table_formats():
    t = tables.Table("t", "T_1 & co", ["run", "AP", "n"],
                     [["a_b", tables.Cell(0.81234, (0.79, 0.8333)), 3], ["c|d", None, -1.0]])
    md = tables.table_markdown(t)
    assert "| a_b | 0.812 [0.790, 0.833] | 3 |" in md
    assert "| c\\|d | – | -1.0 |" not in md and "| c\\|d | – | -1 |" in md
    rows = list(csv.reader(io.StringIO(tables.table_csv(t))))
    assert rows[0] == ["run", "AP", "AP ci95 low", "AP ci95 high", "n"]
    assert rows[1] == ["a_b", "0.81234", "0.79", "0.8333", "3"]
    assert rows[2] == ["c|d", "", "", "", "-1.0"]
    from deeplesion_cli.report import latex

    tex = latex.table_latex(t)
    assert r"\caption{T\_1 \& co}" in tex and r"a\_b & 0.812 [0.790, 0.833] & 3 \\" in tex


def test_run_summary_of_empty_log(tmp_path):
    run = tmp_path / "yolo_empty"
    _yolo_run(run, iterations=0)
    info = load_run(run, "yolo_empty")
    s = run_summary(info)
    assert s["trained"] is None and s["best_val_mAP50"] is None
    result = build_report([run], out_dir=tmp_path / "r")
    assert any("no rows" in w for w in result.warnings)


def test_darknet_run_without_args_json(tmp_path):
    """A darknet run folder of an older lesion (darknet.log, no args.json) is still reported:
    curves and numbers from metrics.csv, architecture and cfg options unknown, and a note."""
    run = tmp_path / "yolo_old"
    rows = _yolo_run(run, iterations=40, args=False)
    info = load_run(run, "yolo_old")
    assert info.backend == "darknet" and info.arch == "?" and info.net == {}
    assert not info.with_map and info.notes
    s = run_summary(info)
    assert s["arch"] == "?" and s["options"] == "" and s["planned"] is None
    assert s["trained"] == 40 and s["final_loss"] == rows[-1]["avg_loss"]
    result = build_report([run], out_dir=tmp_path / "r")
    assert any("yolo_old: no args.json" in w for w in result.warnings)
    assert "runs/yolo_old_curves.png" in {f.relative_to(result.out_dir).as_posix()
                                          for f in result.files}


def test_confusion_row_normalised():
    m = plots.row_normalised([[2, 1, 1], [0, 0, 0], [3, 1, 0]])
    assert m.tolist() == [[0.5, 0.25, 0.25], [0, 0, 0], [0.75, 0.25, 0]]
