"""Data commands: ``lesion synth``, ``lesion prepare``, ``lesion anchors``."""

from __future__ import annotations

from pathlib import Path

import click

from deeplesion_cli.cli.group import console, main, warn


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
              help="train,val,test shares for --split patient, summing to 1; a share of 0 "
                   "leaves that split empty (a share above 0 must get a patient).")
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
    Re-running with the same inputs does nothing (in a moved or copied folder it rewrites the
    lists, obj.data and data.yaml for where the folder is now); an interrupted run, or one
    stopped by a full disk, re-run, finishes the job.

    \b
    Examples:
      lesion prepare DeepLesion/ prepared/
      lesion prepare DeepLesion/ prepared-u/ --task universal --split official
      lesion prepare DeepLesion/ prepared-3w/ --window -1024,3071 --window -175,275 --window -1500,500
    """
    from deeplesion_cli.deeplesion import hu, splits
    from deeplesion_cli.prepare import PrepareOptions, parse_window
    from deeplesion_cli.prepare import prepare as run_prepare

    try:
        parsed_windows = tuple(parse_window(w) for w in windows) or (hu.DEFAULT_WINDOW_HU,)
        options = PrepareOptions(
            task=task, split=split, ratios=splits.parse_ratios(ratios), seed=seed,
            windows=parsed_windows, context=int(context), spacing_mm=spacing_mm,
            keep_noisy=keep_noisy, skip_invalid=skip_invalid)
        options.validate()
    except ValueError as exc:  # option values: click's usage error (exit 2, with usage)
        raise click.UsageError(str(exc)) from None
    result = run_prepare(deeplesion_dir, out, options, workers=workers, show_progress=not as_json)
    for warning in result.warnings:
        warn(warning)
    for note in result.notes:
        click.echo(note, err=True)
    if as_json:
        import json

        click.echo(json.dumps(result.manifest, indent=2))
        return
    _print_prepare_summary(result)


def _print_prepare_summary(result) -> None:
    from rich.table import Table

    m = result.manifest
    out = console()
    if result.up_to_date:
        out.print(f"{result.out_dir} is up to date ({result.reused} images); nothing to do")
    else:
        out.print(f"prepared {result.out_dir}: {result.rendered} images rendered, "
                  f"{result.reused} reused from an earlier run")
    table = Table(title=f"task {m['options']['task']}, split {m['options']['split']}")
    for column in ("split", "patients", "images", "lesions"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name in m["classes"]:
        table.add_column(name["name"], justify="right")
    for split, c in m["counts"].items():
        table.add_row(split, str(c["patients"]), str(c["images"]), str(c["lesions"]),
                      *(str(c["per_class"][k["name"]]) for k in m["classes"]))
    out.print(table)
    rows = m["rows"]
    out.print(f"rows: {rows['read']} read, {rows['used']} used, {rows['excluded_noisy']} "
              f"possibly noisy left out, {rows['excluded_untyped']} untyped left out, "
              f"{rows['rejected']} rejected, {rows['boxes_clipped']} boxes clipped at the edge")
    if m["files"]["rejected"]:
        out.print(f"rejected rows and reasons: {result.out_dir / m['files']['rejected']}")


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
    result = anchors_lib.compute_anchors(prepared, clusters=clusters, size=network_size,
                                         seed=seed, restarts=restarts, split=split)
    out_path = out_path or Path(prepared) / "anchors.json"
    anchors_lib.write_anchors_json(out_path, result)
    click.echo(anchors_lib.darknet_anchor_line(result))
    click.echo(f"mean IoU {result.mean_iou:.4f}, boxes with IoU >= 0.5: "
               f"{result.recall_at_05:.1%} ({result.n_boxes} boxes, {clusters} clusters, "
               f"{network_size[0]}x{network_size[1]})")
    click.echo(f"wrote {out_path}", err=True)
