"""``lesion matrix EXPERIMENTS.toml``: run a table of experiments, then one evaluation and report.

One TOML file lists experiments (a backend and its options). :func:`run_matrix` runs what is
missing, one experiment after the other, skips what is finished, resumes what was interrupted,
predicts every experiment on the same split, evaluates all of them together and writes one
comparison table and report. :func:`plan` says what remains without running anything; each
step carries the exact ``lesion`` shell line that does it (``lesion matrix --print``: lines for
a cluster queue).

The file
========

.. code-block:: toml

    prepared = "prepared"        # a `lesion prepare` folder      (paths: relative to this file)
    out = "matrix"               # out/<name>/ runs, out/eval/, out/report/, out/comparison.md
    split = "test"               # every experiment is predicted and evaluated on this split

    [defaults.frcnn]             # shared by every frcnn experiment (an experiment overrides)
    epochs = 110
    [defaults.yolo]
    size = 416

    [eval]                       # optional: `lesion eval` options
    iou = 0.5                    # score = 0.25, froc_strict = false, bootstrap = 0, seed = 0
    [report]                     # optional: build_report options
    pdf = false                  # n_overlay = 4, images = ["000001_01_01_103.png", ...]

    [[experiment]]
    name = "frcnn-adam"          # folder name: letters, digits, - and _ (not eval/report)
    backend = "frcnn"            # frcnn | yolo
    optimizer = "adam"
    lr = 1e-4

    [[experiment]]
    name = "yolov4"
    backend = "yolo"
    arch = "yolov4"
    weights = "yolov4.conv.137"

Top-level keys: ``prepared`` (required), ``out`` (default ``matrix``), ``split`` (``train``,
``val`` or ``test``; default ``test``), ``defaults`` (tables ``frcnn`` and ``yolo`` only),
``eval``, ``report`` and ``experiment`` (at least one).

frcnn options (:data:`FRCNN_OPTIONS`): the fields of
:class:`~deeplesion_cli.frcnn.engine.TrainOptions` that ``lesion train frcnn`` has a flag for,
same names (``size_px`` is ``--size``): arch, pretrained, weights, anchors, size_px, epochs,
batch_size, optimizer, lr, momentum, weight_decay, scheduler, lr_steps (a list of epochs),
lr_gamma, warmup_steps, clip_grad, balanced, augment, amp, device, workers, seed, deterministic,
select, eval_train_images, rois_per_image, rpn_pre_nms_train, rpn_post_nms_train,
rpn_post_nms_test, rpn_score_thresh, nms_iou, threads. Unset options take ``lesion train
frcnn``'s defaults.

yolo options (:data:`YOLO_OPTIONS`): ``lesion cfg``'s arch (required), size (416 or
``"608x416"``), anchors (an anchors.json), batch, subdivisions, max_batches, burn_in, lr,
small_objects,
mosaic, flip; ``lesion train yolo``'s weights (initial weights), darknet (binary: a path, or a
program name on PATH), gpus (``"0,1"``), map; ``lesion predict yolo``'s thresh.

Validation is strict (:func:`load_matrix`): an unknown key (with a "did you mean"), an unknown
backend, a duplicate name (also one differing only by case), a name that is not a safe folder
name, a value of the wrong type or out of range raises :class:`MatrixError` naming the file,
the experiment (name and position) and the key. Files named by options (weights, anchors) are
checked when a step needs them, so a file can be validated and printed on a machine that lacks
them.

State, per experiment (run folder ``out/<name>/``)
==================================================

frcnn: training is finished when ``last.pt``'s epoch equals ``epochs``, interrupted when it is
lower (resumed with ``train(..., resume=True)``, ``epochs``/``workers``/``device`` passed as
resumable overrides). A run whose saved options differ from the file's in anything a resumed run
may not change (:data:`~deeplesion_cli.frcnn.engine.RESUMABLE_OVERRIDES`), that holds more epochs
than asked, or that was trained on another prepared folder (its ``config_hash``) stops the plan
with a :class:`MatrixError` naming the key: the matrix never mixes two settings in one row.
Predictions ``out/<name>/<split>.json`` (from ``best.pt``, else ``last.pt``, as ``lesion predict
frcnn RUN`` picks) are up to date when newer than that checkpoint.

yolo: ``out/<name>/<name>.cfg`` is what ``lesion cfg`` writes for the options (rewritten when it
differs and training has not started; when training has started only a changed ``max_batches``
is accepted: the run is resumed to train longer; any other difference is a :class:`MatrixError`).
Training is finished when ``backup/<name>_final.weights`` exists and the last darknet session in
``darknet.log`` passes :func:`~deeplesion_cli.darknet.runner.judge_training` (a failed run with
final weights is a :class:`MatrixError`: delete its folder to retrain); interrupted when
darknet's resume weights exist (``<name>.backup`` pjreddie, ``<name>_last.weights``
AlexeyAB/hank-ai). Predictions are up to date when newer than the final weights.

Evaluation: all experiments whose training is finished and whose predictions are up to date
(after this run's steps) are evaluated together into ``out/eval/``, exactly what ``lesion eval
PREPARED --split S --pred NAME=out/NAME/S.json ... --out out/eval`` writes; it is up to date when
``metrics.json`` holds exactly those runs, in file order, with the same options and ground truth,
and is newer than every predictions file. Then the report: ``build_report(runs=[run folders],
evals=[out/eval], prepared=PREPARED, out_dir=out/report)``; it is up to date when its
``index.md`` is newer than ``metrics.json`` and the matrix file. ``out/comparison.md`` (and
``comparison.csv``) is rewritten at the end of every run: one row per experiment with the options
that differ between experiments of its backend, its status, and COCO AP50, AP, FROC mean
sensitivity at 0.5-4 FP/image and sensitivity at 4 FP/image from ``metrics.json``.

Shell lines (:func:`plan`, :func:`remaining_lines`): per experiment ``lesion train frcnn PREPARED
--out out/<name> ...`` with every option that has a value as a flag (``--resume`` with only the
resumable ones for an interrupted run) and ``lesion predict frcnn``; or ``mkdir -p out/<name> &&
lesion cfg ... -o out/<name>/<name>.cfg``, ``lesion train yolo`` and ``lesion predict yolo``; then
``lesion eval``, ``lesion report`` and, last, ``lesion matrix FILE`` (with the same ``--only``),
which then finds everything done and writes the comparison. Paths are relative to the current
folder when inside it, else absolute. Run in order, the lines do what :func:`run_matrix` does.

``only``: the experiments to train and predict (names); the evaluation still covers every
experiment that is complete (an experiment outside ``only`` whose run folder does not fit the
file is left out, with a warning). A step that fails (e.g. a non-finite loss) is logged and recorded in
:attr:`MatrixResult.failures`; the other experiments go on. Inputs a step needs (weights and
anchors files, the darknet binary, a darknet fork that can build the arch) are checked for every
remaining step before the first one starts.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from deeplesion_cli import atomic

BACKENDS = ("frcnn", "yolo")
SPLITS = ("train", "val", "test")
#: run folder names: a letter or digit, then letters, digits, ``-`` and ``_`` (no dots: darknet
#: names weights after the cfg's name up to its first dot; no spaces: darknet .data files)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: folders of ``out/`` that are not run folders
RESERVED_NAMES = ("eval", "report")

#: frcnn option (TrainOptions field) -> (type, ``lesion train frcnn`` flag). TrainOptions fields
#: without a flag (warmup_factor, eval_batch_size, score_thresh, detections_per_img,
#: trainable_backbone_layers, log_every) are not accepted: a printed line could not carry them.
FRCNN_OPTIONS = {
    "arch": ("str", "--arch"),
    "pretrained": ("str", "--pretrained"),
    "weights": ("path", "--weights"),
    "anchors": ("path", "--anchors"),
    "size_px": ("int", "--size"),
    "epochs": ("int", "--epochs"),
    "batch_size": ("int", "--batch-size"),
    "optimizer": ("str", "--optimizer"),
    "lr": ("float", "--lr"),
    "momentum": ("float", "--momentum"),
    "weight_decay": ("float", "--weight-decay"),
    "scheduler": ("str", "--scheduler"),
    "lr_steps": ("int_list", "--lr-steps"),
    "lr_gamma": ("float", "--lr-gamma"),
    "warmup_steps": ("int", "--warmup-steps"),
    "clip_grad": ("float", "--clip-grad"),
    "balanced": ("bool", "--balanced"),
    "augment": ("str", "--augment"),
    "amp": ("bool", "--amp"),
    "device": ("str", "--device"),
    "workers": ("int", "--workers"),
    "seed": ("int", "--seed"),
    "deterministic": ("bool", "--deterministic"),
    "select": ("str", "--select"),
    "eval_train_images": ("int", "--eval-train-images"),
    "rois_per_image": ("int", "--rois-per-image"),
    "rpn_pre_nms_train": ("int", "--rpn-pre-nms-train"),
    "rpn_post_nms_train": ("int", "--rpn-post-nms-train"),
    "rpn_post_nms_test": ("int", "--rpn-post-nms-test"),
    "rpn_score_thresh": ("float", "--rpn-score-thresh"),
    "nms_iou": ("float", "--nms-iou"),
    "threads": ("int", "--threads"),
}
#: lower bounds of integer frcnn options (click's IntRange in ``lesion train frcnn``)
_FRCNN_MIN = {"size_px": 32, "epochs": 1, "batch_size": 1, "warmup_steps": 0, "workers": 0,
              "eval_train_images": 0, "rois_per_image": 1, "rpn_pre_nms_train": 1,
              "rpn_post_nms_train": 1, "rpn_post_nms_test": 1, "threads": 1}
_FRCNN_MAX = {"size_px": 4096}

#: yolo option -> (type, command that takes it, its flag)
YOLO_OPTIONS = {
    "arch": ("str", "cfg", "--arch"),
    "size": ("size", "cfg", "--size"),
    "anchors": ("path", "cfg", "--anchors"),
    "batch": ("int", "cfg", "--batch"),
    "subdivisions": ("int", "cfg", "--subdivisions"),
    "max_batches": ("int", "cfg", "--max-batches"),
    "burn_in": ("int", "cfg", "--burn-in"),
    "lr": ("float", "cfg", "--lr"),
    "small_objects": ("bool", "cfg", "--small-objects"),
    "mosaic": ("bool", "cfg", "--mosaic"),
    "flip": ("bool", "cfg", "--flip"),
    "weights": ("path", "train", "--weights"),
    "darknet": ("program", "train", "--darknet"),
    "gpus": ("gpus", "train", "--gpus"),
    "map": ("bool", "train", "--map"),
    "thresh": ("float", "predict", "--thresh"),
}
EVAL_OPTIONS = {"iou": "float", "score": "float", "froc_strict": "bool", "bootstrap": "int",
                "seed": "int"}
REPORT_OPTIONS = {"pdf": "bool", "images": "str_list", "n_overlay": "int"}
TOP_KEYS = ("prepared", "out", "split", "defaults", "eval", "report", "experiment")

#: options left out of the comparison table (they do not change results)
_NOT_COMPARED = {"device", "workers", "threads", "darknet", "gpus"}


class MatrixError(ValueError):
    """A matrix file or run folder that cannot be used; names the file, experiment and key."""

    def __init__(self, message: str, *, file=None, experiment: str | None = None,
                 key: str | None = None):
        self.file = Path(file) if file is not None else None
        self.experiment = experiment
        self.key = key
        parts = [str(file)] if file is not None else []
        if experiment:
            parts.append(f"experiment {experiment}")
        if key:
            parts.append(f"key {key!r}")
        parts.append(message)
        super().__init__(": ".join(parts))


# ------------------------------------------------------------------------------------ the model

@dataclass(frozen=True)
class YoloOptions:
    """A yolo experiment's options (see the module docstring); paths absolute."""

    arch: str
    size: str = "416"
    anchors: str | None = None
    batch: int = 64
    subdivisions: int = 16
    max_batches: int | None = None
    burn_in: int | None = None
    lr: float | None = None
    small_objects: bool = False
    mosaic: bool = False
    flip: bool = False
    weights: str | None = None
    darknet: str | None = None
    gpus: str | None = None
    map: bool = False
    thresh: float = 0.005


