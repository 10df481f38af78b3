"""The ``lesion`` command line: thin click commands over the library.

Heavy modules (numpy, PIL, torch) are imported inside the commands so that ``lesion --help``
stays fast and never imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from deeplesion_cli import __version__
from deeplesion_cli.demo import DemoOptions

#: Exit code for bad input (rows, images, files); click uses 2 for bad options too.
EXIT_BAD_INPUT = 2


class InputError(click.ClickException):
    """Bad input data: printed without a traceback, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _console():
    from rich.console import Console

    # Piped output has no terminal width; rich would assume 80 columns and cut table headers.
    return Console() if sys.stdout.isatty() else Console(width=140)


def _warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lesion")
def main() -> None:
    """Benchmark CT lesion detectors on NIH DeepLesion under one protocol.

    \b
    Examples (a whole path, without the 221 GB download):
      lesion synth data/synth                      # DeepLesion-format synthetic set
      lesion prepare data/synth data/prepared      # 8-bit images, COCO, darknet files
      lesion demo                                  # both, into ./lesion-demo
    """


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--patients", default=24, show_default=True, type=click.IntRange(1, 9999),
              help="Number of synthetic patients (each has 1-4 studies).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Random seed: the same seed writes the same bytes.")
@click.option("--size", "size_px", default=512, show_default=True, type=click.IntRange(64, 2048),
              help="Image size in pixels of most slices (about 1% are 1.5 times larger).")
@click.option("--newline", type=click.Choice(["crlf", "lf"]), default="crlf", show_default=True,
              help="Line terminator of DL_info.csv.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: all cores).")
def synth(out: Path, patients: int, seed: int, size_px: int, newline: str, workers) -> None:
    """Write a synthetic data set in DeepLesion's exact on-disk format.

    OUT receives DL_info.csv (the real 18-column format) and Images_png/PPPPPP_SS_EE/KKK.png,
    16-bit slices (HU + 32768) for every slice of every Slice_range block.

    \b
    Example:
      lesion synth data/synth --patients 40 --seed 1
    """
    from deeplesion_cli.deeplesion.synth import synthesize

    result = synthesize(out, patients=patients, seed=seed, size_px=size_px,
                        newline="\r\n" if newline == "crlf" else "\n", workers=workers)
    lesions = len(result.rows)
    images = len({r.file_name for r in result.rows})
    click.echo(f"wrote {result.csv_path} ({lesions} lesions on {images} key slices) and "
               f"{result.n_png} slice PNGs under {Path(out) / 'Images_png'}")


@main.command()
@click.argument("deeplesion_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", type=click.Choice(["typed", "universal"]), default="typed",
              show_default=True,
              help="typed: the 8 coarse lesion types (rows of type -1 left out); universal: one "
                   "class 'lesion', all rows (the official DeepLesion task).")
@click.option("--split", type=click.Choice(["official", "patient"]), default=None,
              help="official: the CSV's Train_Val_Test; patient: a seeded patient-level split "
                   "stratified by type. Default: patient for --task typed (the official train "
                   "rows have no types), official for --task universal.")
@click.option("--ratios", default="0.7,0.15,0.15", show_default=True,
              help="train,val,test shares for --split patient.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of --split patient.")
@click.option("--window", "windows", multiple=True, metavar="LO,HI|dicom",
              help="HU window to 8 bits (default -1024,3071). 'dicom' uses each row's "
                   "DICOM_windows. Give three to stack them as RGB channels.")
@click.option("--context", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="3: key slice and its neighbours as RGB (the key slice stands in for a "
                   "missing neighbour).")
@click.option("--spacing", "spacing_mm", type=float, default=None, metavar="MM",
              help="Resample every image to this pixel spacing in mm (boxes scaled with it).")
