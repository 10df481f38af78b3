"""Reading and validating a matrix TOML file into a :class:`~deeplesion_cli.matrix.model.Matrix`.

Validation is strict: an unknown key (with a "did you mean"), an unknown backend, a duplicate name
(also one differing only by case), a name that is not a safe folder name, a value of the wrong
type or out of range raises :class:`~deeplesion_cli.matrix.model.MatrixError` naming the file,
the experiment (name and position) and the key. Each option is checked by its one declaration
(:mod:`deeplesion_cli.matrix.options`); what a single declaration cannot say (the learning rate
of an optimizer, batch a multiple of subdivisions, what ``lesion cfg`` refuses) is checked here.
Files named by options (weights, anchors) are checked when a step needs them, so a file can be
validated and printed on a machine that lacks them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from deeplesion_cli.matrix.model import (BACKENDS, NAME_RE, RESERVED_NAMES, TOP_KEYS, Experiment,
                                         Matrix, MatrixError)
from deeplesion_cli.matrix.options import (ReportOptions, SchedulerOptions, YoloOptions,
                                           eval_keys, experiment_keys, report_keys,
                                           scheduler_keys, task_keys, toml_value, unknown_key)
from deeplesion_cli.prepared import SPLITS
from deeplesion_cli.spec.core import Option, Spec, type_name

#: the file's own scalar keys (paths relative to the file's folder)
FILE_KEYS = Spec("matrix", [Option("prepared", "path"), Option("out", "path", "matrix"),
                            Option("split", "str", "test", choices=SPLITS)])


def load_matrix(path) -> Matrix:
    """Read and validate a matrix TOML file (package docstring); nothing is run or read besides
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


def _value(option: Option, value, base: Path, fail: Callable[..., MatrixError], key: str):
    try:
        return toml_value(option, value, base)
    except ValueError as exc:
        raise fail(str(exc), key) from None


def _check_table(table, known, where: Callable[..., MatrixError], what: str) -> dict:
    if not isinstance(table, dict):
        raise where(f"expected a table, got {type_name(table)}")
    for key in table:
        if key not in known:
            raise where(unknown_key(key, known, what), key=key)
    return table


def _table_values(table: dict, known: Spec, fail: Callable[..., MatrixError], base: Path) -> dict:
    return {k: _value(known[k], v, base, fail, k) for k, v in table.items()}