@dataclass(frozen=True)
class ReportOptions:
    pdf: bool = False
    images: tuple[str, ...] = ()
    n_overlay: int = 4


@dataclass(frozen=True)
class Experiment:
    name: str
    backend: str                       # frcnn | yolo
    index: int                         # 1-based position in the file
    given: dict                        # options as set in the file (defaults merged), normalised
    options: object                    # TrainOptions (frcnn) or YoloOptions (yolo)
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.name!r} (#{self.index})"

    @property
    def cfg_path(self) -> Path:
        return self.run_dir / f"{self.name}.cfg"

    def predictions(self, split: str) -> Path:
        return self.run_dir / f"{split}.json"


@dataclass(frozen=True)
class Matrix:
    path: Path
    prepared: Path
    out: Path
    split: str
    experiments: tuple[Experiment, ...]
    eval_options: object               # deeplesion_cli.evaluation.evaluate.EvalOptions
    report: ReportOptions

    @property
    def eval_dir(self) -> Path:
        return self.out / "eval"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    def experiment(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)


@dataclass
class Step:
    """One thing to do (or already done): ``kind`` is cfg, train, resume, predict, eval, report
    or compare; ``line`` the shell line that does it; ``note`` why it is (not) needed."""

    experiment: str | None
    kind: str
    line: str
    done: bool
    note: str = ""


@dataclass
class ExperimentState:
    experiment: Experiment
    trained: bool = False              # training finished as the file asks
    resume: bool = False               # interrupted (or asked to train longer): resume it
    cfg_current: bool = True           # yolo: the cfg on disk is what the file asks
    progress: str = ""                 # "2/2 epochs", "6/6 iterations", "not started"
    checkpoint: Path | None = None     # what predictions come from (best.pt/last.pt/final)
    predictions_current: bool = False

    @property
    def complete(self) -> bool:
        return self.trained and self.predictions_current


@dataclass
class MatrixResult:
    matrix: Matrix
    steps: list[Step]                  # the plan this run started from
    ran: list[Step] = field(default_factory=list)
    skipped: list[Step] = field(default_factory=list)
    failures: dict = field(default_factory=dict)   # experiment (or "eval"/"report") -> message
    evaluated: list[str] = field(default_factory=list)
    metrics_json: Path | None = None
    comparison_md: Path | None = None
    comparison_csv: Path | None = None
    rows: list[dict] = field(default_factory=list)
    report: object = None              # deeplesion_cli.report.build.ReportResult (if built now)
    report_index: Path | None = None   # the up-to-date report's index.md (built now or before)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# ------------------------------------------------------------------------------- load & validate

def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _coerce(value, kind: str, fail: Callable[[str], MatrixError], base: Path):
    """``value`` of option type ``kind`` normalised, or ``fail(message)`` raised."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {_type_name(value)} ({value!r})")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {_type_name(value)} ({value!r})")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected a number, got {_type_name(value)} ({value!r})")
        if not math.isfinite(value):
            raise fail(f"expected a finite number, got {value!r}")
        return float(value)
    if kind in ("str", "program"):
        if not isinstance(value, str) or not value:
            raise fail(f"expected a non-empty string, got {_type_name(value)} ({value!r})")
        if kind == "program" and ("/" in value or value.startswith("~")):
            return str((base / Path(value).expanduser()).resolve())
        return value
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise fail(f"expected a path (a string), got {_type_name(value)} ({value!r})")
        return str((base / Path(value).expanduser()).resolve())
    if kind == "int_list":
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
            raise fail(f"expected a non-empty list of integers, got {value!r}")
        if min(value) < 1:
            raise fail(f"epochs are counted from 1, got {value!r}")
        return tuple(value)
    if kind == "str_list":
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise fail(f"expected a list of strings, got {value!r}")
        return tuple(value)
    if kind == "size":
        from deeplesion_cli.anchors import parse_size

        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise fail(f"expected an integer or \"WxH\", got {_type_name(value)} ({value!r})")
        try:
            width, height = parse_size(value)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if width % 32 or height % 32:
            raise fail(f"{value!r}: width and height must be multiples of 32 (darknet)")
        return str(width) if width == height else f"{width}x{height}"
    if kind == "gpus":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if isinstance(value, list) and value and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            return ",".join(str(v) for v in value)
        if isinstance(value, str) and re.fullmatch(r"\d+(,\d+)*", value.replace(" ", "")):
            return value.replace(" ", "")
        raise fail(f"expected GPU indices like \"0,1\", 0 or [0, 1], got {value!r}")
    raise AssertionError(kind)  # pragma: no cover


def _unknown(key: str, known, what: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}; known: {', '.join(known)}"


def _check_table(table, known: dict, where: Callable[..., MatrixError], what: str) -> dict:
    if not isinstance(table, dict):
        raise where(f"expected a table, got {_type_name(table)}")
    for key in table:
        if key not in known:
            raise where(_unknown(key, known, what), key=key)
    return table


def load_matrix(path) -> Matrix:
    """Read and validate a matrix TOML file (module docstring); nothing is run or read besides
    the file (and the darknet cfg templates, to check yolo options)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MatrixError(f"cannot read: {exc.strerror or exc}", file=path) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MatrixError(f"not UTF-8 text ({exc})", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"not valid TOML: {exc}", file=path) from None
    return matrix_from_dict(doc, path)


def matrix_from_dict(doc: dict, path) -> Matrix:
    """Validate a parsed matrix file (``path``: the file, for messages and relative paths)."""
    from deeplesion_cli.evaluation.evaluate import EvalOptions

    path = Path(path)
    base = path.resolve().parent

    def top(message: str, key: str | None = None) -> MatrixError:
        return MatrixError(message, file=path, key=key)

    for key in doc:
        if key not in TOP_KEYS:
            raise top(_unknown(key, TOP_KEYS, "top-level key"), key)
    if "prepared" not in doc:
        raise top("missing: the `lesion prepare` folder the experiments train on",
                  "prepared")
    prepared = Path(_coerce(doc["prepared"], "path", lambda m: top(m, "prepared"), base))
    out = Path(_coerce(doc.get("out", "matrix"), "path", lambda m: top(m, "out"), base))
    split = doc.get("split", "test")
    if split not in SPLITS:
        raise top(f"expected one of {', '.join(SPLITS)}, got {split!r}", "split")

    def section(name: str):
        def fail(message: str, key: str | None = None) -> MatrixError:
            return MatrixError(message, file=path, key=f"{name}.{key}" if key else name)
        return fail

    defaults = _check_table(doc.get("defaults", {}), dict.fromkeys(BACKENDS),
                            section("defaults"), "backend")
    shared: dict[str, dict] = {}
    for backend, table in defaults.items():
        known = FRCNN_OPTIONS if backend == "frcnn" else YOLO_OPTIONS
        fail_in = section(f"defaults.{backend}")
        _check_table(table, known, fail_in, f"{backend} option")
        shared[backend] = {k: _coerce(v, known[k][0], lambda m, k=k, f=fail_in: f(m, k), base)
                           for k, v in table.items()}

    eval_table = _check_table(doc.get("eval", {}), EVAL_OPTIONS, section("eval"), "eval option")
    eval_values = {k: _coerce(v, EVAL_OPTIONS[k], lambda m, k=k: section("eval")(m, k), base)
                   for k, v in eval_table.items()}
    if not 0 <= eval_values.get("iou", 0.5) <= 1:
        raise section("eval")(f"expected 0..1, got {eval_values['iou']}", "iou")
    if eval_values.get("bootstrap", 0) < 0:
        raise section("eval")(f"expected >= 0, got {eval_values['bootstrap']}", "bootstrap")
    eval_options = EvalOptions(**eval_values)

    report_table = _check_table(doc.get("report", {}), REPORT_OPTIONS, section("report"),
                                "report option")
    report_values = {k: _coerce(v, REPORT_OPTIONS[k], lambda m, k=k: section("report")(m, k),
                                base) for k, v in report_table.items()}
    if report_values.get("n_overlay", 0) < 0:
        raise section("report")(f"expected >= 0, got {report_values['n_overlay']}", "n_overlay")
    report = ReportOptions(**report_values)

    items = doc.get("experiment")
    if items is None:
        raise top("no [[experiment]] tables: nothing to run", "experiment")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise top("expected [[experiment]] tables", "experiment")

    experiments: list[Experiment] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items, start=1):
        name = item.get("name")
        label = f"{name!r} (#{index})" if isinstance(name, str) and name else f"#{index}"

        def fail(message: str, key: str | None = None, _label=label) -> MatrixError:
            return MatrixError(message, file=path, experiment=_label, key=key)

        if "name" not in item:
            raise fail("missing: every experiment needs a name (its folder under out/)", "name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise fail(f"{name!r} is not a safe folder name: 1-64 letters, digits, '-' and '_', "
                       "starting with a letter or digit", "name")
        if name.lower() in RESERVED_NAMES:
            raise fail(f"{name!r} is reserved (out/{name.lower()}/ holds the matrix's "
                       f"{name.lower()})", "name")
        if name.lower() in seen:
            other = experiments[seen[name.lower()]]
            same = ("the same name as" if other.name == name
                    else "a name differing only by case from")
            raise fail(f"{same} experiment #{other.index}", "name")
        backend = item.get("backend")
        if backend not in BACKENDS:
            raise fail(f"expected one of {', '.join(BACKENDS)}, got {backend!r}", "backend")
        known = FRCNN_OPTIONS if backend == "frcnn" else YOLO_OPTIONS
        for key in item:
            if key not in ("name", "backend") and key not in known:
                raise fail(_unknown(key, known, f"{backend} option"), key)
        given = dict(shared.get(backend, {}))
        for key, value in item.items():
            if key not in ("name", "backend"):
                given[key] = _coerce(value, known[key][0], lambda m, key=key: fail(m, key), base)
        if backend == "frcnn":
            options = _frcnn_options(given, fail)
        else:
            options = _yolo_options(given, fail)
        seen[name.lower()] = len(experiments)
        experiments.append(Experiment(name, backend, index, given, options, out / name))
    return Matrix(path, prepared, out, split, tuple(experiments), eval_options, report)


