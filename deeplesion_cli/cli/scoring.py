"""Scoring commands: ``lesion eval`` and ``lesion report``.

Their options are declared once in :mod:`deeplesion_cli.spec.evaluation`; the work is done by
:mod:`deeplesion_cli.steps`.
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplesion_cli.cli.group import console, main, warn
from deeplesion_cli.spec.evaluation import EVAL, REPORT


def _named(run_item: str) -> str:
    """``--run RUN`` as ``NAME=RUN``, named after its folder (``NAME=RUN`` stays)."""
    if "=" in run_item:
        return run_item
    return f"{Path(run_item).name or Path(run_item).resolve().name}={run_item}"


def _parse_preds(positional, named, run_items=()) -> dict[str, Path]:
    """Run name -> detections file (or, for ``--run``, run folder). A name given twice (across
    --pred and --run), or equal to the name of a positional file (its stem), is an error naming
    both: one run would be lost. Positional files sharing a stem are told apart by ``_``
    suffixes. A --run without ``NAME=`` is named after its folder."""
    runs: dict[str, Path] = {}
    items = [("--pred", item) for item in named]
    items += [("--run", _named(item)) for item in run_items]
    named_names = {item.partition("=")[0] for _, item in items}
    for flag, item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            example = "frcnn=dets.json" if flag == "--pred" else "frcnn=runs/frcnn"
            raise click.UsageError(f"{flag} {item!r}: expected NAME="
                                   f"{'FILE' if flag == '--pred' else 'RUN'}, e.g. {example}")
        if name in runs:
            raise click.UsageError(f"{flag} {name}: the run name {name!r} is given twice "
                                   f"({runs[name]} and {file}); give each run its own name")
        runs[name] = Path(file)
    for file in positional:
        name = Path(file).stem
        if name in named_names:
            raise click.UsageError(f"{file}: its run name {name!r} (the file name's stem) is also "
                                   f"a --pred or --run name ({runs[name]}); name it with "
                                   f"--pred OTHER={file}")
        while name in runs:
            name += "_"
        runs[name] = Path(file)
    if not runs:
        raise click.UsageError("no detections: give a file, --pred NAME=FILE or --run NAME=RUN "
                               "(repeatable)")
    return runs


def score_test(run_dir: Path, prepared: Path, predict_values: dict | None = None) -> None:
    """``--test`` of ``lesion train frcnn|yolo``: predict the run's test split into its cache,
    score it into RUN/test/ and print the headline (rank 0 only under torchrun)."""
    from deeplesion_cli import steps
    from deeplesion_cli.lock import rank_zero

    if not rank_zero():
        return
    tested = steps.score_test(run_dir, prepared, values=predict_values)
    click.echo(f"test: {tested.detections.describe()}")
    for message in tested.detections.warnings:
        warn(message)
    click.echo(f"test {tested.name}: {tested.headline}; metrics, summary.md and plots in "
               f"{tested.out_dir}")
    for warning in tested.evaluation.document.get("warnings", []):
        warn(warning)


def print_summary(document: dict, title: str) -> None:
    """The side-by-side summary table of a metrics document, on the console."""
    from rich.table import Table

    from deeplesion_cli.report.tables import summary_rows

    header, rows = summary_rows(document, markup=True)
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
@click.option("--run", "run_items", multiple=True, metavar="NAME=RUN",
              help="A `lesion train frcnn|yolo` run folder to predict the --split from and "
                   "score (detections cached in RUN/detections/); repeatable, mixes with --pred.")
@click.option("--checkpoint", type=click.Choice(["best", "last", "every"]), default="best",
              show_default=True,
              help="--run: the run's best checkpoint (best.pt, _best.weights; the last one when "
                   "the run recorded no best), its last (last.pt, _final.weights), or every "
                   "saved one (epochs/epoch_*.pt of --save-every, <cfg>_<iteration>.weights and "
                   "_final.weights) scored on each --split into --out DIR/checkpoints.csv "
                   "(mAP over training).")
@click.option("--pred-format", type=click.Choice(["auto", "coco", "darknet-json",
                                                  "darknet-valid", "ultralytics"]),
              default="auto", show_default=True,
              help="Detection file format (auto-detected by default).")
@click.option("--class-base", type=click.IntRange(0, 1), default=None,
              help="Ultralytics predictions.json: category_id is the class index + 0 "
                   "(releases before 8.4) or + 1 (8.4). Default: detected from the file.")
@click.option("--names", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="obj.names mapping darknet class ids to names (default: the prepared "
                   "folder's, when GROUND_TRUTH is one).")
@click.option("--split", "split", multiple=True, metavar="SPLIT",
              help="Split to score when GROUND_TRUTH is a prepared folder (default test); with "
                   "--checkpoint every, repeat or comma-separate (default train,test).")
@EVAL.click_options()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write metrics.json, per_class.csv, summary.md and PNG plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout.")
def eval_(ground_truth, predictions, named_preds, run_items, checkpoint, pred_format, class_base,
          names, split, out_dir, as_json, **params) -> None:
    """Score detections of any backend against COCO ground truth, side by side.

    GROUND_TRUTH is a COCO json (e.g. prepared/coco/test.json) or a prepared folder (its
    --split is used). Detections: COCO results json (lesion predict), darknet `detector test
    -out` json, darknet `detector valid` comp4 files, or Ultralytics' predictions.json (`yolo
    detect val ... save_json=True`; its class-id base, 0 or 1, is detected and printed, or set
    with --class-base); image names and class names are matched to the ground truth, and
    anything unknown is an error, never dropped. --run scores
    a run folder directly: its checkpoint predicts the --split of GROUND_TRUTH (a prepared
    folder), the detections are cached in RUN/detections/ (a re-run predicts nothing; a new
    checkpoint is predicted again) and scored as a --pred file is. --checkpoint every scores
    each saved checkpoint of each --run on each --split into --out DIR/checkpoints.csv (drawn
    by `lesion report --eval DIR`).

    \b
    Examples:
      lesion eval prepared/ frcnn.json
      lesion eval prepared/coco/test.json --pred frcnn=frcnn.json --pred yolo=result.json --out cmp/
      lesion eval prepared/ --pred yolo=results/ --pred-format darknet-valid --bootstrap 1000
      lesion eval prepared/ --pred ul=runs/detect/val/predictions.json --pred frcnn=frcnn.json
      lesion eval prepared/ --run frcnn=runs/frcnn --run yolo=runs/yolo --out cmp/
      lesion eval prepared/ --run frcnn=runs/frcnn --checkpoint every --split train,test --out curves/
    """
    from deeplesion_cli import steps
    from deeplesion_cli.formats.ultralytics import describe_reading

    if checkpoint == "every":
        _score_checkpoints(ground_truth, predictions, named_preds, run_items, split, out_dir,
                           as_json, params)
        return
    splits = [s.strip() for item in split for s in item.split(",") if s.strip()]
    if len(splits) > 1:
        raise click.UsageError(f"--split {','.join(splits)}: one split at a time; several "
                               "splits go with --run ... --checkpoint every")
    split = splits[0] if splits else "test"
    files = _parse_preds(predictions, named_preds, run_items)
    if run_items:
        if not ground_truth.is_dir():
            raise click.UsageError(f"--run predicts images: GROUND_TRUTH must be a prepared "
                                   f"folder, not {ground_truth}")
        if pred_format not in ("auto", "coco"):
            raise click.UsageError(f"--pred-format {pred_format} applies to every detections "
                                   "file, and --run caches COCO results json: leave it auto")
        for name in (_named(item).partition("=")[0] for item in run_items):
            found = steps.predict_run(files[name], ground_truth, split=split,
                                      checkpoint=checkpoint, show_progress=True)
            click.echo(f"run {name}: {found.describe()}", err=True)
            for message in found.warnings:
                warn(f"run {name}: {message}")
            files[name] = found.path
    result = steps.evaluate(ground_truth, files, EVAL.from_cli(params), split=split,
                            pred_format=pred_format, names=names, out_dir=out_dir,
                            show_progress=True, class_base=class_base)
    for name, block in result.document["runs"].items():
        if block.get("detections_format") == "ultralytics":
            click.echo(f"run {name}: {files[name]} {describe_reading(block)}", err=True)
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


def _score_checkpoints(ground_truth, predictions, named_preds, run_items, split_items, out_dir,
                       as_json, params) -> None:
    """``lesion eval --checkpoint every``: every checkpoint of each --run on each --split
    (:func:`deeplesion_cli.curves.score_checkpoints`); a table of the rows, then each run's
    best checkpoint."""
    import json

    from deeplesion_cli.curves import score_checkpoints

    if predictions or named_preds or not run_items:
        raise click.UsageError("--checkpoint every scores run folders: give --run NAME=RUN "
                               "(repeatable), and no detection files")
    if out_dir is None:
        raise click.UsageError("--checkpoint every writes checkpoints.csv: give --out DIR")
    if not ground_truth.is_dir():
        raise click.UsageError(f"--run predicts images: GROUND_TRUTH must be a prepared "
                               f"folder, not {ground_truth}")
    runs = _parse_preds((), (), run_items)
    result = score_checkpoints(runs, ground_truth, splits=split_items,
                               eval_values=EVAL.from_cli(params), out_dir=out_dir,
                               show_progress=True)
    click.echo(f"{result.predicted} checkpoint x split predicted, {result.reused} reused from "
               f"the runs' detections/; wrote {len(result.written)} files to {out_dir}",
               err=True)
    if as_json:
        click.echo(json.dumps(result.document, indent=1))
    else:
        print_checkpoints(result.rows, result.best)
    for warning in result.warnings:
        warn(warning)


def print_checkpoints(rows: list[dict], best: dict) -> None:
    """The rows of checkpoints.csv as a table, then the best checkpoint of each run and
    split."""
    from rich.table import Table

    from deeplesion_cli.report.tables import format_value

    columns = [("run", "run"), ("checkpoint", "checkpoint"), ("step", "step"),
               ("split", "split"), ("dets", "n_detections"), ("seed mAP", "seed_map"),
               ("AP50", "coco_ap50"), ("AP", "coco_ap"), ("VOC AP", "voc_ap"),
               ("darknet mAP", "darknet_map"), ("mean IoU", "mean_iou_tp"),
               ("FROC@4", "froc_sens_4fp")]
    table = Table(title="checkpoints (metrics at the eval's --iou and --score)")
    for i, (title, _) in enumerate(columns):
        table.add_column(title, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*[f"{row['unit']} {row['step']}" if key == "step" else
                        format_value(row.get(key), 4) for _, key in columns])
    console().print(table)
    for run, splits in best.items():
        for split, row in splits.items():
            if row is None:
                click.echo(f"best {run} on {split}: none (seed mAP undefined everywhere)")
            else:
                click.echo(f"best {run} on {split}: {row['checkpoint']} ({row['unit']} "
                           f"{row['step']}), seed mAP {row['seed_map']:.4f}, AP50 "
                           f"{format_value(row['coco_ap50'], 4)}")


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