@click.option("--keep-noisy", is_flag=True, help="Keep rows flagged Possibly_noisy.")
@click.option("--skip-invalid", is_flag=True,
              help="Prepare the valid rows and list every rejected row in rejected.csv "
                   "(default: stop before writing anything).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def prepare(deeplesion_dir: Path, out: Path, task, split, ratios, seed, windows, context,
            spacing_mm, keep_noisy, skip_invalid, workers, as_json) -> None:
    """Turn DL_info.csv + Images_png into a prepared folder.

    Writes windowed 8-bit images with darknet labels beside them (train/, val/, test/), COCO
    json per split (coco/), train.txt/valid.txt/test.txt, obj.names, obj.data, data.yaml and
    manifest.json. Boxes are 0-based: the CSV's 1-based values minus 1, as the official code.
    Re-running with the same inputs does nothing; an interrupted run, re-run, finishes the job.

    \b
    Examples:
      lesion prepare DeepLesion/ prepared/
      lesion prepare DeepLesion/ prepared-u/ --task universal --split official
      lesion prepare DeepLesion/ prepared-3w/ --window -1024,3071 --window -175,275 --window -1500,500
    """
    from deeplesion_cli.deeplesion import hu, schema, splits
    from deeplesion_cli.prepare import PrepareInputError, PrepareOptions, parse_window
    from deeplesion_cli.prepare import prepare as run_prepare

    try:
        parsed_windows = tuple(parse_window(w) for w in windows) or (hu.DEFAULT_WINDOW_HU,)
        options = PrepareOptions(
            task=task, split=split, ratios=splits.parse_ratios(ratios), seed=seed,
            windows=parsed_windows, context=int(context), spacing_mm=spacing_mm,
            keep_noisy=keep_noisy, skip_invalid=skip_invalid)
        options.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = run_prepare(deeplesion_dir, out, options, workers=workers,
                             show_progress=not as_json)
    except (PrepareInputError, schema.SchemaError) as exc:
        raise InputError(str(exc)) from None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for warning in result.warnings:
        _warn(warning)
    if as_json:
        import json

        click.echo(json.dumps(result.manifest, indent=2))
        return
    _print_prepare_summary(result)


def _print_prepare_summary(result) -> None:
    from rich.table import Table

    m = result.manifest
    console = _console()
    if result.up_to_date:
        console.print(f"{result.out_dir} is up to date ({result.reused} images); nothing to do")
    else:
        console.print(f"prepared {result.out_dir}: {result.rendered} images rendered, "
                      f"{result.reused} reused from an earlier run")
    table = Table(title=f"task {m['options']['task']}, split {m['options']['split']}")
    table.add_column("split")
    table.add_column("patients", justify="right")
    table.add_column("images", justify="right")
    table.add_column("lesions", justify="right")
    for name in m["classes"]:
        table.add_column(name["name"], justify="right")
    for split, c in m["counts"].items():
        table.add_row(split, str(c["patients"]), str(c["images"]), str(c["lesions"]),
                      *(str(c["per_class"][k["name"]]) for k in m["classes"]))
    console.print(table)
    rows = m["rows"]
    console.print(f"rows: {rows['read']} read, {rows['used']} used, {rows['excluded_noisy']} "
                  f"possibly noisy left out, {rows['excluded_untyped']} untyped left out, "
                  f"{rows['rejected']} rejected, {rows['boxes_clipped']} boxes clipped at the edge")
    if m["files"]["rejected"]:
        console.print(f"rejected rows and reasons: {result.out_dir / m['files']['rejected']}")


def _read_manifest(prepared: Path) -> dict:
    import json

    path = Path(prepared) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise InputError(f"{path}: not found; PREPARED must be a folder written by lesion prepare")
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})")


@main.command()
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--clusters", default=9, show_default=True, type=click.IntRange(1, 100),
              help="Number of anchors (darknet: 9 for yolov3/yolov4, 6 for the tiny models).")
@click.option("--size", default="416", show_default=True, metavar="N|WxH",
              help="Network input size the anchors are scaled to.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
              help="k-means seed.")
@click.option("--restarts", default=10, show_default=True, type=click.IntRange(1),
              help="k-means restarts; the best mean IoU wins.")
@click.option("--split", default="train", show_default=True, help="Split whose boxes are used.")
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="anchors.json to write (default: PREPARED/anchors.json).")
def anchors(prepared: Path, clusters: int, size: str, seed: int, restarts: int, split: str,
            out_path) -> None:
    """Compute k-means anchors (distance 1 - IoU) from the training boxes.

    Prints darknet's `anchors=` line (sorted by area, at the network size), the mean IoU of each
    box with its best anchor and the share above 0.5; writes anchors.json, which `lesion cfg
    --anchors` and `lesion train frcnn --anchors` read.

    \b
    Examples:
      lesion anchors prepared/ --clusters 9 --size 416
      lesion anchors prepared/ --clusters 6 --size 608x416 -o anchors-tiny.json
    """
    from deeplesion_cli import anchors as anchors_lib

    try:
        network_size = anchors_lib.parse_size(size)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = anchors_lib.compute_anchors(prepared, clusters=clusters, size=network_size,
                                             seed=seed, restarts=restarts, split=split)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    out_path = out_path or Path(prepared) / "anchors.json"
    anchors_lib.write_anchors_json(out_path, result)
    click.echo(anchors_lib.darknet_anchor_line(result))
    click.echo(f"mean IoU {result.mean_iou:.4f}, boxes with IoU >= 0.5: "
               f"{result.recall_at_05:.1%} ({result.n_boxes} boxes, {clusters} clusters, "
               f"{network_size[0]}x{network_size[1]})")
    click.echo(f"wrote {out_path}", err=True)