def _frcnn_options(given: dict, fail):
    from deeplesion_cli.frcnn.engine import OptionError, TrainOptions

    for key, low in _FRCNN_MIN.items():
        if key in given and given[key] < low:
            raise fail(f"must be >= {low}, got {given[key]}", key)
    for key, high in _FRCNN_MAX.items():
        if key in given and given[key] > high:
            raise fail(f"must be <= {high}, got {given[key]}", key)
    options = TrainOptions(**given)
    try:
        options.check()
    except OptionError as exc:
        found = re.match(r"--([a-z-]+)", str(exc))
        flag = f"--{found.group(1)}" if found else None
        key = next((k for k, (_, f) in FRCNN_OPTIONS.items() if f == flag), None)
        raise fail(str(exc), key) from None
    return options


def _yolo_options(given: dict, fail) -> YoloOptions:
    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.generate import ARCHS, generate_cfg

    if "arch" not in given:
        raise fail(f"missing: the network to write ({', '.join(ARCHS)})", "arch")
    if given["arch"] not in ARCHS:
        raise fail(f"expected one of {', '.join(ARCHS)}, got {given['arch']!r}", "arch")
    for key in ("batch", "subdivisions", "max_batches"):
        if key in given and given[key] < 1:
            raise fail(f"must be >= 1, got {given[key]}", key)
    if "burn_in" in given and given["burn_in"] < 0:
        raise fail(f"must be >= 0, got {given['burn_in']}", "burn_in")
    if "lr" in given and not given["lr"] > 0:
        raise fail(f"must be > 0, got {given['lr']}", "lr")
    if "thresh" in given and given["thresh"] < 0:
        raise fail(f"must be >= 0, got {given['thresh']}", "thresh")
    options = YoloOptions(**given)
    if options.batch % options.subdivisions:
        raise fail(f"batch = {options.batch} must be a multiple of subdivisions = "
                   f"{options.subdivisions}", "subdivisions")
    if options.small_objects and options.arch != "yolov4":
        raise fail("applies to arch yolov4 only", "small_objects")
    try:  # whatever else generate_cfg refuses
        generate_cfg(options.arch, classes=1, size=parse_size(options.size), batch=options.batch,
                     subdivisions=options.subdivisions, max_batches=options.max_batches,
                     burn_in=options.burn_in, small_objects=options.small_objects,
                     mosaic=options.mosaic,
                     flip=options.flip, learning_rate=options.lr)
    except ValueError as exc:
        raise fail(f"lesion cfg refuses these options: {exc}") from None
    return options


