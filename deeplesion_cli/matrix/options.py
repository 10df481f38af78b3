"""Which options each table of a matrix file takes, and how a TOML value becomes an option value.

Every option comes from the one declaration in :mod:`deeplesion_cli.spec`:

* a ``frcnn`` experiment takes the options of ``lesion train frcnn`` that have a flag
  (:data:`deeplesion_cli.spec.frcnn.TRAIN_FRCNN`, ``cli=True``; an option without a flag is not
  accepted: a printed ``lesion train frcnn`` line could not carry it);
* a ``yolo`` experiment those of ``lesion cfg``, ``lesion train yolo`` and ``lesion predict yolo``
  (:data:`deeplesion_cli.spec.darknet.YOLO_EXPERIMENT`);
* ``[eval]`` those of ``lesion eval`` (:data:`deeplesion_cli.spec.evaluation.EVAL`) and
  ``[report]`` those of ``lesion report`` (:data:`~deeplesion_cli.spec.evaluation.REPORT`);
* ``[scheduler]`` the queue's (:data:`deeplesion_cli.spec.scheduler.SCHEDULER`), and an
  experiment (or ``[defaults.BACKEND]``) also its training task's resources
  (:data:`~deeplesion_cli.spec.scheduler.TASK`: nodes, gpus_per_node, cpus_per_task, mem, time).

The spec modules are read through their module attributes on every call (never copied at import),
so an option declared there is accepted here, printed by ``lesion matrix --print`` and shown in
the comparison without a change to this package. Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from deeplesion_cli.spec import darknet as darknet_spec
from deeplesion_cli.spec import evaluation as eval_spec
from deeplesion_cli.spec import frcnn as frcnn_spec
from deeplesion_cli.spec import scheduler as scheduler_spec
from deeplesion_cli.spec.core import Option, Spec, number_word


# ---------------------------------------------------------------------------- accepted options

def frcnn_spec_now() -> Spec:
    """``lesion train frcnn``'s spec as declared now
    (:data:`~deeplesion_cli.spec.frcnn.TRAIN_FRCNN`, read at each call)."""
    return frcnn_spec.TRAIN_FRCNN


def frcnn_keys() -> Spec:
    """The keys of a frcnn experiment: ``lesion train frcnn``'s options that have a flag, in
    ``--help`` order."""
    spec = frcnn_spec_now()
    return Spec(spec.command, [o for o in spec if o.cli])


def yolo_keys() -> Spec:
    """The keys of a yolo experiment: ``lesion cfg``'s, then ``lesion train yolo``'s, then
    ``lesion predict yolo``'s thresh, predict_size, darknet_map and map_iou
    (:data:`~deeplesion_cli.spec.darknet.YOLO_EXPERIMENT`)."""
    return Spec("yolo experiment", [spec[name] for name, spec in
                                    darknet_spec.YOLO_EXPERIMENT.items()])


def eval_keys() -> Spec:
    return eval_spec.EVAL


def report_keys() -> Spec:
    return eval_spec.REPORT


def backend_keys(backend: str) -> Spec:
    return frcnn_keys() if backend == "frcnn" else yolo_keys()


def scheduler_keys() -> Spec:
    """The ``[scheduler]`` table's keys (:data:`~deeplesion_cli.spec.scheduler.SCHEDULER`)."""
    return scheduler_spec.SCHEDULER


def task_keys() -> Spec:
    """The training-task resources an experiment or ``[defaults.BACKEND]`` may set beside its
    backend's options (:data:`~deeplesion_cli.spec.scheduler.TASK`)."""
    return scheduler_spec.TASK


def experiment_keys(backend: str) -> Spec:
    """Every key of an experiment of ``backend`` (or of its defaults table) but name and
    backend: its backend's options, then the training-task resources."""
    return Spec(f"{backend} experiment", [*backend_keys(backend), *task_keys()])


def unknown_key(key: str, known, what: str) -> str:
    """The "unknown key (did you mean ...)" message of a key outside ``known`` (a :class:`Spec`,
    or names of a file's structure such as its top-level keys), worded as every command words
    it (:meth:`Spec.unknown`)."""
    spec = known if isinstance(known, Spec) else Spec(what, [Option(k, "str") for k in known])
    return spec.unknown(key, what)


# ------------------------------------------------------------------------------- TOML values

def toml_value(option: Option, value, base: Path):
    """``value`` from the TOML file, normalised and checked by its declaration
    (:meth:`Option.from_toml`; relative paths from the file's folder ``base``); ValueError with
    the reason otherwise. A number outside a range bounded on both sides is told as an interval
    (``expected 0..1``, ``must be in [0, 1)``), as the matrix has always said it."""
    try:
        return option.from_toml(value, base)
    except ValueError as exc:
        raise ValueError(_interval_problem(option, value) or str(exc)) from None


def _interval_problem(option: Option, value) -> str | None:
    if option.kind not in ("int", "float") or option.low is None or option.high is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if option.kind == "float":
        value = float(value)
    elif not isinstance(value, int):
        return None
    if option.problem(value) is None:
        return None
    low, high = number_word(option.low), number_word(option.high)
    if not (option.low_open or option.high_open):
        return f"expected {low}..{high}, got {number_word(value)}"
    return (f"must be in {'(' if option.low_open else '['}{low}, {high}"
            f"{')' if option.high_open else ']'} (got {number_word(value)})")


# ------------------------------------------------------------------------------ option values

class OptionValues:
    """Values of declared options, read as attributes (``options.size``); an option not given
    takes its declaration's default. Immutable and compared by value, like a frozen dataclass;
    its fields are whatever :meth:`declared` returns now, so a new declaration is a new field."""

    __slots__ = ("_values",)

    @classmethod
    def declared(cls) -> Spec:  # pragma: no cover - every subclass says
        raise NotImplementedError

    def __init__(self, **given):
        declared = self.declared()
        unknown = [k for k in given if k not in declared]
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)}")
        object.__setattr__(self, "_values",
                           {o.name: given.get(o.name, o.default) for o in declared})

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no option {name!r}") from None

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._values == self._values

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._values.items())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({inner})"

    def as_dict(self) -> dict:
        """Option name -> value, in declaration order."""
        return dict(self._values)


class YoloOptions(OptionValues):
    """A yolo experiment's options (:func:`yolo_keys`): paths absolute, ``size`` as ``"416"`` or
    ``"608x416"`` (pixels), ``gpus`` as ``"0,1"``."""

    __slots__ = ()

    @classmethod
    def declared(cls) -> Spec:
        return yolo_keys()


class ReportOptions(OptionValues):
    """The ``[report]`` table's options (:func:`report_keys`)."""

    __slots__ = ()

    @classmethod
    def declared(cls) -> Spec:
        return report_keys()


class SchedulerOptions(OptionValues):
    """The ``[scheduler]`` table's options (:func:`scheduler_keys`)."""

    __slots__ = ()

    @classmethod
    def declared(cls) -> Spec:
        return scheduler_keys()


def option_values(options, spec: Spec) -> dict:
    """``spec``'s option name -> its value in ``options`` (a TrainOptions, EvalOptions or
    :class:`OptionValues`), for :meth:`Spec.words`."""
    return {o.name: getattr(options, o.name) for o in spec if hasattr(options, o.name)}
