"""What a loaded matrix is: :class:`Matrix`, its :class:`Experiment` rows, the :class:`Step` of a
plan, an experiment's :class:`ExperimentState` on disk, the :class:`MatrixResult` of a run, and
:class:`MatrixError`. Also the run folder layout of ``out/`` (names, predictions, darknet's final
weights). Torch-free; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.matrix.options import ReportOptions, SchedulerOptions

BACKENDS = ("frcnn", "yolo")
#: run folder names: a letter or digit, then letters, digits, ``-`` and ``_`` (no dots: darknet
#: names weights after the cfg's name up to its first dot; no spaces: darknet .data files)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: folders of ``out/`` that are not run folders
RESERVED_NAMES = ("eval", "report", "curves")
TOP_KEYS = ("prepared", "out", "split", "curves", "defaults", "eval", "report", "scheduler",
            "reported", "experiment")


class MatrixError(LesionInputError):
    """A matrix file or run folder that cannot be used; names the file, experiment and key.
    (A :class:`ValueError`, as :class:`~deeplesion_cli.errors.LesionInputError` is.)"""

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


@dataclass(frozen=True)
class Experiment:
    name: str
    backend: str                       # frcnn | yolo
    index: int                         # 1-based position in the file
    given: dict                        # options as set in the file (defaults merged), normalised
    options: object                    # TrainOptions (frcnn) or YoloOptions (yolo)
    run_dir: Path
    #: its training task's resources as set in the file (spec.scheduler.TASK names; defaults
    #: merged), apart from ``given``: they shape the queue, not the run
    resources: dict = field(default_factory=dict)
    #: figures a publication reported for this experiment (``reported`` table; matrix.reported
    #: names the keys), shown beside ours in comparison.md; not options
    reported: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name!r} (#{self.index})"

    @property
    def cfg_path(self) -> Path:
        return self.run_dir / f"{self.name}.cfg"

    def predictions(self, split: str) -> Path:
        """COCO results json of ``split`` (boxes xywh in pixels of the prepared images)."""
        return self.run_dir / f"{split}.json"


def yolo_final_weights(exp: Experiment) -> Path:
    """Where darknet writes the weights of the finished run
    (``backup/<cfg name>_final.weights``)."""
    return exp.run_dir / "backup" / f"{exp.name}_final.weights"


@dataclass(frozen=True)
class Matrix:
    path: Path
    prepared: Path
    out: Path
    split: str
    experiments: tuple[Experiment, ...]
    eval_options: object               # deeplesion_cli.evaluation.evaluate.EvalOptions
    report: ReportOptions
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)   # [scheduler]
    #: splits on which every saved checkpoint is scored (``curves``; empty: none)
    curves: tuple[str, ...] = ()
    #: the top-level ``[reported]`` table: where the experiments' reported figures come from
    reported: dict = field(default_factory=dict)

    @property
    def eval_dir(self) -> Path:
        return self.out / "eval"

    @property
    def curves_dir(self) -> Path:
        """``lesion eval --checkpoint every --out``: checkpoints.csv/json of every run."""
        return self.out / "curves"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    def experiment(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)

    def resources(self, exp: Experiment) -> dict:
        """``exp``'s training task: every :data:`~deeplesion_cli.spec.scheduler.TASK` option,
        from the experiment (or its backend's defaults), else ``[scheduler]``, else the
        declared default."""
        from deeplesion_cli.spec.scheduler import TASK

        table = self.scheduler.as_dict()
        return {name: exp.resources.get(name, table[name]) for name in TASK.names()}


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