# --------------------------------------------------------------------------------- shell lines

def _shell_path(path: Path, cwd: Path) -> str:
    path = Path(path)
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)
    return str(path) if rel == ".." or rel.startswith(".." + os.sep) else rel


def _line(words: list) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def frcnn_train_line(matrix: Matrix, exp: Experiment, cwd: Path, resume: bool = False) -> str:
    """``lesion train frcnn`` with every option as a flag (``resume``: ``--resume`` and the
    options a resumed run may change)."""
    from deeplesion_cli.frcnn.engine import RESUMABLE_OVERRIDES

    options = exp.options
    words = ["lesion", "train", "frcnn", _shell_path(matrix.prepared, cwd), "--out",
             _shell_path(exp.run_dir, cwd)]
    if resume:
        words.append("--resume")
    for key, (kind, flag) in FRCNN_OPTIONS.items():
        if resume and key not in RESUMABLE_OVERRIDES:
            continue
        words += _flag_words(kind, flag, getattr(options, key), cwd)
    return _line(words)


def _flag_words(kind: str, flag: str, value, cwd: Path) -> list:
    """The command-line words of one option (none when unset or a false flag)."""
    if value is None or value is False:
        return []
    if kind == "bool":
        return [flag]
    if kind == "path":
        return [flag, _shell_path(Path(value), cwd)]
    if kind == "int_list":
        return [flag, ",".join(str(v) for v in value)]
    return [flag, _number(value)]


def frcnn_predict_line(matrix: Matrix, exp: Experiment, cwd: Path) -> str:
    options = exp.options
    return _line(["lesion", "predict", "frcnn", _shell_path(exp.run_dir, cwd),
                  _shell_path(matrix.prepared, cwd), "--split", matrix.split, "-o",
                  _shell_path(exp.predictions(matrix.split), cwd), "--workers", options.workers,
                  "--device", options.device])


def _darknet_flag(options: YoloOptions, cwd: Path) -> list:
    if options.darknet is None:
        return []
    value = options.darknet
    return ["--darknet", _shell_path(Path(value), cwd) if os.path.isabs(value) else value]


def yolo_cfg_line(matrix: Matrix, exp: Experiment, cwd: Path) -> str:
    """``lesion cfg`` writing the run's cfg (``mkdir -p`` first: ``lesion cfg`` does not make
    the folder)."""
    options = exp.options
    words = ["lesion", "cfg", _shell_path(matrix.prepared, cwd)]
    for key, (kind, command, flag) in YOLO_OPTIONS.items():
        if command != "cfg":
            continue
        words += _flag_words(kind, flag, getattr(options, key), cwd)
    words += ["-o", _shell_path(exp.cfg_path, cwd)]
    return _line(["mkdir", "-p", _shell_path(exp.run_dir, cwd)]) + " && " + _line(words)


def yolo_train_line(matrix: Matrix, exp: Experiment, cwd: Path, resume: bool = False) -> str:
    options = exp.options
    words = ["lesion", "train", "yolo", _shell_path(matrix.prepared, cwd), "--cfg",
             _shell_path(exp.cfg_path, cwd), "--out", _shell_path(exp.run_dir, cwd)]
    if options.weights is not None and not resume:
        words += ["--weights", _shell_path(Path(options.weights), cwd)]
    words += _darknet_flag(options, cwd)
    if options.gpus is not None:
        words += ["--gpus", options.gpus]
    if options.map:
        words.append("--map")
    if resume:
        words.append("--resume")
    return _line(words)


def yolo_final_weights(exp: Experiment) -> Path:
    return exp.run_dir / "backup" / f"{exp.name}_final.weights"


def yolo_predict_line(matrix: Matrix, exp: Experiment, cwd: Path) -> str:
    options = exp.options
    words = ["lesion", "predict", "yolo", _shell_path(matrix.prepared, cwd), "--cfg",
             _shell_path(exp.cfg_path, cwd), "--weights",
             _shell_path(yolo_final_weights(exp), cwd), "--split", matrix.split, "-o",
             _shell_path(exp.predictions(matrix.split), cwd), "--thresh",
             _number(options.thresh)]
    return _line(words + _darknet_flag(options, cwd))


def eval_line(matrix: Matrix, names: Sequence[str], cwd: Path) -> str:
    options = matrix.eval_options
    words = ["lesion", "eval", _shell_path(matrix.prepared, cwd), "--split", matrix.split]
    for name in names:
        exp = matrix.experiment(name)
        words += ["--pred", f"{name}={_shell_path(exp.predictions(matrix.split), cwd)}"]
    words += ["--iou", _number(options.iou), "--score", _number(options.score)]
    if options.froc_strict:
        words.append("--froc-strict")
    words += ["--bootstrap", options.bootstrap, "--seed", options.seed]
    words += ["--out", _shell_path(matrix.eval_dir, cwd)]
    return _line(words)


