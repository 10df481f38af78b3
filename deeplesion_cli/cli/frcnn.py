"""Faster R-CNN commands: ``lesion train frcnn``, ``lesion predict frcnn``.

Options are declared once in :mod:`deeplesion_cli.spec.frcnn`; the work is done by
:mod:`deeplesion_cli.steps`.
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplesion_cli.cli.group import predict, train, warn
from deeplesion_cli.spec.frcnn import PREDICT_FRCNN, TRAIN_FRCNN


@train.command("frcnn")
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: args.json, metrics.csv, train.log, last.pt, best.pt.")
@TRAIN_FRCNN.click_options()
@click.option("--resume", is_flag=True,
              help="Continue RUN_DIR/last.pt exactly (only --epochs, --workers, --device may "
                   "change).")
@click.option("--stop-after", type=click.IntRange(1), default=None, metavar="EPOCH",
              help="End this call after that epoch; the schedule still spans --epochs "
                   "(continue later with --resume).")
@click.pass_context
def train_frcnn(ctx, prepared, run_dir, resume, stop_after, **params) -> None:
    """Train torchvision Faster R-CNN on a prepared folder.

    Each epoch evaluates a fixed training sample and the val split with the toolkit's
    evaluator, appends a row to metrics.csv (loss and its parts, lr, images/s, mAP50, mAP75,
    mAP, mean IoU, FROC sensitivity at 4 FP/image) and saves last.pt, and best.pt when --select
    improved. Under torchrun it trains with DistributedDataParallel on every rank.

    \b
    Examples:
      lesion train frcnn prepared/ --out runs/frcnn --epochs 30
      lesion train frcnn prepared/ --out runs/uld --arch vgg16_uld --pretrained imagenet \\
          --weights vgg16-397923af.pth --balanced
      lesion train frcnn prepared/ --out runs/frcnn --resume --epochs 60
      lesion train frcnn prepared/ --out runs/cpu --arch mobilenet_v3_fpn --rois-per-image 64 \\
          --rpn-post-nms-train 300 --rpn-score-thresh 0 --threads 2
      torchrun --nproc_per_node 4 -m deeplesion_cli train frcnn prepared/ --out runs/ddp --amp
    """
    from click.core import ParameterSource

    from deeplesion_cli import steps
    from deeplesion_cli.frcnn.options import TrainOptions

    values = TRAIN_FRCNN.from_cli(params)
    options = TrainOptions(**values)
    overrides = None
    if resume:  # what the user typed, to be checked against the run's options
        overrides = {name: value for name, value in values.items()
                     if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    result = steps.train_frcnn(prepared, run_dir, options, resume=resume, overrides=overrides,
                               stop_after=stop_after)
    for message in result.warnings:
        warn(message)
    if not result.history:
        click.echo(f"nothing to do: {run_dir} has finished {result.epochs_done} epochs "
                   f"(raise --epochs to train longer)")
        if values["test"]:
            _score_test(run_dir, prepared, values)
        return
    last = result.history[-1]
    val = last.val_eval or {}
    map50 = val.get("mAP50")
    click.echo(f"trained epochs {result.resumed_from_epoch + 1}-{result.epochs_done}: loss "
               f"{last.loss:.4f}, {last.images_per_s:.1f} images/s, data wait "
               f"{100 * last.data_wait:.1f}%, val mAP50 "
               f"{'-' if map50 is None else f'{map50:.4f}'}")
    if result.best_epoch is not None:
        click.echo(f"best {result.select} {result.best_value:.4f} at epoch {result.best_epoch}: "
                   f"{result.best_checkpoint}")
    else:
        click.echo(f"no best.pt: no epoch has a val {result.select}")
    click.echo(f"metrics: {result.metrics_csv}  last: {result.last_checkpoint}")
    if values["test"]:
        _score_test(run_dir, prepared, values)


def _score_test(run_dir, prepared, values) -> None:
    """--test: the test split from the run's best (else last) checkpoint, on the training's
    device (under torchrun, rank 0's) and loader workers."""
    from deeplesion_cli.cli.scoring import score_test
    from deeplesion_cli.spec.frcnn import parse_device

    indices = parse_device(values["device"])[1]
    device = f"cuda:{indices[0]}" if len(indices) > 1 else values["device"]
    score_test(run_dir, prepared, {"device": device, "workers": values["workers"]})


@predict.command("frcnn")
@click.argument("run_or_checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_json", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="COCO results json to write.")
@PREDICT_FRCNN.click_options()
def predict_frcnn(run_or_checkpoint, prepared, out_json, **params) -> None:
    """Run a trained Faster R-CNN over a split and write COCO results json.

    RUN_OR_CHECKPOINT is a `lesion train frcnn` run folder (its best.pt when the run recorded a
    best, else last.pt) or a checkpoint file; the output names the file used. PREPARED must make
    its images as the training folder did (same --window, --context, --spacing). Boxes are
    [x, y, w, h] in the prepared images' pixels, as the ground truth.

    \b
    Examples:
      lesion predict frcnn runs/frcnn prepared/ --split test -o frcnn.json
      lesion predict frcnn runs/frcnn prepared/ -o frcnn.json --draw 8   # + frcnn_draw/*.png
      lesion eval prepared/ frcnn.json
    """
    from deeplesion_cli import steps

    values = PREDICT_FRCNN.from_cli(params)
    result = steps.predict_frcnn(run_or_checkpoint, prepared, out_json, values)
    for message in result.warnings:
        warn(message)
    epoch = f", epoch {result.epoch}" if result.epoch is not None else ""
    click.echo(f"wrote {result.n_detections} detections on {result.n_images} {values['split']} "
               f"images to {result.out_json} with {result.checkpoint}{epoch} "
               f"({result.seconds:.1f} s)")
    if result.n_detections == 0:
        warn(f"no detections: {result.out_json} holds no box (every metric of it will be 0 or "
             "undefined)")
    if values.get("draw"):
        from deeplesion_cli.report.overlays import draw_dir

        drawn = sorted(draw_dir(result.out_json).glob("*.png"))
        click.echo(f"drew {len(drawn)} images to {draw_dir(result.out_json)}")