def matrix_from_dict(doc: dict, path) -> Matrix:
    """Validate a parsed matrix file (``path``: the file, for messages and relative paths)."""
    from deeplesion_cli.evaluation.evaluate import EvalOptions

    path = Path(path)
    base = path.resolve().parent

    def top(message: str, key: str | None = None) -> MatrixError:
        return MatrixError(message, file=path, key=key)

    for key in doc:
        if key not in TOP_KEYS:
            raise top(unknown_key(key, TOP_KEYS, "top-level key"), key)
    if "prepared" not in doc:
        raise top("missing: the `lesion prepare` folder the experiments train on",
                  "prepared")
    scalars = {o.name: _value(o, doc.get(o.name, o.default), base, top, o.name)
               for o in FILE_KEYS}
    prepared, out, split = Path(scalars["prepared"]), Path(scalars["out"]), scalars["split"]

    def section(name: str):
        def fail(message: str, key: str | None = None) -> MatrixError:
            return MatrixError(message, file=path, key=f"{name}.{key}" if key else name)
        return fail

    defaults = _check_table(doc.get("defaults", {}), BACKENDS, section("defaults"), "backend")
    shared: dict[str, dict] = {}
    for backend, table in defaults.items():
        known = experiment_keys(backend)
        fail_in = section(f"defaults.{backend}")
        _check_table(table, known, fail_in, f"{backend} option")
        shared[backend] = _table_values(table, known, fail_in, base)

    eval_table = _check_table(doc.get("eval", {}), eval_keys(), section("eval"), "eval option")
    eval_options = EvalOptions(**_table_values(eval_table, eval_keys(), section("eval"), base))
    report_table = _check_table(doc.get("report", {}), report_keys(), section("report"),
                                "report option")
    report = ReportOptions(**_table_values(report_table, report_keys(), section("report"), base))
    scheduler_table = _check_table(doc.get("scheduler", {}), scheduler_keys(),
                                   section("scheduler"), "scheduler option")
    scheduler = SchedulerOptions(**_table_values(scheduler_table, scheduler_keys(),
                                                 section("scheduler"), base))

    curves = _curves(doc.get("curves", []), top)
    from deeplesion_cli.matrix import reported as reported_figures

    top_reported = reported_figures.check_table(
        doc.get("reported", {}), reported_figures.TOP_KEYS,
        lambda message, key=None: top(message, f"reported.{key}" if key else "reported"))

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
        known = experiment_keys(backend)
        for key in item:
            if key not in ("name", "backend", "reported") and key not in known:
                raise fail(unknown_key(key, known, f"{backend} option"), key)
        reported = reported_figures.check_table(
            item.get("reported", {}), reported_figures.EXPERIMENT_KEYS,
            lambda message, key=None, _fail=fail: _fail(
                message, f"reported.{key}" if key else "reported"))
        given = dict(shared.get(backend, {}))
        given.update(_table_values({k: v for k, v in item.items()
                                    if k not in ("name", "backend", "reported")},
                                   known, fail, base))
        resources = {k: given.pop(k) for k in task_keys().names() if k in given}
        if backend == "frcnn":
            options = _frcnn_options(given, fail)
        else:
            options = _yolo_options(given, fail)
        seen[name.lower()] = len(experiments)
        experiments.append(Experiment(name, backend, index, given, options, out / name,
                                      resources, reported))
    matrix = Matrix(path, prepared, out, split, tuple(experiments), eval_options, report,
                    scheduler, curves, top_reported)
    for exp in experiments:
        _check_resources(matrix, exp)
    return matrix


def _curves(value, fail) -> tuple[str, ...]:
    """``curves = ["train", "test"]``: the splits every saved checkpoint is scored on."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"expected a list of splits ({', '.join(SPLITS)}), got {value!r}", "curves")
    for split in value:
        if split not in SPLITS:
            raise fail(f"{split!r} is not a split ({', '.join(SPLITS)})", "curves")
    if len(set(value)) != len(value):
        raise fail(f"a split is listed twice: {value!r}", "curves")
    return tuple(value)


def _check_resources(matrix: Matrix, exp: Experiment) -> None:
    """What a training task's resources cannot be for its backend: darknet trains on one node,
    and its ``-gpus`` list (``gpus``) names the GPUs of the task."""
    if exp.backend != "yolo":
        return
    task = matrix.resources(exp)

    def fail(message: str, key: str) -> MatrixError:
        return MatrixError(message, file=matrix.path, experiment=exp.label, key=key)

    if task["nodes"] > 1:
        raise fail(f"nodes = {task['nodes']}: darknet trains on one node (its -gpus lists the "
                   "GPUs of that node); only frcnn experiments run on several nodes (torchrun): "
                   "set nodes = 1 here or in [defaults.yolo]",
                   "nodes")
    gpus = exp.options.gpus
    if gpus is not None and len(gpus.split(",")) > task["gpus_per_node"]:
        raise fail(f"gpus = {gpus!r} lists {len(gpus.split(','))} GPU(s) but the task asks for "
                   f"gpus_per_node = {task['gpus_per_node']}", "gpus_per_node")


def _frcnn_options(given: dict, fail):
    """TrainOptions of the experiment; each value was checked by its declaration, this checks
    what spans options (:meth:`TrainOptions.check`)."""
    from deeplesion_cli.frcnn import options as frcnn_options

    options = frcnn_options.TrainOptions(**given)
    try:
        options.check()
    except frcnn_options.OptionError as exc:
        raise fail(str(exc), exc.option) from None
    return options


def _yolo_options(given: dict, fail) -> YoloOptions:
    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.generate import generate_cfg
    from deeplesion_cli.spec.darknet import ARCHS

    if given.get("arch") is None:
        raise fail(f"missing: the network to write ({', '.join(ARCHS)})", "arch")
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