def report_line(matrix: Matrix, names: Sequence[str], cwd: Path) -> str:
    """``lesion report RUN... --eval DIR --prepared DIR --out DIR`` (over
    :func:`deeplesion_cli.report.build.build_report`, as :func:`build_matrix_report` calls it)."""
    words = ["lesion", "report"]
    words += [_shell_path(matrix.experiment(n).run_dir, cwd) for n in names]
    words += ["--eval", _shell_path(matrix.eval_dir, cwd), "--prepared",
              _shell_path(matrix.prepared, cwd), "--out", _shell_path(matrix.report_dir, cwd)]
    if matrix.report.pdf:
        words.append("--pdf")
    for image in matrix.report.images:
        words += ["--image", image]
    if matrix.report.n_overlay != ReportOptions.n_overlay:
        words += ["--n-overlay", matrix.report.n_overlay]
    return _line(words)


# -------------------------------------------------------------------------------------- state

def _mtime(path: Path) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return None


def _newer_or_same(a: Path, b: Path) -> bool:
    """``a`` exists and was written no earlier than ``b``."""
    ta, tb = _mtime(a), _mtime(b)
    return ta is not None and tb is not None and ta >= tb


def read_manifest(matrix: Matrix) -> dict:
    path = matrix.prepared / "manifest.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise MatrixError(f"{path} not found: `prepared` must be a folder written by "
                          "`lesion prepare`", file=matrix.path, key="prepared") from None
    except ValueError as exc:
        raise MatrixError(f"{path} is not valid JSON ({exc})", file=matrix.path,
                          key="prepared") from None


_CKPT_CACHE: dict = {}


def _checkpoint_summary(path: Path) -> dict:
    """``epoch``, ``options`` and ``prepared_config_hash`` of a frcnn checkpoint, read through
    a memory map (the weights are not read), cached per file version."""
    import torch

    from deeplesion_cli.frcnn import checkpoint as ckpt

    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _CKPT_CACHE:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            state = ckpt.load(path)  # raises CheckpointError naming the file
        if not isinstance(state, dict) or state.get("format") != ckpt.FORMAT or \
                "options" not in state:
            state = ckpt.load(path)
        if len(_CKPT_CACHE) > 64:
            _CKPT_CACHE.clear()
        _CKPT_CACHE[key] = {"epoch": int(state["epoch"]), "options": dict(state["options"]),
                            "prepared_config_hash": state.get("prepared_config_hash")}
    return _CKPT_CACHE[key]


def _frcnn_state(matrix: Matrix, exp: Experiment, manifest: dict) -> ExperimentState:
    from deeplesion_cli.frcnn import checkpoint as ckpt
    from deeplesion_cli.frcnn.engine import RESUMABLE_OVERRIDES, TrainOptions
    from deeplesion_cli.frcnn.predict import resolve_checkpoint

    state = ExperimentState(exp)
    options = exp.options
    last = exp.run_dir / "last.pt"
    if not last.is_file():
        state.progress = f"0/{options.epochs} epochs"
        return state

    def fail(message: str, key: str | None = None) -> MatrixError:
        return MatrixError(message, file=matrix.path, experiment=exp.label, key=key)

    try:
        saved = _checkpoint_summary(last)
    except ckpt.CheckpointError as exc:
        raise fail(f"{exc}; delete {exp.run_dir} to train it again") from None
    trained_with = TrainOptions.from_json(saved["options"])
    for f in fields(TrainOptions):
        if f.name in RESUMABLE_OVERRIDES:
            continue
        ours, theirs = getattr(options, f.name), getattr(trained_with, f.name)
        if ours != theirs:
            raise fail(f"{ours!r} here, but {exp.run_dir} was trained with {theirs!r}; a run "
                       "keeps its options: restore the value, or delete (or rename) the run "
                       "folder to train it again", f.name)
    if saved["prepared_config_hash"] != manifest.get("config_hash"):
        raise fail(f"{exp.run_dir} was trained on another prepared folder (config_hash "
                   f"{saved['prepared_config_hash']!r}, {matrix.prepared}: "
                   f"{manifest.get('config_hash')!r}); delete the run folder to train it again",
                   "prepared")
    epoch = saved["epoch"]
    state.progress = f"{epoch}/{options.epochs} epochs"
    if epoch > options.epochs:
        raise fail(f"{options.epochs} here, but {exp.run_dir} has trained {epoch} epochs; set "
                   f"epochs = {epoch}, or delete the run folder to train it again", "epochs")
    if epoch < options.epochs:
        state.resume = True
        return state
    state.trained = True
    state.checkpoint = resolve_checkpoint(exp.run_dir)
    state.predictions_current = _newer_or_same(exp.predictions(matrix.split), state.checkpoint)
    return state


