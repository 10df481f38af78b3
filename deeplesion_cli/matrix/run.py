"""Running a matrix: :func:`run_matrix` runs what :func:`~deeplesion_cli.matrix.plan.plan`
says remains, one experiment after the other (a failed step is recorded, the other experiments go
on), then evaluates every complete experiment together into ``out/eval/``, builds the report and
writes the comparison. Inputs each remaining step needs are checked before the first one starts
(:func:`_preflight`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from deeplesion_cli import atomic
from deeplesion_cli.errors import LesionInterrupted
from deeplesion_cli.lock import folder_lock
from deeplesion_cli.spec import darknet as darknet_spec
from deeplesion_cli.spec import evaluation as eval_spec
from deeplesion_cli.matrix.compare import comparison_rows, write_comparison
from deeplesion_cli.matrix.lines import (curves_line, curves_values, eval_line, report_evals,
                                         report_line, torchrun_prefix)
from deeplesion_cli.matrix.load import load_matrix
from deeplesion_cli.matrix.model import Matrix, MatrixError, MatrixResult, Step, yolo_final_weights
from deeplesion_cli.matrix.plan import plan
from deeplesion_cli.matrix.options import option_values
from deeplesion_cli.matrix.state import (curves_current, eval_current, inspect, prepared_folder,
                                         report_current, yolo_cfg_text)


def _preflight(matrix: Matrix, steps: list[Step]) -> list[str]:
    """Inputs every remaining step needs, checked before the first one runs; returns warnings
    (what a step will leave out, as its command would say)."""
    from deeplesion_cli.darknet.binary import detect_fork, find_darknet
    from deeplesion_cli.darknet.errors import DarknetError
    from deeplesion_cli.darknet.generate import ARCHS

    warnings = []
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
                binary = find_darknet(options.darknet)
                fork = detect_fork(binary)
            except DarknetError as exc:
                raise fail(str(exc), "darknet") from None
            if fork == "pjreddie" and not ARCHS[options.arch].pjreddie:
                raise fail(f"{options.arch} needs AlexeyAB's (or hank-ai's) darknet; {binary} "
                           "is pjreddie's, which would silently build another network: set "
                           "darknet = \"/path/to/darknet\"", "arch")
            if fork == "pjreddie" and options.map and step.kind != "predict":
                raise fail(f"{binary} is pjreddie's darknet, which has no -map", "map")
            if fork == "pjreddie" and options.save_every and step.kind != "predict":
                raise fail(f"{binary} is pjreddie's darknet, which saves weights on its own "
                           "schedule (every 100 iterations up to 1,000, then every 10,000)",
                           "save_every")
            if fork == "pjreddie" and options.darknet_map and step.kind == "predict":
                warnings.append(f"{exp.name}: darknet_map = true, but {binary} is pjreddie's "
                                "darknet, which has no `detector map`: predicted without it "
                                "(comparison.md shows no darknet map for it)")
    return warnings


def _run_step(matrix: Matrix, step: Step, show_progress: bool) -> None:
    """One experiment step, by the function its printed line's command calls
    (:mod:`deeplesion_cli.steps`)."""
    from deeplesion_cli import steps as shared

    exp = matrix.experiment(step.experiment)
    options = exp.options
    split, prepared = matrix.split, matrix.prepared
    if exp.backend == "frcnn":
        if step.kind == "train":
            shared.train_frcnn(prepared, exp.run_dir, options, show_progress=show_progress)
        elif step.kind == "resume":
            shared.train_frcnn(prepared, exp.run_dir, resume=True,
                               overrides=shared.resume_overrides(options),
                               show_progress=show_progress)
        elif step.kind == "predict":
            shared.predict_frcnn(exp.run_dir, prepared, exp.predictions(split),
                                 {"split": split, "workers": options.workers,
                                  "device": options.device}, show_progress=show_progress)
        return
    values = options.as_dict()
    if step.kind == "cfg":
        with folder_lock(exp.run_dir, "lesion matrix"):
            atomic.write_text(exp.cfg_path, yolo_cfg_text(matrix, exp, prepared_folder(matrix)))
    elif step.kind in ("train", "resume"):
        shared.train_yolo(prepared, exp.cfg_path, exp.run_dir,
                          {k: v for k, v in values.items() if k in darknet_spec.TRAIN_YOLO},
                          resume=step.kind == "resume", show_progress=show_progress)
    elif step.kind == "predict":
        predict = {k: v for k, v in values.items() if k in darknet_spec.PREDICT_YOLO}
        predict.update(split=split, darknet=values["darknet"])
        if predict.get("darknet_map"):   # as `lesion predict yolo --darknet-map` does
            from deeplesion_cli.darknet.map import map_unsupported

            if map_unsupported(values["darknet"]):
                predict["darknet_map"] = False
        shared.predict_yolo(prepared, exp.cfg_path, yolo_final_weights(exp),
                            exp.predictions(split), predict, show_progress=show_progress)


def evaluate(matrix: Matrix, names: Sequence[str], show_progress: bool = False) -> dict:
    """``lesion eval PREPARED --split S --pred NAME=out/NAME/S.json ... --out out/eval``
    (:func:`deeplesion_cli.steps.evaluate`); returns the metrics document."""
    from deeplesion_cli import steps as shared

    predictions = {name: matrix.experiment(name).predictions(matrix.split) for name in names}
    return shared.evaluate(matrix.prepared, predictions,
                           option_values(matrix.eval_options, eval_spec.EVAL),
                           split=matrix.split, out_dir=matrix.eval_dir,
                           show_progress=show_progress).document


def score_curves(matrix: Matrix, names: Sequence[str], show_progress: bool = False):
    """``lesion eval PREPARED --run NAME=out/NAME ... --checkpoint every --split S,... --out
    out/curves`` (:func:`deeplesion_cli.curves.score_checkpoints`)."""
    from deeplesion_cli.curves import score_checkpoints

    return score_checkpoints({n: matrix.experiment(n).run_dir for n in names}, matrix.prepared,
                             splits=matrix.curves, eval_values=curves_values(matrix),
                             out_dir=matrix.curves_dir, show_progress=show_progress)


def build_matrix_report(matrix: Matrix, names: Sequence[str]):
    """``lesion report`` over the run folders, out/eval and the prepared folder
    (:func:`deeplesion_cli.steps.report`)."""
    from deeplesion_cli import steps as shared

    return shared.report([matrix.experiment(n).run_dir for n in names], report_evals(matrix),
                         matrix.prepared, matrix.report_dir, matrix.report.as_dict())


def _attempt(result: MatrixResult, key: str, step: Step, call: Callable[[], object],
             log: Callable[[str], None]) -> bool:
    """Run ``call`` for ``step``; a failure is recorded under ``key`` and logged, never raised
    (one experiment's failure must not stop the others). True when it ran."""
    try:
        call()
    except (KeyboardInterrupt, LesionInterrupted):  # a signal stops the whole matrix
        raise
    except Exception as exc:
        result.failures[key] = f"{step.kind} failed: {_describe(exc)}"
        log(f"[{key}] {result.failures[key]}" if step.experiment else result.failures[key])
        return False
    result.ran.append(step)
    return True


def _run_experiments(matrix: Matrix, steps: list[Step], result: MatrixResult,
                     show_progress: bool, log: Callable[[str], None]) -> None:
    """Every remaining train/predict step, in order; an experiment stops at its first failure."""
    todo = sum(not s.done for s in steps if s.experiment is not None)
    count = 0
    for step in steps:
        name = step.experiment
        if name is None:
            continue
        if step.done:
            result.skipped.append(step)
            log(f"[{name}] skipped {step.kind}: {step.note}")
        elif name in result.failures:
            log(f"[{name}] skipped {step.kind}: an earlier step failed")
        else:
            count += 1
            log(f"[{name}] {step.kind} ({count}/{todo}): {step.line}")
            _attempt(result, name, step, lambda step=step: _run_step(matrix, step,
                                                                    show_progress), log)


def _states(matrix: Matrix, steps: list[Step], result: MatrixResult,
            log: Callable[[str], None]) -> dict:
    """What each experiment's folder holds now, in file order; an unreadable one selected for
    this run is a failure, any other is left out with a warning."""
    prepared = prepared_folder(matrix)
    states = {}
    selected = {s.experiment for s in steps if s.experiment is not None}
    for exp in matrix.experiments:
        try:
            states[exp.name] = inspect(matrix, exp, prepared)
        except MatrixError as exc:
            if exp.name not in selected:
                result.warnings.append(f"left out of the evaluation: {exc}")
                log(result.warnings[-1])
            elif exp.name not in result.failures:
                result.failures[exp.name] = str(exc)
    return states


def _stage(result: MatrixResult, planned: dict, kind: str, current: bool, what: Path,
           step: Callable[[], Step], call: Callable[[], object], log: Callable[[str], None],
           label: str | None = None) -> None:
    """A matrix-wide step: skipped (and said) when ``what`` is up to date, else run."""
    if current:
        if kind in planned:
            result.skipped.append(planned[kind])
        log(f"skipped {kind}: {what} is up to date")
        return
    made = step()
    log(f"{label or kind}: {made.line}")
    _attempt(result, kind, made, call, log)


def _evaluate_and_report(matrix: Matrix, steps: list[Step], complete: list[str],
                         result: MatrixResult, show_progress: bool,
                         log: Callable[[str], None]) -> None:
    """One evaluation of every complete experiment, then the curves (with ``curves``) and the
    report, each unless current."""
    planned = {s.kind: s for s in steps if s.experiment is None}
    cwd = Path.cwd()
    if not complete:
        log("nothing to evaluate yet: no experiment has finished training and predictions")
        return
    _stage(result, planned, "eval", eval_current(matrix, complete),
           matrix.eval_dir / "metrics.json",
           lambda: Step(None, "eval", eval_line(matrix, complete, cwd), False,
                        f"{len(complete)} experiment(s)"),
           lambda: evaluate(matrix, complete, show_progress=show_progress), log,
           label=f"eval ({len(complete)} experiments)")
    if not eval_current(matrix, complete):
        return
    result.evaluated = complete
    result.metrics_json = matrix.eval_dir / "metrics.json"
    if matrix.curves:
        _stage(result, planned, "curves", curves_current(matrix, complete),
               matrix.curves_dir / "checkpoints.json",
               lambda: Step(None, "curves", curves_line(matrix, complete, cwd), False,
                            f"every checkpoint on {', '.join(matrix.curves)}"),
               lambda: score_curves(matrix, complete, show_progress=show_progress), log)

    def report() -> None:
        result.report = build_matrix_report(matrix, complete)
        result.warnings += list(getattr(result.report, "warnings", []) or [])
    _stage(result, planned, "report", report_current(matrix), matrix.report_dir,
           lambda: Step(None, "report", report_line(matrix, complete, cwd), False), report, log)


def run_matrix(path, *, only: Sequence[str] = (), show_progress: bool = True,
               log: Callable[[str], None] = print) -> MatrixResult:
    """Run what remains of the matrix file ``path`` (module docstring) and return the result;
    ``log`` receives one line per step (run, skipped or failed)."""
    matrix = path if isinstance(path, Matrix) else load_matrix(path)
    with folder_lock(matrix.out, "lesion matrix"):  # run folders, eval/ and report/ lock their own
        return _run_locked(matrix, only, show_progress, log)


def _run_locked(matrix: Matrix, only: Sequence[str], show_progress: bool,
                log: Callable[[str], None]) -> MatrixResult:
    steps = plan(matrix, only)
    early = _preflight(matrix, steps)
    result = MatrixResult(matrix, steps)
    for warning in early:
        result.warnings.append(warning)
        log(warning)
    for step in steps:
        if not step.done and step.kind in ("train", "resume") and \
                torchrun_prefix(matrix, matrix.experiment(step.experiment)) is not None:
            task = matrix.resources(matrix.experiment(step.experiment))
            result.warnings.append(
                f"{step.experiment}: its task asks for {task['nodes']} node(s) x "
                f"{task['gpus_per_node']} GPU(s) but `lesion matrix` trains it here in one "
                "process; `lesion matrix FILE --print` (or --print --scheduler slurm) gives its "
                "torchrun line")
            log(result.warnings[-1])
    _run_experiments(matrix, steps, result, show_progress, log)
    states = _states(matrix, steps, result, log)
    complete = [n for n, s in states.items() if s.complete]
    _evaluate_and_report(matrix, steps, complete, result, show_progress, log)
    document = None
    if result.metrics_json is not None:
        document = json.loads(result.metrics_json.read_text())
    result.rows = comparison_rows(matrix, states, document, result.failures)
    result.comparison_md, result.comparison_csv = write_comparison(matrix, result.rows,
                                                                   document)
    if result.evaluated and report_current(matrix):
        result.report_index = matrix.report_dir / "index.md"
    return result


def _describe(exc: BaseException) -> str:
    """The toolkit's own errors speak for themselves; anything else gets its type name."""
    if type(exc).__module__.startswith("deeplesion_cli") and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