@main.command("cfg")
@click.argument("prepared", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--arch", type=click.Choice(["yolov4", "yolov4-tiny", "yolov3", "yolov3-tiny"]),
              help="Network to write.")
@click.option("--size", default="416", show_default=True, metavar="N|WxH",
              help="Network input size (multiples of 32).")
@click.option("--anchors", "anchors_json", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path),
              help="anchors.json from `lesion anchors` (default: the arch's stock anchors).")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1))
@click.option("--subdivisions", default=16, show_default=True, type=click.IntRange(1))
@click.option("--max-batches", type=click.IntRange(1), default=None,
              help="Default: max(2000 x classes, training images, 6000).")
@click.option("--burn-in", type=click.IntRange(0), default=None,
              help="Warm-up iterations (rate x (i / burn_in)^4). Default: 1000, or a sixth of "
                   "--max-batches when less, so that short runs train.")
@click.option("--lr", "learning_rate", type=float, default=None,
              help="Learning rate (default: the stock cfg's).")
@click.option("--small-objects", is_flag=True,
              help="yolov4: first head at stride 4 (darknet README's small-object change).")
@click.option("--mosaic", is_flag=True, help="Mosaic augmentation (needs darknet with OpenCV).")
@click.option("--flip", is_flag=True,
              help="Allow horizontal flips (off by default: laterality matters in CT).")
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="cfg file to write.")
@click.option("--check", "check_path", type=click.Path(exists=True, dir_okay=False,
                                                       path_type=Path),
              help="Check an existing cfg instead of writing one.")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --check: obj.data whose classes the cfg must match.")
def cfg_(prepared, arch, size, anchors_json, batch, subdivisions, max_batches, burn_in,
         learning_rate, small_objects, mosaic, flip, out_path, check_path, data_path) -> None:
    """Write a darknet .cfg for a prepared folder, or check any cfg.

    Writing follows darknet's rules: classes in every [yolo], filters = (classes + 5) x masks
    before it, anchors (masks re-split by size when custom), width/height multiples of 32,
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
    from deeplesion_cli import atomic
    from deeplesion_cli.darknet.cfg import check_cfg, errors, parse_cfg

    if check_path:
        data_classes = None
        if data_path:
            import re

            found = re.search(r"^\s*classes\s*=\s*(\d+)", data_path.read_text(), re.M)
            if not found:
                raise InputError(f"{data_path}: no 'classes = N' line")
            data_classes = int(found.group(1))
        problems = check_cfg(parse_cfg(check_path.read_text(), str(check_path)),
                             data_classes=data_classes)
        for problem in problems:
            click.echo(f"{check_path}:{problem}")
        bad = errors(problems)
        click.echo(f"{check_path}: {len(bad)} error(s), {len(problems) - len(bad)} warning(s)",
                   err=True)
        if bad:
            raise SystemExit(EXIT_BAD_INPUT)
        return
    if prepared is None or arch is None or out_path is None:
        raise click.UsageError("writing a cfg needs PREPARED, --arch and -o "
                               "(or use --check FILE)")
    import json

    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.generate import generate_cfg

    manifest = _read_manifest(prepared)
    try:
        network_size = parse_size(size)
        anchors_px = None
        if anchors_json:
            anchors_px = json.loads(anchors_json.read_text())["anchors"]
        text = generate_cfg(
            arch, classes=len(manifest["classes"]), size=network_size, anchors_px=anchors_px,
            batch=batch, subdivisions=subdivisions, max_batches=max_batches, burn_in=burn_in,
            n_train_images=manifest["counts"]["train"]["images"], small_objects=small_objects,
            mosaic=mosaic, flip=flip, learning_rate=learning_rate)
    except (ValueError, KeyError) as exc:
        raise click.UsageError(str(exc)) from None
    atomic.write_text(out_path, text)
    cfg = parse_cfg(text, str(out_path))
    net = cfg.net
    yolos = cfg.of_type("yolo")
    click.echo(f"wrote {out_path}: {arch} {net.options['width']}x{net.options['height']}, "
               f"{len(manifest['classes'])} classes, {len(yolos)} [yolo] layers, "
               f"burn_in={net.options['burn_in']}, max_batches={net.options['max_batches']}, "
               f"steps={net.options['steps']}")
    for problem in check_cfg(cfg):
        if problem.severity == "warning":
            _warn(f"{out_path}:{problem}")


class RunFailed(click.ClickException):
    """A tool we drove (darknet) failed: printed without a traceback, exit code 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _darknet_errors(call):
    """Run ``call()`` turning darknet errors into clean CLI errors."""
    from deeplesion_cli.darknet.runner import (DarknetError, DarknetInputError,
                                               DarknetNotFound, DarknetRunError)

    try:
        return call()
    except (DarknetNotFound, DarknetInputError) as exc:
        raise InputError(str(exc)) from None
    except DarknetRunError as exc:
        raise RunFailed(str(exc)) from None
    except DarknetError as exc:
        raise InputError(str(exc)) from None


