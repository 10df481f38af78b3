"""Issue 13, items 2 and 3: detection counts and empty results visible in every table (console,
summary.md, the report), a report that reads top to bottom (no doubled folder names or
headings, integer epoch ticks, the mean-IoU panel), and `lesion predict ... --draw N`."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deeplesion_cli import runlog
from deeplesion_cli.cli import main
from deeplesion_cli.evaluation.evaluate import evaluate_runs
from deeplesion_cli.report import overlays, plots, tables
from deeplesion_cli.report.build import build_report
from tests.conftest import make_dets, make_gt


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def scored(synth_set, tmp_path_factory):
    """The session's synthetic set prepared once; detections of run "good" (every test lesion,
    plus a low-score false positive per image) and of run "none" (an empty file);
    `lesion eval` of both into a folder named ``eval`` (as the demo and matrix name theirs)."""
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root, _ = synth_set
    base = tmp_path_factory.mktemp("clarity")
    prepared = base / "prepared"
    prepare(root, prepared, PrepareOptions(task="universal"), workers=1, show_progress=False)
    gt = json.loads((prepared / "coco" / "test.json").read_text())
    good = [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    good += [{"image_id": im["id"], "category_id": gt["categories"][0]["id"],
              "bbox": [2, 2, 10, 10], "score": 0.1} for im in gt["images"]]
    (base / "good.json").write_text(json.dumps(good))
    (base / "none.json").write_text("[]")
    eval_dir = base / "eval"
    result = invoke("eval", prepared, "--split", "test", "--pred", f"good={base / 'good.json'}",
                    "--pred", f"none={base / 'none.json'}", "--out", eval_dir)
    assert result.exit_code == 0, result.output
    return {"base": base, "prepared": prepared, "eval": eval_dir, "gt": gt,
            "n_good": len(good), "stdout": result.stdout}


def _frcnn_run(folder: Path, epochs: int = 3, mean_iou: bool = False) -> Path:
    """A fake `lesion train frcnn` run folder; ``mean_iou`` False: no true positive yet (the
    mean-IoU columns empty, as early epochs log them)."""
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps({
        "tool": "lesion", "command": "train frcnn",
        "options": {"arch": "resnet18_fpn", "optimizer": "adam", "lr": 1e-3, "epochs": epochs,
                    "batch_size": 2}}))
    with runlog.MetricsWriter(folder / "metrics.csv") as writer:
        for e in range(1, epochs + 1):
            writer.write({"step": 10 * e, "epoch": float(e), "loss": 2.0 / e, "images": 20 * e,
                          "seconds": 2.0, "images_per_s": 10.0, "train_mAP50": 0.1 * e,
                          "val_mAP50": 0.05 * e, "train_mAP": 0.01 * e, "val_mAP": 0.01 * e,
                          "train_mean_iou": 0.6 if mean_iou else None,
                          "val_mean_iou": 0.55 if mean_iou else None,
                          "train_froc_sens4": 0.1, "val_froc_sens4": 0.1})
    return folder


@pytest.fixture(scope="module")
def full_report(scored, tmp_path_factory):
    """A report of a training run named like an evaluated run ("good"), the evaluation and the
    prepared folder."""
    base = tmp_path_factory.mktemp("clarity_report")
    run = _frcnn_run(base / "runs" / "good")
    return build_report([run], [scored["eval"]], scored["prepared"], base / "report",
                        n_overlay=1)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]


# --------------------------------------------------------------- item 2: detections visible

def test_summary_rows_count_detections_and_flag_an_empty_run():
    gt = make_gt(4, [(i, 1, [10, 10, 8, 8]) for i in range(4)])
    dets = make_dets([(i, 1, [10, 10, 8, 8], 0.9) for i in range(4)]
                     + [(0, 1, [40, 40, 8, 8], 0.1), (1, 1, [40, 40, 8, 8], 0.1)])
    doc = evaluate_runs(gt, {"good": dets, "none": make_dets([])})
    header, rows = tables.summary_rows(doc)
    assert header == ["metric", "good", "none"]
    by_label = {r[0]: r[1:] for r in rows}
    assert by_label["detections (all scores)"] == ["6", "0 (no detections)"]
    assert by_label["detections per image"] == ["1.50", "0.00"]
    assert by_label["detections @score 0.25"] == ["4", "0 (none kept)"]
    # the console's version: the same words, in red; plain text never carries markup
    _, marked = tables.summary_rows(doc, markup=True)
    assert marked[0][2] == "[bold red]0 (no detections)[/bold red]" and marked[0][1] == "6"
    assert not any("[bold" in cell for row in rows for cell in row)
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for h in header:
        table.add_column(h)
    for row in marked:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="standard", width=200).print(table)
    assert "\x1b[1;31m0 (no detections)" in out.getvalue()
    # summary.md: the counts and the sentence, no markup
    md = tables.summary_markdown(doc)
    assert "| detections (all scores) | 6 | 0 (no detections) |" in md
    assert "**none: no detections" in md and "bold red" not in md
    assert "good: no detections" not in md


def test_eval_console_summary_and_report_show_the_counts(scored, full_report):
    n_images = len(scored["gt"]["images"])
    rows = {_cells(line)[0]: _cells(line)[1:] for line in scored["stdout"].splitlines()
            if line.startswith("│ detections")}
    assert rows["detections (all scores)"] == [str(scored["n_good"]), "0 (no detections)"]
    assert rows["detections per image"] == [f"{scored['n_good'] / n_images:.2f}", "0.00"]
    assert "[bold red]" not in scored["stdout"]          # markup rendered, never printed
    summary = (scored["eval"] / "summary.md").read_text()
    assert "| detections (all scores) | " f"{scored['n_good']} | 0 (no detections) |" in summary
    # the report: the backend table's columns, and the empty run in words
    out = full_report.out_dir
    backends = {r["run"]: r for r in csv.DictReader(io.StringIO(
        (out / "tables" / "backends.csv").read_text()))}
    assert backends["good"]["detections"] == str(scored["n_good"])
    assert float(backends["good"]["per image"]) == pytest.approx(scored["n_good"] / n_images)
    assert backends["none"]["detections"] == "0" and backends["none"]["kept @score"] == "0"
    index = full_report.index.read_text()
    results = index[index.index("## Results"):index.index("## Curves")]
    assert "**none: no detections" in results and "good: no detections" not in results


def test_matrix_table_counts_detections():
    from deeplesion_cli import matrix as mx

    assert mx.COMPARISON_METRICS[0][:2] == ("detections", "n_detections")
    assert mx.fmt_metric(12, "n_detections") == "12"
    assert mx.fmt_metric(0, "n_detections") == "0 (no detections)"
    assert mx.fmt_metric(0, "n_detections", markup=True) == \
        "[bold red]0 (no detections)[/bold red]"
    assert mx.fmt_metric(None, "n_detections") == "–" and mx.fmt_metric(0.5, "ap50") == "0.5000"


# --------------------------------------------------------------------- item 3: report clarity

def test_no_doubled_folder_names(full_report, scored):
    rel = {f.relative_to(full_report.out_dir).as_posix() for f in full_report.files}
    assert not any(re.search(r"(^|/)([^/]+)/\2/", r) for r in rel), sorted(rel)
    assert {"eval/froc.png", "eval/pr_good.png", "eval/confusion_none.png",
            "runs/good_curves.png"} <= rel
    assert any(r.startswith("overlays/good/best_1_") for r in rel), sorted(rel)


def test_index_reads_top_to_bottom_with_unique_headings(full_report):
    text = full_report.index.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings)), headings
    sections = [h[3:] for h in headings if h.startswith("## ")]
    assert sections[:7] == ["Data", "Training", "Results", "Curves",
                            "Precision-recall and confusion per run", "Overlays", "Tables"]
    assert "Sections, in reading order: Data · Training · Results" in text
    # one heading per table: the section's own when it has one table
    assert "### Training runs" not in text and "### Prepared data" not in text
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (full_report.out_dir / link).is_file(), link


def test_training_curves_tick_whole_epochs_and_keep_the_mean_iou_panel(tmp_path):
    rows = runlog.read_metrics(_frcnn_run(tmp_path / "run", epochs=3) / "metrics.csv")
    fig = plots.training_figure(rows, "run")
    fig.canvas.draw()
    titles = [ax.get_title() for ax in fig.axes]
    assert "mean IoU of TPs" in titles            # drawn although no epoch has a value
    iou_ax = fig.axes[titles.index("mean IoU of TPs")]
    assert any("mean IoU undefined" in t.get_text() for t in iou_ax.texts)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    # one epoch (the demo's, a first curves.png), and darknet's per-iteration x axis
    for rows, kwargs in (
            ([{"epoch": 1.0, "loss": 2.0}], {}),
            ([{"step": s, "loss": 1.0 / s, "avg_loss": 1.0 / s} for s in (1, 2, 3)],
             dict(x="step", panels=(("loss", None),), loss_columns=("loss", "avg_loss")))):
        fig = plots.training_figure(rows, **kwargs)
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


# ------------------------------------------------------------------------ predict --draw N

def test_spread_covers_the_split():
    assert overlays.spread(10, 3) == [0, 4, 9] and overlays.spread(3, 3) == [0, 1, 2]
    assert overlays.spread(2, 5) == [0, 1] and overlays.spread(5, 0) == []
    assert overlays.spread(7, 1) == [0]


def test_draw_predictions_writes_n_pictures(scored):
    dets = scored["base"] / "good.json"
    written = overlays.draw_predictions(scored["prepared"], "test", dets, 3)
    folder = overlays.draw_dir(dets)
    assert folder == scored["base"] / "good_draw"
    assert len(written) == 3 and sorted(folder.glob("*.png")) == sorted(written)
    names = {Path(im["file_name"]).stem for im in scored["gt"]["images"]}
    for p in written:
        assert p.stem in names
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))

        def has(color):
            return bool((rgb == np.asarray(color, np.uint8)).all(axis=-1).any())

        assert has(overlays.GT_COLOR) and has(overlays.TP_COLOR)
        assert not has(overlays.FP_COLOR)      # the 0.1 false positives are below 0.25
    # again with fewer: the folder holds exactly the new pictures
    assert len(overlays.draw_predictions(scored["prepared"], "test", dets, 1)) == 1
    assert len(list(folder.glob("*.png"))) == 1
