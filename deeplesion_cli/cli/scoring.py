"""Scoring commands: ``lesion eval`` and ``lesion report``.

Their options are declared once in :mod:`deeplesion_cli.spec.evaluation`; the work is done by
:mod:`deeplesion_cli.steps`.
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplesion_cli.cli.group import console, main, warn
from deeplesion_cli.spec.evaluation import EVAL, REPORT


def _parse_preds(positional, named) -> dict[str, Path]:
    """Run name -> detections file. A --pred name given twice, or equal to the name of a
    positional file (its stem), is an error naming both files: one run would be lost. Positional
    files sharing a stem are told apart by ``_`` suffixes."""
    runs: dict[str, Path] = {}
    named_names = {item.partition("=")[0] for item in named}
    for item in named:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise click.UsageError(f"--pred {item!r}: expected NAME=FILE, e.g. frcnn=dets.json")
        if name in runs:
            raise click.UsageError(f"--pred {name}: the run name {name!r} is given twice "
                                   f"({runs[name]} and {file}); give each run its own name")
        runs[name] = Path(file)
    for file in positional:
        name = Path(file).stem
        if name in named_names:
            raise click.UsageError(f"{file}: its run name {name!r} (the file name's stem) is also "
                                   f"a --pred name ({runs[name]}); name it with "
                                   f"--pred OTHER={file}")
        while name in runs:
            name += "_"
        runs[name] = Path(file)
    if not runs:
        raise click.UsageError("no detections: give a file, or --pred NAME=FILE (repeatable)")
    return runs


def print_summary(document: dict, title: str) -> None:
    """The side-by-side summary table of a metrics document, on the console."""
    from rich.table import Table

    from deeplesion_cli.report.tables import summary_rows

    header, rows = summary_rows(document)
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console().print(table)


@main.command("eval")
@click.argument("ground_truth", type=click.Path(exists=True, path_type=Path))
@click.argument("predictions", nargs=-1, type=click.Path(path_type=Path))
@click.option("--pred", "named_preds", multiple=True, metavar="NAME=FILE",
              help="A run to score, named; repeat for a side-by-side table.")
@click.option("--pred-format", type=click.Choice(["auto", "coco", "darknet-json",
                                                  "darknet-valid"]), default="auto",
              show_default=True, help="Detection file format (auto-detected by default).")
@click.option("--names", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="obj.names mapping darknet class ids to names (default: the prepared "
                   "folder's, when GROUND_TRUTH is one).")
@click.option("--split", default="test", show_default=True,
              help="Split to score when GROUND_TRUTH is a prepared folder.")
@EVAL.click_options()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write metrics.json, per_class.csv, summary.md and PNG plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout.")
def eval_(ground_truth, predictions, named_preds, pred_format, names, split, out_dir, as_json,
          **params) -> None:
    """Score detections of any backend against COCO ground truth, side by side.

    GROUND_TRUTH is a COCO json (e.g. prepared/coco/test.json) or a prepared folder (its
    --split is used). Detections: COCO results json (lesion predict), darknet `detector test
    -out` json, or darknet `detector valid` comp4 files; image names and class names are
    matched to the ground truth, and anything unknown is an error, never dropped.

    \b
    Examples:
      lesion eval prepared/ frcnn.json
      lesion eval prepared/coco/test.json --pred frcnn=frcnn.json --pred yolo=result.json --out cmp/
      lesion eval prepared/ --pred yolo=results/ --pred-format darknet-valid --bootstrap 1000
    """
    from deeplesion_cli import steps

    files = _parse_preds(predictions, named_preds)
    result = steps.evaluate(ground_truth, files, EVAL.from_cli(params), split=split,
                            pred_format=pred_format, names=names, out_dir=out_dir,
                            show_progress=True)
    if out_dir:
        click.echo(f"wrote {len(result.written)} files to {out_dir}", err=True)
    if as_json:
        import json

        click.echo(json.dumps(result.document, indent=1))
    else:
        print_summary(result.document, f"{result.ground_truth_path} ({result.n_images} images, "
                                       f"{result.n_boxes} boxes)")
    for warning in result.document.get("warnings", []):
        warn(warning)


@main.command("report")
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eval", "evals", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder written by `lesion eval --out` (repeatable).")
@click.option("--prepared", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Prepared folder: class and size histograms, overlay images.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@REPORT.click_options()
def report(runs, evals, prepared, out_dir, **params) -> None:
    """Figures and tables of a benchmark paper from runs, evaluations and the data.

    RUNS are `lesion train frcnn` / `lesion train yolo` run folders (training curves, run
    table); --eval folders give PR, FROC, confusion matrices, overlays of the best and worst
    images, and the comparison tables (Markdown, LaTeX, CSV). OUT/index.md links everything.

    \b
    Examples:
      lesion report runs/frcnn runs/yolo --eval cmp/ --prepared prepared/ --out report/
      lesion report --eval cmp/ --out report/ --pdf --image 000001_01_01_109.png
    """
    from deeplesion_cli import steps

    result = steps.report(runs, evals, prepared, out_dir, REPORT.from_cli(params))
    for warning in result.warnings:
        warn(warning)
    click.echo(f"wrote {len(result.files)} files; open {result.index}")