@main.group()
def train() -> None:
    """Train a detector on a prepared folder.

    \b
    Examples:
      lesion train frcnn prepared/ --out runs/frcnn
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo
    """


@train.command("yolo")
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cfg", "cfg_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="darknet cfg (e.g. from `lesion cfg`).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: darknet.log, metrics.csv, backup/ with the weights.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Initial weights, e.g. a pretrained backbone (yolov4.conv.137).")
@click.option("--darknet", "darknet_bin", default=None,
              help="darknet binary (default: $DARKNET, then `darknet` on PATH).")
@click.option("--gpus", default=None, help="GPU ids for darknet, e.g. 0,1.")
@click.option("--map", "with_map", is_flag=True,
              help="Compute mAP on the validation list while training (AlexeyAB/hank-ai).")
@click.option("--resume", is_flag=True, help="Continue from the run's last saved weights.")
def train_yolo(prepared, cfg_path, run_dir, weights, darknet_bin, gpus, with_map, resume) -> None:
    """Train YOLO with the real darknet binary and log it like every other run.

    Validates the images, labels and cfg first (darknet's exit codes cannot be trusted), runs
    `darknet detector train` in RUN_DIR with only the flags the detected fork (pjreddie,
    AlexeyAB, hank-ai) understands, parses its output into metrics.csv, and judges the outcome
    itself: final weights written, last iteration reached, average loss finite.

    \b
    Examples:
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo --weights yolov4.conv.137 --map
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo --resume
    """
    from deeplesion_cli.darknet import runner

    result = _darknet_errors(lambda: runner.train(
        prepared, cfg_path, run_dir, weights=weights, darknet=darknet_bin, gpus=gpus,
        map=with_map, resume=resume))
    click.echo(f"trained {result.iterations} iterations with {result.fork} darknet in "
               f"{result.seconds:.0f} s; final average loss {result.avg_loss:.4f}")
    click.echo(f"weights: {result.final_weights}")
    click.echo(f"metrics: {result.metrics_csv}  log: {result.log_path}")
    for warning in result.warnings:
        _warn(warning)


def _frcnn_errors(call):
    from deeplesion_cli.frcnn.checkpoint import CheckpointError
    from deeplesion_cli.frcnn.data import DataError
    from deeplesion_cli.frcnn.engine import OptionError, TrainError
    from deeplesion_cli.frcnn.model import AnchorsError
    from deeplesion_cli.frcnn.weights import WeightsError

    try:
        return call()
    except (DataError, OptionError, WeightsError, AnchorsError, CheckpointError) as exc:
        raise InputError(str(exc)) from None
    except TrainError as exc:
        raise RunFailed(str(exc)) from None


def _int_list(value: str | None, option: str):
    if value is None:
        return None
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated epochs, e.g. 16,22",
                                 param_hint=option)
    if not items or min(items) < 1:
        raise click.BadParameter(f"{value!r}: epochs are counted from 1", param_hint=option)
    return items


@train.command("frcnn")
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: args.json, metrics.csv, train.log, last.pt, best.pt.")
@click.option("--arch", type=click.Choice(["resnet50_fpn", "resnet50_fpn_v2", "mobilenet_v3_fpn",
                                           "resnet18_fpn", "vgg16_uld"]),
              default="resnet50_fpn", show_default=True,
              help="torchvision Faster R-CNN variant; resnet18_fpn: a light ResNet-18 FPN from "
                   "stride 8 (small lesions, CPUs); vgg16_uld: the DeepLesion paper's universal "
                   "lesion detector.")
