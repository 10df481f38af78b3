"""darknet commands: ``lesion cfg``, ``lesion train yolo``, ``lesion predict yolo``.

Their options are declared once in :mod:`deeplesion_cli.spec.darknet`; the work is done by
:mod:`deeplesion_cli.steps` (as ``lesion matrix`` and ``lesion demo`` do it).
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplesion_cli.cli.group import EXIT_BAD_INPUT, main, predict, train, warn
from deeplesion_cli.spec.darknet import CFG, PREDICT_YOLO, TRAIN_YOLO


@main.command("cfg")
@click.argument("prepared", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@CFG.click_options()
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="cfg file to write.")
@click.option("--check", "check_path", type=click.Path(exists=True, dir_okay=False,
                                                       path_type=Path),
              help="Check an existing cfg instead of writing one.")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --check: obj.data whose classes the cfg must match.")
def cfg_(prepared, out_path, check_path, data_path, **params) -> None:
    """Write a darknet .cfg for a prepared folder, or check any cfg.

    Writing follows darknet's rules: classes in every [yolo], filters = (classes + 5) x masks
    before it, anchors (--anchors: rescaled from the size anchors.json was computed for to
    --size, masks re-split by size), width/height multiples of 32,
    max_batches = max(2000 x classes, training images, 6000), steps at 80% and 90%, burn_in
    1000 or max_batches / 6 when less, flip=0, mosaic=0; the result is checked before it is
    written. --check reports every inconsistency
    with its line number (exit code 2 on errors).

    \b
    Examples:
      lesion cfg prepared/ --arch yolov4-tiny --size 416 --anchors prepared/anchors.json -o yolo.cfg
      lesion cfg prepared/ --arch yolov3-tiny --size 128 --batch 8 --subdivisions 1 \\
          --max-batches 600 -o tiny.cfg
      lesion cfg --check yolo.cfg --data prepared/obj.data
    """
    if check_path:
        _check(check_path, data_path)
        return
    values = CFG.from_cli(params)
    if prepared is None or values["arch"] is None or out_path is None:
        raise click.UsageError("writing a cfg needs PREPARED, --arch and -o "
                               "(or use --check FILE)")
    from deeplesion_cli import steps
    from deeplesion_cli.prepared import Prepared

    Prepared(prepared).manifest  # a missing or broken manifest is an input error, not a usage one
    try:
        written = steps.write_cfg(prepared, out_path, values)
    except (ValueError, KeyError) as exc:  # options the generator refuses: a usage error
        raise click.UsageError(str(exc)) from None
    net = written.net
    click.echo(f"wrote {out_path}: {written.arch} {net['width']}x{net['height']}, "
               f"{written.classes} classes, {written.yolo_layers} [yolo] layers, "
               f"burn_in={net['burn_in']}, max_batches={net['max_batches']}, "
               f"steps={net['steps']}"
               + (f"; {written.anchors_note}" if written.anchors_note else ""))
    for warning in written.warnings:
        warn(warning)


def _check(check_path: Path, data_path: Path | None) -> None:
    from deeplesion_cli.darknet.cfg import check_cfg, errors, read_cfg_file
    from deeplesion_cli.errors import LesionInputError

    data_classes = None
    if data_path:
        import re

        found = re.search(r"^\s*classes\s*=\s*(\d+)", data_path.read_text(), re.M)
        if not found:
            raise LesionInputError(f"{data_path}: no 'classes = N' line")
        data_classes = int(found.group(1))
    problems = check_cfg(read_cfg_file(check_path),
                         data_classes=data_classes)
    for problem in problems:
        click.echo(f"{check_path}:{problem}")
    bad = errors(problems)
    click.echo(f"{check_path}: {len(bad)} error(s), {len(problems) - len(bad)} warning(s)",
               err=True)
    if bad:
        raise SystemExit(EXIT_BAD_INPUT)


@train.command("yolo")
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cfg", "cfg_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="darknet cfg (e.g. from `lesion cfg`).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: args.json, darknet.log, metrics.csv, backup/ with the weights.")
@TRAIN_YOLO.click_options()
@click.option("--resume", is_flag=True, help="Continue from the run's last saved weights.")
def train_yolo(prepared, cfg_path, run_dir, resume, **params) -> None:
    """Train YOLO with the real darknet binary and log it like every other run.

    Validates the images, labels and cfg first (darknet's exit codes cannot be trusted), runs
    `darknet detector train` in RUN_DIR with only the flags the detected fork (pjreddie,
    AlexeyAB, hank-ai) understands, parses its output into metrics.csv, and judges the outcome
    itself: final weights written, last iteration reached, average loss finite (darknet is
    stopped at the first NaN), then draws RUN_DIR/curves.png from metrics.csv (every session of
    a resumed run). SIGTERM, SIGHUP and Ctrl-C stop darknet too (exit code 128 + signal);
    --resume then continues from its last saved weights. With --map, AlexeyAB/hank-ai also
    write backup/<cfg>_best.weights; both restart their best mAP on --resume. --gpus on a
    darknet built without CUDA is left out, with a warning.

    \b
    Examples:
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo --weights yolov4.conv.137 --map
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo --resume
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo2 --clear \\
          --weights runs/yolo/backup/yolo_final.weights
    """
    from deeplesion_cli import steps

    values = TRAIN_YOLO.from_cli(params)
    result = steps.train_yolo(prepared, cfg_path, run_dir, values, resume=resume)
    click.echo(f"trained {result.iterations_text()} with {result.fork} darknet in "
               f"{result.seconds:.0f} s; final average loss {result.avg_loss:.4f}")
    click.echo(f"weights: {result.final_weights}")
    if result.best_weights is not None:
        click.echo(f"best weights (highest --map mAP): {result.best_weights}")
    click.echo(f"metrics: {result.metrics_csv}  log: {result.log_path}")
    for warning in result.warnings:
        warn(warning)
    if values["test"]:
        from deeplesion_cli.cli.scoring import score_test

        score_test(run_dir, prepared, {"darknet": values["darknet"]})


@predict.command("yolo")
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cfg", "cfg_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weights", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_json", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="COCO results json to write.")
@PREDICT_YOLO.click_options()
def predict_yolo(prepared, cfg_path, weights, out_json, **params) -> None:
    """Run darknet over a split and write COCO results json for `lesion eval`.

    pjreddie darknet: `detector valid` (its only machine-readable output); AlexeyAB/hank-ai:
    `detector test -out`. Boxes are in the prepared images' pixels, as the COCO ground truth.
    --weights must be darknet weights of exactly the size the cfg's network needs. --size
    predicts at another network size with the same weights (the cfg with only width/height
    changed, checked, written beside -o). --darknet-map also runs darknet's own `detector map`
    (AlexeyAB/hank-ai) on the same split at the same size and prints its mAP; pjreddie has
    none (a warning).

    \b
    Examples:
      lesion predict yolo prepared/ --cfg yolo.cfg --weights runs/yolo/backup/yolo_final.weights -o yolo.json
      lesion predict yolo prepared/ --cfg yolo.cfg --weights w.weights -o yolo.json --draw 8
      lesion predict yolo prepared/ --cfg yolo832.cfg --weights w.weights -o yolo1024.json \\
          --size 1024 --darknet-map
      lesion eval prepared/ yolo.json
    """
    import json

    from deeplesion_cli import steps

    values = PREDICT_YOLO.from_cli(params)
    if values["darknet_map"]:
        from deeplesion_cli.darknet.map import map_unsupported

        reason = map_unsupported(values["darknet"])
        if reason:
            warn(f"--darknet-map: {reason}; predicting without it")
            values["darknet_map"] = False
    path = steps.predict_yolo(prepared, cfg_path, weights, out_json, values)
    n_detections = len(json.loads(Path(path).read_text()))
    line = f"wrote {n_detections} detections to {path}"
    if values["darknet_map"]:
        from deeplesion_cli.darknet.map import DarknetMap, map_json_path

        found = DarknetMap.read(map_json_path(path))
        line += (f"; darknet's own detector map ({found.fork}, {found.network_size[0]}x"
                 f"{found.network_size[1]}): {found.headline()} -> {map_json_path(path)}")
    click.echo(line)
    if n_detections == 0:
        warn(f"no detections: {path} holds no box (every metric of it will be 0 or undefined)")
    if values["predict_size"] is not None:
        from deeplesion_cli.darknet.resize import cfg_size, parse_predict_size, \
            resized_cfg_beside

        size, own = parse_predict_size(values["predict_size"]), cfg_size(cfg_path)
        if size != own:
            click.echo(f"predicted at network size {size[0]}x{size[1]} (trained at "
                       f"{own[0]}x{own[1]}) with "
                       f"{resized_cfg_beside(path, cfg_path, values['predict_size'])}")
    if values.get("draw"):
        from deeplesion_cli.report.overlays import draw_dir

        drawn = sorted(draw_dir(path).glob("*.png"))
        click.echo(f"drew {len(drawn)} images to {draw_dir(path)}")