def _yolo_cfg_text(matrix: Matrix, exp: Experiment, manifest: dict,
                   max_batches: int | None = None) -> str:
    """What ``lesion cfg`` writes for the experiment (``max_batches``: instead of the file's)."""
    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.generate import generate_cfg

    options = exp.options
    anchors_px = None
    if options.anchors:
        try:
            anchors_px = json.loads(Path(options.anchors).read_text())["anchors"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MatrixError(f"cannot read anchors from {options.anchors} ({exc})",
                              file=matrix.path, experiment=exp.label, key="anchors") from None
    try:
        return generate_cfg(
            options.arch, classes=len(manifest["classes"]), size=parse_size(options.size),
            anchors_px=anchors_px, batch=options.batch, subdivisions=options.subdivisions,
            max_batches=max_batches if max_batches is not None else options.max_batches,
            burn_in=options.burn_in, n_train_images=manifest["counts"]["train"]["images"],
            small_objects=options.small_objects, mosaic=options.mosaic, flip=options.flip,
            learning_rate=options.lr)
    except (ValueError, KeyError) as exc:
        raise MatrixError(f"lesion cfg refuses these options: {exc}", file=matrix.path,
                          experiment=exp.label) from None


def _last_session(log_path: Path):
    """The darknet.log lines of its last darknet process (after the last ``$ command`` line)
    as a :class:`~deeplesion_cli.darknet.runner.RunOutcome`."""
    from deeplesion_cli.darknet.runner import RunOutcome

    outcome = RunOutcome(returncode=0, log_path=log_path)
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError:
        return outcome
    start = max((i for i, line in enumerate(lines) if line.startswith("$ ")), default=-1) + 1
    for line in lines[start:]:
        if line:
            outcome.lines += 1
            outcome.tail.append(line)
            outcome.record(line)
    return outcome


def _yolo_state(matrix: Matrix, exp: Experiment, manifest: dict) -> ExperimentState:
    from deeplesion_cli.darknet.cfg import parse_cfg
    from deeplesion_cli.darknet.runner import judge_training, weights_images_seen

    state = ExperimentState(exp, progress="not started")

    def fail(message: str, key: str | None = None) -> MatrixError:
        return MatrixError(message, file=matrix.path, experiment=exp.label, key=key)

    backup = exp.run_dir / "backup"
    final = yolo_final_weights(exp)
    resume_files = [backup / f"{exp.name}.backup", backup / f"{exp.name}_last.weights"]
    started = final.is_file() or any(p.is_file() for p in resume_files)
    cfg_exists = exp.cfg_path.is_file()
    state.cfg_current = False
    if not (cfg_exists or started):
        return state
    wanted = _yolo_cfg_text(matrix, exp, manifest)
    max_batches = parse_cfg(wanted).net.int("max_batches", 0)
    if cfg_exists:
        existing = exp.cfg_path.read_text(encoding="utf-8", errors="replace")
        state.cfg_current = existing == wanted
        if not state.cfg_current and started:
            net = parse_cfg(existing).net
            old_max = net.int("max_batches", 0) if net is not None else 0
            if not old_max or _yolo_cfg_text(matrix, exp, manifest, old_max) != existing:
                raise fail(f"{exp.cfg_path} differs from what these options write, and the run "
                           "has started; a run keeps its cfg (only max_batches may change, to "
                           "train longer): restore the options, or delete (or rename) the run "
                           "folder to train it again")
            seen = weights_images_seen(final) if final.is_file() else None
            done = seen // exp.options.batch if seen is not None else 0
            if done > max_batches:
                raise fail(f"the run has trained {done} iterations, more than max_batches = "
                           f"{max_batches}; delete the run folder to train it again",
                           "max_batches")
            state.resume = True
            state.progress = f"max_batches {old_max} -> {max_batches}"
            return state
    # here the cfg is the wanted one, or missing (then the cfg step writes the wanted one)
    if final.is_file():
        burn_in = parse_cfg(wanted).net.int("burn_in", 0)
        reasons = judge_training(_last_session(exp.run_dir / "darknet.log"), max_batches, final,
                                 burn_in)
        if reasons:
            raise fail(f"{exp.run_dir} holds final weights but its last darknet session failed ("
                       + "; ".join(reasons) + "); delete the run folder to train it again")
        state.trained = True
        state.progress = f"{max_batches}/{max_batches} iterations"
        state.checkpoint = final
        state.predictions_current = _newer_or_same(exp.predictions(matrix.split), final)
    elif started:
        state.resume = True
        state.progress = "interrupted"
    return state


def inspect(matrix: Matrix, exp: Experiment, manifest: dict | None = None) -> ExperimentState:
    """Where an experiment stands on disk (module docstring); :class:`MatrixError` when its run
    folder does not fit the file's options."""
    manifest = manifest if manifest is not None else read_manifest(matrix)
    if exp.backend == "frcnn":
        return _frcnn_state(matrix, exp, manifest)
    return _yolo_state(matrix, exp, manifest)


def _select(matrix: Matrix, only: Sequence[str]) -> list[Experiment]:
    if not only:
        return list(matrix.experiments)
    names = [e.name for e in matrix.experiments]
    for name in only:
        if name not in names:
            raise MatrixError(f"--only {name!r}: no such experiment; the file has "
                              f"{', '.join(names)}", file=matrix.path)
    return [e for e in matrix.experiments if e.name in only]


def _gt_path(matrix: Matrix) -> Path:
    return matrix.prepared / "coco" / f"{matrix.split}.json"


def _eval_current(matrix: Matrix, names: Sequence[str]) -> bool:
    """out/eval/metrics.json holds exactly ``names`` (in order), with the file's options and
    ground truth, and is newer than each of their predictions."""
    metrics = matrix.eval_dir / "metrics.json"
    try:
        document = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return False
    if list(document.get("runs", {})) != list(names):
        return False
    if document.get("options") != matrix.eval_options.to_json():
        return False
    if Path(document.get("ground_truth", "")).resolve() != _gt_path(matrix).resolve():
        return False
    return all(_newer_or_same(metrics, matrix.experiment(n).predictions(matrix.split))
               for n in names)


def _report_current(matrix: Matrix) -> bool:
    """out/report/index.md (build_report writes it last) is newer than out/eval/metrics.json
    and than the matrix file (whose [report] options it follows)."""
    index = matrix.report_dir / "index.md"
    return (_newer_or_same(index, matrix.eval_dir / "metrics.json")
            and _newer_or_same(index, matrix.path))


def _comparison_current(matrix: Matrix) -> bool:
    md = matrix.out / "comparison.md"
    return (_newer_or_same(md, matrix.eval_dir / "metrics.json")
            and _newer_or_same(md, matrix.path))


def matrix_line(matrix: Matrix, only: Sequence[str], cwd: Path) -> str:
    """``lesion matrix FILE [--only NAME ...]``: after the other lines it finds everything done
    and writes out/comparison.md."""
    words = ["lesion", "matrix", _shell_path(matrix.path.resolve(), cwd)]
    for name in only:
        words += ["--only", name]
    return _line(words)


def _experiment_steps(matrix: Matrix, state: ExperimentState, cwd: Path) -> list[Step]:
    exp = state.experiment
    steps = []
    if exp.backend == "frcnn":
        if state.trained:
            steps.append(Step(exp.name, "train", frcnn_train_line(matrix, exp, cwd), True,
                              f"finished {state.progress}"))
        elif state.resume:
            steps.append(Step(exp.name, "resume", frcnn_train_line(matrix, exp, cwd, True),
                              False, f"interrupted at {state.progress}"))
        else:
            steps.append(Step(exp.name, "train", frcnn_train_line(matrix, exp, cwd), False,
                              "not started"))
        predict = frcnn_predict_line(matrix, exp, cwd)
    else:
        steps.append(Step(exp.name, "cfg", yolo_cfg_line(matrix, exp, cwd), state.cfg_current,
                          "up to date" if state.cfg_current else
                          ("to write" if not exp.cfg_path.is_file() else "options changed")))
        if state.trained:
            steps.append(Step(exp.name, "train", yolo_train_line(matrix, exp, cwd), True,
                              f"finished {state.progress}"))
        elif state.resume:
            steps.append(Step(exp.name, "resume", yolo_train_line(matrix, exp, cwd, True),
                              False, state.progress))
        else:
            steps.append(Step(exp.name, "train", yolo_train_line(matrix, exp, cwd), False,
                              "not started"))
        predict = yolo_predict_line(matrix, exp, cwd)
    pred = exp.predictions(matrix.split)
    if state.predictions_current:
        note = f"{pred.name} is newer than {state.checkpoint.name}"
    elif state.trained and pred.exists():
        note = f"{pred.name} is older than {state.checkpoint.name}"
    else:
        note = "after training"
    steps.append(Step(exp.name, "predict", predict, state.predictions_current, note))
    return steps


def plan(matrix: Matrix, only: Sequence[str] = (), *, cwd: Path | None = None) -> list[Step]:
    """Every step of the matrix in order, done or not: per selected experiment (file order)
    [cfg,] train or resume, predict; then eval and report over the experiments that will be
    complete, and compare (``lesion matrix FILE``, which writes out/comparison.md). Shell paths are relative to ``cwd`` (default: the current folder) when inside it.
    Nothing is run or written."""
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    selected = {e.name for e in _select(matrix, only)}
    manifest = read_manifest(matrix)
    steps: list[Step] = []
    complete: list[str] = []
    pending = False
    for exp in matrix.experiments:
        if exp.name not in selected:
            try:
                state = inspect(matrix, exp, manifest)
            except MatrixError:  # not ours to run now: it stays out of the evaluation
                continue
        else:
            state = inspect(matrix, exp, manifest)
        if exp.name in selected:
            exp_steps = _experiment_steps(matrix, state, cwd)
            steps += exp_steps
            pending |= not all(s.done for s in exp_steps)
            complete.append(exp.name)
        elif state.complete:
            complete.append(exp.name)
    if not complete:
        return steps
    eval_done = not pending and _eval_current(matrix, complete)
    steps.append(Step(None, "eval", eval_line(matrix, complete, cwd), eval_done,
                      "up to date" if eval_done else f"{len(complete)} experiment(s)"))
    report_done = eval_done and _report_current(matrix)
    steps.append(Step(None, "report", report_line(matrix, complete, cwd), report_done,
                      "up to date" if report_done else "after the evaluation"))
    compare_done = report_done and _comparison_current(matrix)
    steps.append(Step(None, "compare", matrix_line(matrix, only, cwd), compare_done,
                      "up to date" if compare_done else "out/comparison.md"))
    return steps


def remaining_lines(matrix: Matrix, only: Sequence[str] = (), *,
                    cwd: Path | None = None) -> list[str]:
    """The shell lines of the steps still to do, in order (``lesion matrix --print``)."""
    return [s.line for s in plan(matrix, only, cwd=cwd) if not s.done]


# ------------------------------------------------------------------------------------ running

def _preflight(matrix: Matrix, steps: list[Step]) -> None:
    """Inputs every remaining step needs, checked before the first one runs."""
    from deeplesion_cli.darknet import runner
    from deeplesion_cli.darknet.generate import ARCHS

    for step in steps:
        if step.done or step.experiment is None:
            continue
        exp = matrix.experiment(step.experiment)

        def fail(message: str, key: str | None = None) -> MatrixError:
            return MatrixError(message, file=matrix.path, experiment=exp.label, key=key)

        options = exp.options
        needed = []
        if exp.backend == "frcnn" and step.kind == "train":
            needed = [k for k in ("weights", "anchors") if getattr(options, k)]
        elif exp.backend == "yolo" and step.kind == "cfg":
            needed = ["anchors"] if options.anchors else []
        elif exp.backend == "yolo" and step.kind == "train":
            needed = ["weights"] if options.weights else []
        for key in needed:
            if not Path(getattr(options, key)).is_file():
                raise fail(f"{getattr(options, key)}: no such file", key)
        if exp.backend == "yolo" and step.kind in ("train", "resume", "predict"):
            try:
                binary = runner.find_darknet(options.darknet)
                fork = runner.detect_fork(binary)
            except runner.DarknetError as exc:
                raise fail(str(exc), "darknet") from None
            if fork == "pjreddie" and not ARCHS[options.arch].pjreddie:
                raise fail(f"{options.arch} needs AlexeyAB's (or hank-ai's) darknet; {binary} "
                           "is pjreddie's, which would silently build another network: set "
                           "darknet = \"/path/to/darknet\"", "arch")
            if fork == "pjreddie" and options.map and step.kind != "predict":
                raise fail(f"{binary} is pjreddie's darknet, which has no -map", "map")


def _run_step(matrix: Matrix, step: Step, show_progress: bool) -> None:
    exp = matrix.experiment(step.experiment)
    options = exp.options
    split, prepared = matrix.split, matrix.prepared
    if exp.backend == "frcnn":
        from deeplesion_cli.frcnn import engine
        from deeplesion_cli.frcnn.predict import predict

        if step.kind == "train":
            engine.train(prepared, exp.run_dir, options, show_progress=show_progress)
        elif step.kind == "resume":
            overrides = {k: getattr(options, k) for k in sorted(engine.RESUMABLE_OVERRIDES)}
            engine.train(prepared, exp.run_dir, resume=True, overrides=overrides,
                         show_progress=show_progress)
        elif step.kind == "predict":
            predict(exp.run_dir, prepared, exp.predictions(split), split=split,
                    workers=options.workers, device=options.device, show_progress=show_progress)
        return
    from deeplesion_cli.darknet import runner

    if step.kind == "cfg":
        exp.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(exp.cfg_path, _yolo_cfg_text(matrix, exp, read_manifest(matrix)))
    elif step.kind in ("train", "resume"):
        resume = step.kind == "resume"
        runner.train(prepared, exp.cfg_path, exp.run_dir,
                     weights=None if resume else options.weights, darknet=options.darknet,
                     gpus=options.gpus, map=options.map, resume=resume,
                     show_progress=show_progress)
    elif step.kind == "predict":
        runner.predict(prepared, exp.cfg_path, yolo_final_weights(exp), split=split,
                       out_json=exp.predictions(split), darknet=options.darknet,
                       thresh=options.thresh, show_progress=show_progress)


def evaluate(matrix: Matrix, names: Sequence[str], show_progress: bool = False) -> dict:
    """``lesion eval PREPARED --split S --pred NAME=out/NAME/S.json ... --out out/eval`` (same
    readers, options and writer); returns the metrics document."""
    from deeplesion_cli.evaluation.data import load_ground_truth
    from deeplesion_cli.evaluation.evaluate import evaluate_runs
    from deeplesion_cli.evaluation.outputs import resolve_ground_truth, write_outputs
    from deeplesion_cli.formats.detections import read_detections, read_names

    gt_path, names_path = resolve_ground_truth(matrix.prepared, matrix.split)
    gt = load_ground_truth(gt_path)
    class_names = read_names(names_path) if names_path else None
    runs = {name: read_detections(matrix.experiment(name).predictions(matrix.split), gt,
                                  fmt=None, names=class_names) for name in names}
    document = evaluate_runs(gt, runs, matrix.eval_options, ground_truth_path=str(gt_path),
                             show_progress=show_progress)
    write_outputs(document, matrix.eval_dir)
    return document


def build_matrix_report(matrix: Matrix, names: Sequence[str]):
    """``build_report`` over the run folders, out/eval and the prepared folder."""
    from deeplesion_cli.report.build import build_report

    result = build_report(runs=[matrix.experiment(n).run_dir for n in names],
                          evals=[matrix.eval_dir], prepared=matrix.prepared,
                          out_dir=matrix.report_dir, pdf=matrix.report.pdf,
                          images=matrix.report.images, n_overlay=matrix.report.n_overlay)
    return result


def run_matrix(path, *, only: Sequence[str] = (), show_progress: bool = True,
               log: Callable[[str], None] = print) -> MatrixResult:
    """Run what remains of the matrix file ``path`` (module docstring) and return the result;
    ``log`` receives one line per step (run, skipped or failed)."""
    matrix = path if isinstance(path, Matrix) else load_matrix(path)
    steps = plan(matrix, only)
    _preflight(matrix, steps)
    result = MatrixResult(matrix, steps)
    matrix.out.mkdir(parents=True, exist_ok=True)
    todo = sum(not s.done for s in steps if s.experiment is not None)
    count = 0
    for step in steps:
        if step.experiment is None:
            continue
        name = step.experiment
        if step.done:
            result.skipped.append(step)
            log(f"[{name}] skipped {step.kind}: {step.note}")
            continue
        if name in result.failures:
            log(f"[{name}] skipped {step.kind}: an earlier step failed")
            continue
        count += 1
        log(f"[{name}] {step.kind} ({count}/{todo}): {step.line}")
        try:
            _run_step(matrix, step, show_progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one experiment's failure must not stop the others
            message = f"{step.kind} failed: {_describe(exc)}"
            result.failures[name] = message
            log(f"[{name}] {message}")
            continue
        result.ran.append(step)

    # what is complete now (this run's steps done), in file order
    manifest = read_manifest(matrix)
    states = {}
    selected = {s.experiment for s in steps if s.experiment is not None}
    for exp in matrix.experiments:
        try:
            states[exp.name] = inspect(matrix, exp, manifest)
        except MatrixError as exc:
            if exp.name not in selected:
                result.warnings.append(f"left out of the evaluation: {exc}")
                log(result.warnings[-1])
            elif exp.name not in result.failures:
                result.failures[exp.name] = str(exc)
    complete = [n for n, s in states.items() if s.complete]
    eval_step = next((s for s in steps if s.kind == "eval"), None)
    report_step = next((s for s in steps if s.kind == "report"), None)
    cwd = Path.cwd()
    if not complete:
        log("nothing to evaluate yet: no experiment has finished training and predictions")
    elif _eval_current(matrix, complete):
        if eval_step is not None:
            result.skipped.append(eval_step)
        log(f"skipped eval: {matrix.eval_dir / 'metrics.json'} is up to date")
    else:
        step = Step(None, "eval", eval_line(matrix, complete, cwd), False,
                    f"{len(complete)} experiment(s)")
        log(f"eval ({len(complete)} experiments): {step.line}")
        try:
            evaluate(matrix, complete, show_progress=show_progress)
            result.ran.append(step)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            result.failures["eval"] = f"eval failed: {_describe(exc)}"
            log(result.failures["eval"])
    if complete and _eval_current(matrix, complete):
        result.evaluated = complete
        result.metrics_json = matrix.eval_dir / "metrics.json"
        if _report_current(matrix):
            if report_step is not None:
                result.skipped.append(report_step)
            log(f"skipped report: {matrix.report_dir} is up to date")
        else:
            step = Step(None, "report", report_line(matrix, complete, cwd), False)
            log(f"report: {step.line}")
            try:
                result.report = build_matrix_report(matrix, complete)
                result.warnings += list(getattr(result.report, "warnings", []) or [])
                result.ran.append(step)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                result.failures["report"] = f"report failed: {_describe(exc)}"
                log(result.failures["report"])
    document = None
    if result.metrics_json is not None:
        document = json.loads(result.metrics_json.read_text())
    result.rows = comparison_rows(matrix, states, document, result.failures)
    result.comparison_md, result.comparison_csv = write_comparison(matrix, result.rows,
                                                                   document)
    if result.evaluated and _report_current(matrix):
        result.report_index = matrix.report_dir / "index.md"
    return result


def _describe(exc: BaseException) -> str:
    """The toolkit's own errors speak for themselves; anything else gets its type name."""
    if type(exc).__module__.startswith("deeplesion_cli") and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------- comparison

#: comparison columns: (header, key in a row, path into a run's metrics block)
COMPARISON_METRICS = (
    ("COCO AP50", "ap50", ("coco", "AP50")),
    ("COCO AP", "ap", ("coco", "AP")),
    ("FROC mean@0.5-4", "froc_mean", ("froc", "mean_sens_0.5_4")),
    ("FROC sens@4", "sens4", ("froc", "sens", 3)),
)


def _metric(block: dict, where: tuple):
    value = block
    for key in where:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def fmt_metric(value) -> str:
    """As the evaluation tables print numbers: 4 decimals, "–" when undefined."""
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return "-1" if value == -1 else f"{value:.4f}"


def _display_options(exp: Experiment) -> dict:
    """The options that decide an experiment's result, as shown in the comparison."""
    options = exp.options
    if exp.backend == "frcnn":
        shown = {k: getattr(options, k) for k in FRCNN_OPTIONS if k not in _NOT_COMPARED}
        shown["lr"] = options.resolved_lr()
    else:
        shown = {k: getattr(options, k) for k in YOLO_OPTIONS if k not in _NOT_COMPARED}
    for key in ("weights", "anchors"):
        if shown.get(key):
            shown[key] = Path(shown[key]).name
    return shown


def _fmt_option(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _varied_and_shared(matrix: Matrix) -> tuple[dict, dict]:
    """Per backend: the option names that differ between its experiments, and the shared
    options (name -> value)."""
    varied, shared = {}, {}
    for backend in BACKENDS:
        shown = [_display_options(e) for e in matrix.experiments if e.backend == backend]
        if not shown:
            continue
        keys = list(shown[0])
        varied[backend] = [k for k in keys if k == "arch" or len({repr(s[k]) for s in shown}) > 1]
        shared[backend] = {k: shown[0][k] for k in keys
                           if k not in varied[backend] and shown[0][k] not in (None, False)}
    return varied, shared


def comparison_rows(matrix: Matrix, states: dict, document: dict | None,
                    failures: dict | None = None) -> list[dict]:
    """One dict per experiment (file order): experiment, backend, options (the ones that vary
    between experiments of its backend, as text), status, and the metrics of
    :data:`COMPARISON_METRICS` (floats; None without an evaluation)."""
    failures = failures or {}
    varied, _ = _varied_and_shared(matrix)
    runs = (document or {}).get("runs", {})
    rows = []
    for exp in matrix.experiments:
        shown = _display_options(exp)
        options = " ".join(f"{k}={_fmt_option(shown[k])}" for k in varied[exp.backend]
                           if shown[k] is not None)
        state = states.get(exp.name)
        if exp.name in runs:
            status = "evaluated"
        elif exp.name in failures:
            status = "failed"
        elif state is None:
            status = "unknown"
        elif state.trained:
            status = "trained, not predicted" if not state.predictions_current else "predicted"
        elif state.resume:
            status = f"interrupted ({state.progress})"
        else:
            status = "not trained"
        row = {"experiment": exp.name, "backend": exp.backend, "options": options,
               "status": status}
        for _, key, where in COMPARISON_METRICS:
            row[key] = _metric(runs[exp.name], where) if exp.name in runs else None
        rows.append(row)
    return rows


def comparison_markdown(matrix: Matrix, rows: list[dict], document: dict | None) -> str:
    from deeplesion_cli.report.tables import markdown

    _, shared = _varied_and_shared(matrix)
    parts = [f"# Experiment matrix `{matrix.path.name}`\n"]
    where = (f"Prepared folder `{matrix.prepared}`, split `{matrix.split}`")
    if document is not None:
        first = next(iter(document["runs"].values()))
        where += (f" ({first['n_images']} images, {first['n_ground_truth']} boxes); metrics "
                  f"from `{matrix.eval_dir / 'metrics.json'}` (definitions: docs/metrics.md)")
    parts.append(where + ".\n")
    for backend, options in shared.items():
        if options:
            text = ", ".join(f"{k}={_fmt_option(v)}" for k, v in options.items())
            parts.append(f"Shared {backend} options: {text}.\n")
    header = ["experiment", "backend", "options", "status"] + [h for h, _, _ in
                                                               COMPARISON_METRICS]
    table = [[r["experiment"], r["backend"], r["options"], r["status"]]
             + [fmt_metric(r[key]) for _, key, _ in COMPARISON_METRICS] for r in rows]
    parts.append(markdown(header, table))
    return "\n".join(parts)


def write_comparison(matrix: Matrix, rows: list[dict], document: dict | None
                     ) -> tuple[Path, Path]:
    """out/comparison.md and out/comparison.csv (full-precision numbers), atomically."""
    md = matrix.out / "comparison.md"
    atomic.write_text(md, comparison_markdown(matrix, rows, document))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["experiment"],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    csv_path = matrix.out / "comparison.csv"
    atomic.write_text(csv_path, buffer.getvalue())
    return md, csv_path