@click.option("--pretrained", type=click.Choice(["none", "imagenet", "coco"]), default="none",
              show_default=True, help="Start from ImageNet backbone or COCO detector weights "
                                      "(a local file: --weights, or torch's cache; never "
                                      "downloaded).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Weights file for --pretrained (or, with --pretrained none, a "
                                 "state_dict of this very model).")
@click.option("--anchors", "anchors_json", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path),
              default=None, help="anchors.json from `lesion anchors` (computed at --size).")
@click.option("--size", "size_px", type=click.IntRange(32, 4096), default=None,
              help="Model input size in px (default: 240 with --augment seed, else the images' "
                   "size).")
@click.option("--epochs", type=click.IntRange(1), default=110, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True,
              help="Images per step and process.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam",
              show_default=True, help="sgd uses momentum 0.9 (--momentum).")
@click.option("--lr", type=float, default=None,
              help="Learning rate (default: 1e-4 adam, 2e-5 sgd, the seed study's).")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--scheduler", type=click.Choice(["none", "step", "cosine"]), default="none",
              show_default=True)
@click.option("--lr-steps", default=None, metavar="E1,E2",
              help="--scheduler step: epochs at which lr is multiplied by --lr-gamma "
                   "(default: 2/3 and 8/9 of --epochs).")
@click.option("--lr-gamma", type=float, default=0.1, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(0), default=0, show_default=True,
              help="Linear warm-up over this many optimiser steps.")
@click.option("--clip-grad", type=float, default=None, help="Clip the gradient L2 norm.")
@click.option("--balanced", is_flag=True,
              help="Class-balanced batches (every class an equal share; an epoch ends when the "
                   "largest class was seen once).")
@click.option("--augment", type=click.Choice(["seed", "none"]), default="seed",
              show_default=True, help="seed: pad 50 px, rotate +-30 deg, crop 0-64 px per side, "
                                      "resize to --size; no flip.")
@click.option("--amp", is_flag=True, help="Mixed precision (float16 on CUDA, bfloat16 on CPU).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="Data loader worker processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--deterministic", is_flag=True,
              help="Deterministic algorithms (slower on GPU); same seed, same weights.")
@click.option("--select", type=click.Choice(["map50", "map75", "map", "froc4", "mean_iou"]),
              default="map50", show_default=True, help="Validation metric that picks best.pt.")
@click.option("--eval-train-images", type=click.IntRange(0), default=200, show_default=True,
              help="Size of the fixed training sample evaluated each epoch (0: none).")
@click.option("--rois-per-image", type=click.IntRange(1), default=512, show_default=True,
              help="Proposals sampled per image to train the box head (torchvision's "
                   "box_batch_size_per_image); its cost is linear in this. 64 trains ~4x faster "
                   "on a CPU.")
@click.option("--rpn-pre-nms-train", type=click.IntRange(1), default=2000, show_default=True,
              help="RPN proposals kept per feature level before NMS, in training.")
@click.option("--rpn-post-nms-train", type=click.IntRange(1), default=2000, show_default=True,
              help="RPN proposals kept after NMS, in training.")
@click.option("--rpn-post-nms-test", type=click.IntRange(1), default=1000, show_default=True,
              help="RPN proposals kept after NMS at inference (each epoch's evaluation and "
                   "`lesion predict frcnn`); the box head's cost is linear in it.")
