"""Whole-path commands: ``lesion matrix`` (a table of experiments) and ``lesion demo``."""

from __future__ import annotations

from pathlib import Path

import click

from deeplesion_cli.cli.group import console, main, warn
from deeplesion_cli.demo import DemoOptions
from deeplesion_cli.spec.scheduler import SCHEDULERS


@main.command("matrix")
@click.argument("experiments", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--print", "print_only", is_flag=True,
              help="Print the shell lines of the remaining steps, in order, one per line (for a "
                   "cluster queue); run nothing.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=None,
              help="With --print: a submit script for this scheduler instead of plain lines "
                   "(slurm: job arrays chained train -> predict -> eval -> report; resources "
                   "from the file's [scheduler] table and experiments).")
@click.option("--only", multiple=True, metavar="NAME",
              help="Train and predict only this experiment (repeatable); the evaluation and "
                   "report still cover every complete experiment.")
def matrix_(experiments: Path, print_only: bool, scheduler, only) -> None:
    """Run a TOML table of experiments, then evaluate and report them together.

    EXPERIMENTS lists experiments (backend frcnn or yolo and their options; format in
    docs/examples/seed-table2.toml). Each one trains in OUT/<name>/ (finished ones are skipped,
    interrupted ones resumed) and is predicted on the file's split; all complete experiments are
    evaluated into OUT/eval/ (as `lesion eval --out`), reported into OUT/report/ and compared
    in OUT/comparison.md.

    \b
    Examples:
      lesion matrix docs/examples/seed-table2.toml --print > jobs.sh
      lesion matrix docs/examples/slurm.toml --print --scheduler slurm > submit.sh
      lesion matrix experiments.toml
      lesion matrix experiments.toml --only frcnn-adam --only frcnn-sgd
    """
    from deeplesion_cli import matrix as mx
    from deeplesion_cli.errors import LesionRunError

    if scheduler and not print_only:
        raise click.UsageError("--scheduler writes a submit script: give it with --print")
    loaded = mx.load_matrix(experiments)
    if scheduler:
        click.echo(mx.slurm_script(loaded, only), nl=False)
        return
    if print_only:
        for line in mx.remaining_lines(loaded, only):
            click.echo(line)
        return
    result = mx.run_matrix(loaded, only=only, log=lambda line: click.echo(line, err=True))
    for warning in result.warnings:
        warn(warning)
    from rich.table import Table

    table = Table(title=f"{experiments} ({loaded.split} split)")
    columns = ["experiment", "backend", "options", "status"] + [
        h for h, _, _ in mx.COMPARISON_METRICS]
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if i >= 4 else "left")
    for row in result.rows:
        table.add_row(row["experiment"], row["backend"], row["options"], row["status"],
                      *[mx.fmt_metric(row[key], key, markup=True)
                        for _, key, _ in mx.COMPARISON_METRICS])
    console().print(table)
    click.echo(f"comparison: {result.comparison_md}")
    if result.metrics_json is not None:
        click.echo(f"evaluation: {result.metrics_json.parent}")
    if result.report_index is not None:
        click.echo(f"report: {result.report_index}")
    if result.failures:
        raise LesionRunError("; ".join(f"{name}: {message}"
                                       for name, message in result.failures.items()))


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default="lesion-demo")
@click.option("--patients", default=DemoOptions.patients, show_default=True,
              type=click.IntRange(3, 9999), help="Synthetic patients.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthetic data.")
@click.option("--epochs", default=DemoOptions.epochs, show_default=True,
              type=click.IntRange(1), help="Faster R-CNN epochs (CPU, from random weights).")
@click.option("--size", "size_px", default=DemoOptions.model_size_px, show_default=True,
              type=click.IntRange(64, 1024),
              help="Synthetic slice size and Faster R-CNN input size in px.")
@click.option("--darknet-iterations", default=DemoOptions.darknet_iterations, show_default=True,
              type=click.IntRange(0),
              help="darknet iterations when a darknet binary is found (0: skip darknet).")
@click.option("--darknet", "darknet_bin", default=None,
              help="darknet binary (default: $DARKNET, then `darknet` on PATH).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: all cores).")
def demo(out: Path, patients: int, seed: int, epochs: int, size_px: int,
         darknet_iterations: int, darknet_bin, workers) -> None:
    """Run the whole toolkit on synthetic data and print where everything is.

    synth -> prepare (soft-tissue window) -> anchors -> cfg -> a short CPU Faster R-CNN training
    (resnet18_fpn from random weights) -> predict -> a short darknet training (when darknet is
    installed) -> eval -> report, in under 10 minutes on 2 CPU cores. Each step prints the
    `lesion` command it stands for; the end prints each detector's test AP50, AP, FROC and
    detection count. With the defaults the Faster R-CNN finds most test lesions (AP50 above
    0.3); the few darknet iterations show the path, not a trained YOLO.

    \b
    Examples:
      lesion demo                # into ./lesion-demo
      lesion demo /tmp/demo --patients 100 --epochs 6
    """
    from deeplesion_cli.cli.scoring import print_summary
    from deeplesion_cli.demo import headline, run_demo

    options = DemoOptions(patients=patients, seed=seed, synth_size_px=size_px,
                          model_size_px=size_px, epochs=epochs,
                          darknet_iterations=darknet_iterations, darknet=darknet_bin,
                          workers=workers)
    result = run_demo(out, options, log=lambda line: click.echo(line, err=True))
    for note in result.notes:
        warn(note)
    print_summary(result.metrics, f"test split of {result.prepared}")
    click.echo(f"synthetic DeepLesion : {out / 'deeplesion'}")
    click.echo(f"prepared folder      : {result.prepared}  (COCO, darknet, data.yaml, manifest)")
    for name, run in result.runs.items():
        click.echo(f"{name + ' run':<21}: {run}")
    click.echo(f"evaluation           : {result.eval_dir / 'metrics.json'}")
    click.echo(f"report               : {result.report_index}")
    for line in headline(result, options):
        click.echo(line)
