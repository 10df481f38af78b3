"""The three kinds of folder ``lesion report`` reads, loaded and checked.

* **Training run** (:func:`load_run`): a folder of ``lesion train frcnn`` or ``lesion train yolo``
  with ``metrics.csv`` (one row per epoch, or per darknet iteration) and ``args.json`` (the
  command, the options, for darknet the cfg's ``[net]`` keys and whether it trained with
  ``-map``). A darknet run folder of an older lesion has ``darknet.log`` but no ``args.json``: it
  is still read, with its architecture unknown (``"?"``) and a note saying so.
* **Evaluation** (:func:`load_eval`): a folder of ``lesion eval --out`` (``metrics.json``;
  docs/metrics.md section 11) and/or of ``lesion eval --checkpoint every --out``
  (``checkpoints.csv``: :mod:`deeplesion_cli.report.checkpoints`).
* **Prepared folder** (:func:`load_prepared`): the manifest and the COCO json of each split
  (docs/formats.md section 3), read through :class:`~deeplesion_cli.prepared.Prepared`.

A folder that is not what it should be raises :class:`ReportInputError` naming its path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from deeplesion_cli import runlog
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.prepared import Prepared, PreparedError

#: ``args.json``'s ``command`` of a training run -> the run's backend.
TRAIN_COMMANDS = {"train frcnn": "frcnn", "train yolo": "darknet"}


class ReportInputError(LesionInputError):
    """An input folder that cannot be reported on; the message names the path (bad input:
    exit 2; also a ValueError)."""


@dataclass
class RunInfo:
    path: Path
    name: str                   # folder name
    label: str                  # unique, file-safe
    backend: str                # "frcnn" | "darknet"
    rows: list[dict]            # metrics.csv
    args: dict = field(default_factory=dict)        # args.json
    net: dict = field(default_factory=dict)         # [net] options of the cfg (darknet), strings
    arch: str = ""
    with_map: bool = False                          # darknet -map
    notes: list[str] = field(default_factory=list)  # what the report should warn about


@dataclass
class EvalInfo:
    path: Path
    label: str
    document: dict | None       # metrics.json (None: a folder with checkpoints.csv only)
    checkpoints: list[dict] | None = None   # checkpoints.csv's rows, when the folder has one


@dataclass
class PreparedInfo:
    path: Path
    manifest: dict              # {} when the folder has COCO files but no manifest.json
    splits: dict[str, dict]     # split -> COCO document, in train/val/test order
    image_dirs: dict[str, Path]


def read_json(path: Path, what: str):
    """The JSON document at ``path``; :class:`ReportInputError` naming ``what`` when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportInputError(f"{path}: {what} is not valid JSON: {exc}") from None


def load_run(path: Path, label: str) -> RunInfo:
    """A training run folder (see the module docstring); :class:`ReportInputError` when it is
    not one."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (a run folder of lesion train frcnn or "
                               "lesion train yolo)")
    metrics_path = path / "metrics.csv"
    if not metrics_path.is_file():
        raise ReportInputError(f"{path}: no metrics.csv: not a run folder of lesion train "
                               "frcnn or lesion train yolo")
    try:
        rows = runlog.read_metrics(metrics_path)
    except runlog.MetricsError as exc:
        raise ReportInputError(str(exc)) from None
    args_path = path / "args.json"
    if args_path.is_file():
        args = read_json(args_path, "args.json")
        command = args.get("command") if isinstance(args, dict) else None
        if command not in TRAIN_COMMANDS:
            raise ReportInputError(f"{args_path}: not written by lesion train frcnn or lesion "
                                   f"train yolo (its command is {command!r})")
        options = args.get("options") or {}
        arch = str(options.get("arch", "?"))
        if TRAIN_COMMANDS[command] == "frcnn":
            return RunInfo(path, path.name, label, "frcnn", rows, args=args, arch=arch)
        net = {str(k): str(v) for k, v in (args.get("net") or {}).items()}
        return RunInfo(path, path.name, label, "darknet", rows, args=args, net=net, arch=arch,
                       with_map=bool(args.get("map")))
    if (path / "darknet.log").is_file():
        # lesion train yolo wrote no args.json before it recorded its options there; the log and
        # cfg are not read for them (their layout is not a contract), so they stay unknown
        return RunInfo(path, path.name, label, "darknet", rows, arch="?", notes=[
            f"run {label}: no args.json (a lesion train yolo run of an older lesion): "
            "architecture and cfg options unknown"])
    raise ReportInputError(f"{path}: has metrics.csv but neither args.json (lesion train frcnn "
                           "or lesion train yolo) nor darknet.log (lesion train yolo)")


def load_eval(path: Path, label: str) -> EvalInfo:
    """An output folder of ``lesion eval --out`` (metrics.json) or of ``lesion eval --checkpoint
    every --out`` (checkpoints.csv), or both; :class:`ReportInputError` when it is neither."""
    from deeplesion_cli.report.checkpoints import (CSV_NAME, CheckpointsFileError,
                                                   read_checkpoints_csv)

    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (an output folder of lesion eval --out)")
    metrics = path / "metrics.json"
    rows = None
    if (path / CSV_NAME).is_file():
        try:
            rows = read_checkpoints_csv(path / CSV_NAME)
        except CheckpointsFileError as exc:
            raise ReportInputError(str(exc)) from None
    if not metrics.is_file():
        if rows is not None:
            return EvalInfo(path, label, None, rows)
        raise ReportInputError(f"{path}: no metrics.json (nor {CSV_NAME}): not an output folder "
                               "of lesion eval --out")
    document = read_json(metrics, "metrics.json")
    if not isinstance(document, dict) or not isinstance(document.get("runs"), dict):
        raise ReportInputError(f"{metrics}: not a metrics.json of lesion eval (no 'runs' object)")
    for name, block in document["runs"].items():
        if not isinstance(block, dict):
            raise ReportInputError(f"{metrics}: runs.{name} is not an object")
    return EvalInfo(path, label, document, rows)


def load_prepared(path: Path) -> PreparedInfo:
    """A prepared folder, or any folder with ``coco/<split>.json`` files (then without a
    manifest); :class:`ReportInputError` when it is neither or a file in it is unreadable."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (a prepared folder of lesion prepare)")
    prepared = Prepared(path)
    try:
        manifest = prepared.manifest if prepared.is_prepared() else {}
        names = prepared.coco_splits()
        if not manifest and not names:
            raise ReportInputError(f"{path}: neither manifest.json nor coco/*.json: not a "
                                   "prepared folder of lesion prepare")
        splits = {split: prepared.read_coco(split) for split in names}
        image_dirs = {split: prepared.image_dir(split) for split in splits}
    except PreparedError as exc:
        raise ReportInputError(str(exc)) from None
    return PreparedInfo(path, manifest, splits, image_dirs)