@click.option("--rpn-score-thresh", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Drop proposals with a lower objectness (default: the arch's, 0.05 for "
                   "mobilenet_v3_fpn, else 0). Use 0 from random weights, whose early "
                   "objectness falls below any threshold.")
@click.option("--nms-iou", type=click.FloatRange(0, 1, min_open=True), default=0.5,
              show_default=True,
              help="IoU above which the box head's non-maximum suppression drops the lower-scored "
                   "box at inference (torchvision 0.5; py-faster-rcnn tested with 0.3). Lesions "
                   "rarely overlap: 0.3 removes the near-duplicate boxes that cost AP.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads per process (torch intra-op). Default: the cores this process "
                   "may use, shared by the torchrun ranks on this machine. Kept by --resume.")
@click.option("--resume", is_flag=True,
              help="Continue RUN_DIR/last.pt exactly (only --epochs, --workers, --device may "
                   "change).")
@click.option("--stop-after", type=click.IntRange(1), default=None, metavar="EPOCH",
              help="End this call after that epoch; the schedule still spans --epochs "
                   "(continue later with --resume).")
@click.pass_context
def train_frcnn(ctx, prepared, run_dir, resume, stop_after, **kwargs) -> None:
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

    from deeplesion_cli.frcnn import engine

    kwargs["lr_steps"] = _int_list(kwargs.pop("lr_steps"), "--lr-steps")
    anchors_json = kwargs.pop("anchors_json")
    kwargs["anchors"] = str(anchors_json.resolve()) if anchors_json else None
    weights = kwargs.pop("weights")
    kwargs["weights"] = str(weights.resolve()) if weights else None
    options = engine.TrainOptions(**kwargs)
    overrides = None
    if resume:
        names = {"anchors_json": "anchors"}
        overrides = {names.get(p, p): getattr(options, names.get(p, p))
                     for p in ctx.params if p not in ("prepared", "run_dir", "resume", "stop_after")
                     and ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE}
    result = _frcnn_errors(lambda: engine.train(prepared, run_dir, options, resume=resume,
                                                overrides=overrides, stop_after=stop_after))
    if not result.history:
        click.echo(f"nothing to do: {run_dir} has finished {result.epochs_done} epochs "
                   f"(raise --epochs to train longer)")
        return
    last = result.history[-1]
    val = last.val_eval or {}
    click.echo(f"trained epochs {result.resumed_from_epoch + 1}-{result.epochs_done}: loss "
               f"{last.loss:.4f}, {last.images_per_s:.1f} images/s, data wait "
               f"{100 * last.data_wait:.1f}%, val mAP50 {engine._fmt(val.get('mAP50'))}")
    if result.best_epoch is not None:
        click.echo(f"best {result.select} {result.best_value:.4f} at epoch {result.best_epoch}: "
                   f"{result.best_checkpoint}")
    click.echo(f"metrics: {result.metrics_csv}  last: {result.last_checkpoint}")


@main.group()
def predict() -> None:
    """Write detections of a trained model as COCO results json.

    \b
    Examples:
      lesion predict frcnn runs/frcnn prepared/ -o frcnn.json
      lesion predict yolo prepared/ --cfg yolo.cfg --weights runs/yolo/backup/yolo_final.weights -o yolo.json
    """


@predict.command("yolo")
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cfg", "cfg_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weights", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["train", "val", "test"]))
@click.option("-o", "--out", "out_json", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="COCO results json to write.")
@click.option("--thresh", default=0.005, show_default=True, type=float,
              help="Score floor (low, so that AP sees the whole curve).")
@click.option("--darknet", "darknet_bin", default=None,
              help="darknet binary (default: $DARKNET, then `darknet` on PATH).")
def predict_yolo(prepared, cfg_path, weights, split, out_json, thresh, darknet_bin) -> None:
    """Run darknet over a split and write COCO results json for `lesion eval`.

    pjreddie darknet: `detector valid` (its only machine-readable output); AlexeyAB/hank-ai:
    `detector test -out`. Boxes are in the prepared images' pixels, as the COCO ground truth.

    \b
    Examples:
      lesion predict yolo prepared/ --cfg yolo.cfg --weights runs/yolo/backup/yolo_final.weights -o yolo.json
      lesion eval prepared/ yolo.json
    """
    from deeplesion_cli.darknet import runner

    path = _darknet_errors(lambda: runner.predict(
        prepared, cfg_path, weights, split=split, out_json=out_json, darknet=darknet_bin,
        thresh=thresh))
    import json

    click.echo(f"wrote {len(json.loads(Path(path).read_text()))} detections to {path}")


@predict.command("frcnn")
@click.argument("run_or_checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["train", "val", "test"]))
@click.option("-o", "--out", "out_json", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="COCO results json to write.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.001, show_default=True,
              help="Score floor (low, so that AP sees the whole curve).")
@click.option("--max-dets", type=click.IntRange(1), default=100, show_default=True,
              help="Detections kept per image.")
@click.option("--nms-iou", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Box NMS IoU (default: the run's --nms-iou).")
@click.option("--device", default="auto", show_default=True)
@click.option("--amp", is_flag=True,
              help="float16 inference on CUDA (faster; box coordinates come out rounded to "
                   "0.25-0.5 px at 512 px). Ignored on CPU.")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
def predict_frcnn(run_or_checkpoint, prepared, split, out_json, batch_size, score_thresh,
                  max_dets, nms_iou, device, amp, workers) -> None:
    """Run a trained Faster R-CNN over a split and write COCO results json.

    RUN_OR_CHECKPOINT is a `lesion train frcnn` run folder (its best.pt, else last.pt) or a
    checkpoint file. Boxes are [x, y, w, h] in the prepared images' pixels, as the ground truth.

    \b
    Examples:
      lesion predict frcnn runs/frcnn prepared/ --split test -o frcnn.json
      lesion eval prepared/ frcnn.json
    """
    from deeplesion_cli.frcnn.predict import predict as run_predict

    result = _frcnn_errors(lambda: run_predict(
        run_or_checkpoint, prepared, out_json, split=split, batch_size=batch_size,
        workers=workers, device=device, amp=amp, score_thresh=score_thresh,
        detections_per_img=max_dets, nms_iou=nms_iou))
    click.echo(f"wrote {result.n_detections} detections on {result.n_images} {split} images to "
               f"{result.out_json} ({result.checkpoint.name}, {result.seconds:.1f} s)")


def _parse_preds(positional, named) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for item in named:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise click.UsageError(f"--pred {item!r}: expected NAME=FILE, e.g. frcnn=dets.json")
        runs[name] = Path(file)
    for file in positional:
        name = Path(file).stem
        while name in runs:
            name += "_"
        runs[name] = Path(file)
    if not runs:
        raise click.UsageError("no detections: give a file, or --pred NAME=FILE (repeatable)")
    return runs


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
@click.option("--iou", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="IoU of VOC, darknet, seed-protocol and at-score metrics (seed study: 0.21).")
@click.option("--score", default=0.25, show_default=True, type=float,
              help="Score threshold of precision/recall/F1, confusion matrix and box sizes.")
@click.option("--froc-strict", is_flag=True,
              help="Also report the strict FROC variant (plain IoU, duplicates are FPs).")
@click.option("--bootstrap", default=0, show_default=True, type=click.IntRange(0),
              help="Patient-level resamples for 95% intervals (and the paired difference).")
@click.option("--seed", default=0, show_default=True, type=int, help="Bootstrap seed.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write metrics.json, per_class.csv, summary.md and PNG plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout.")
def eval_(ground_truth, predictions, named_preds, pred_format, names, split, iou, score,
          froc_strict, bootstrap, seed, out_dir, as_json) -> None:
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
    from deeplesion_cli.evaluation.data import EvalInputError, load_ground_truth
    from deeplesion_cli.evaluation.evaluate import EvalOptions, evaluate_runs
    from deeplesion_cli.evaluation.outputs import resolve_ground_truth, write_outputs
    from deeplesion_cli.formats.detections import read_detections, read_names

    files = _parse_preds(predictions, named_preds)
    options = EvalOptions(iou=iou, score=score, froc_strict=froc_strict, bootstrap=bootstrap,
                          seed=seed)
    try:
        gt_path, default_names = resolve_ground_truth(ground_truth, split)
        gt = load_ground_truth(gt_path)
        names_path = names or default_names
        class_names = read_names(names_path) if names_path else None
        fmt = None if pred_format == "auto" else pred_format
        runs = {name: read_detections(file, gt, fmt=fmt, names=class_names)
                for name, file in files.items()}
    except EvalInputError as exc:
        raise InputError(str(exc)) from None
    document = evaluate_runs(gt, runs, options, ground_truth_path=str(gt_path),
                             show_progress=True)
    if out_dir:
        written = write_outputs(document, out_dir)
        click.echo(f"wrote {len(written)} files to {out_dir}", err=True)
    if as_json:
        import json

        click.echo(json.dumps(document, indent=1))
        return
    from rich.table import Table

    from deeplesion_cli.report.tables import summary_rows

    header, rows = summary_rows(document)
    table = Table(title=f"{gt_path} ({gt.n_images} images, {len(gt.image)} boxes)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


@main.command("matrix")
@click.argument("experiments", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--print", "print_only", is_flag=True,
              help="Print the shell lines of the remaining steps, in order, one per line (for a "
                   "cluster queue); run nothing.")
@click.option("--only", multiple=True, metavar="NAME",
              help="Train and predict only this experiment (repeatable); the evaluation and "
                   "report still cover every complete experiment.")
def matrix_(experiments: Path, print_only: bool, only) -> None:
    """Run a TOML table of experiments, then evaluate and report them together.

    EXPERIMENTS lists experiments (backend frcnn or yolo and their options; format in
    docs/examples/seed-table2.toml). Each one trains in OUT/<name>/ (finished ones are skipped,
    interrupted ones resumed) and is predicted on the file's split; all complete experiments are
    evaluated into OUT/eval/ (as `lesion eval --out`), reported into OUT/report/ and compared
    in OUT/comparison.md.

    \b
    Examples:
      lesion matrix docs/examples/seed-table2.toml --print > jobs.sh
      lesion matrix experiments.toml
      lesion matrix experiments.toml --only frcnn-adam --only frcnn-sgd
    """
    from deeplesion_cli import matrix as mx

    try:
        loaded = mx.load_matrix(experiments)
        if print_only:
            for line in mx.remaining_lines(loaded, only):
                click.echo(line)
            return
        result = mx.run_matrix(loaded, only=only, log=lambda line: click.echo(line, err=True))
    except mx.MatrixError as exc:
        raise InputError(str(exc)) from None
    for warning in result.warnings:
        _warn(warning)
    from rich.table import Table

    table = Table(title=f"{experiments} ({loaded.split} split)")
    columns = ["experiment", "backend", "options", "status"] + [
        h for h, _, _ in mx.COMPARISON_METRICS]
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if i >= 4 else "left")
    for row in result.rows:
        table.add_row(row["experiment"], row["backend"], row["options"], row["status"],
                      *[mx.fmt_metric(row[key]) for _, key, _ in mx.COMPARISON_METRICS])
    _console().print(table)
    click.echo(f"comparison: {result.comparison_md}")
    if result.metrics_json is not None:
        click.echo(f"evaluation: {result.metrics_json.parent}")
    if result.report_index is not None:
        click.echo(f"report: {result.report_index}")
    if result.failures:
        raise RunFailed("; ".join(f"{name}: {message}"
                                  for name, message in result.failures.items()))


@main.command("report")
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eval", "evals", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder written by `lesion eval --out` (repeatable).")
@click.option("--prepared", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Prepared folder: class and size histograms, overlay images.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--pdf", is_flag=True, help="Also a PDF of every figure.")
@click.option("--image", "--images", "images", multiple=True, metavar="NAME",
              help="Also overlay this image (file name; repeat or comma-separate).")
@click.option("--n-overlay", default=4, show_default=True, type=click.IntRange(0),
              help="Best and worst images drawn per run.")
def report(runs, evals, prepared, out_dir, pdf, images, n_overlay) -> None:
    """Figures and tables of a benchmark paper from runs, evaluations and the data.

    RUNS are `lesion train frcnn` / `lesion train yolo` run folders (training curves, run
    table); --eval folders give PR, FROC, confusion matrices, overlays of the best and worst
    images, and the comparison tables (Markdown, LaTeX, CSV). OUT/index.md links everything.

    \b
    Examples:
      lesion report runs/frcnn runs/yolo --eval cmp/ --prepared prepared/ --out report/
      lesion report --eval cmp/ --out report/ --pdf --image 000001_01_01_109.png
    """
    from deeplesion_cli.report.build import ReportInputError, build_report

    names = [n for item in images for n in item.split(",") if n]
    try:
        result = build_report(runs, evals, prepared, out_dir, pdf=pdf, images=names,
                              n_overlay=n_overlay)
    except ReportInputError as exc:
        raise InputError(str(exc)) from None
    for warning in result.warnings:
        _warn(warning)
    click.echo(f"wrote {len(result.files)} files; open {result.index}")


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
    from deeplesion_cli.demo import headline, run_demo

    options = DemoOptions(patients=patients, seed=seed, synth_size_px=size_px,
                          model_size_px=size_px, epochs=epochs,
                          darknet_iterations=darknet_iterations, darknet=darknet_bin,
                          workers=workers)
    result = _darknet_errors(lambda: _frcnn_errors(
        lambda: run_demo(out, options, log=lambda line: click.echo(line, err=True))))
    for note in result.notes:
        _warn(note)
    from rich.table import Table

    from deeplesion_cli.report.tables import summary_rows

    header, rows = summary_rows(result.metrics)
    table = Table(title=f"test split of {result.prepared}")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    _console().print(table)
    click.echo(f"synthetic DeepLesion : {out / 'deeplesion'}")
    click.echo(f"prepared folder      : {result.prepared}  (COCO, darknet, data.yaml, manifest)")
    for name, run in result.runs.items():
        click.echo(f"{name + ' run':<21}: {run}")
    click.echo(f"evaluation           : {result.eval_dir / 'metrics.json'}")
    click.echo(f"report               : {result.report_index}")
    for line in headline(result, options):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
