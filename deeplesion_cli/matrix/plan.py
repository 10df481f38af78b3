"""What remains of a matrix, as steps with their shell lines (nothing is run or written).

:func:`plan` lists every step in order, done or not: per selected experiment (file order)
``[cfg,] train or resume, predict``; then ``eval``, ``curves`` (when the file sets
``curves``: every saved checkpoint scored on those splits) and ``report`` over the experiments
that will be complete, and ``compare`` (``lesion matrix FILE``, which writes out/comparison.md).
:func:`remaining_lines` gives the lines still to do (``lesion matrix --print``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deeplesion_cli.matrix.lines import (curves_line, eval_line, frcnn_predict_line,
                                         frcnn_train_line, matrix_line, report_line,
                                         yolo_cfg_line, yolo_predict_line, yolo_train_line)
from deeplesion_cli.matrix.model import Experiment, ExperimentState, Matrix, MatrixError, Step
from deeplesion_cli.matrix.state import (comparison_current, curves_current, eval_current,
                                         inspect, prepared_folder, report_current)


def select(matrix: Matrix, only: Sequence[str]) -> list[Experiment]:
    """The experiments named by ``--only`` (all when empty), in file order."""
    if not only:
        return list(matrix.experiments)
    names = [e.name for e in matrix.experiments]
    for name in only:
        if name not in names:
            raise MatrixError(f"--only {name!r}: no such experiment; the file has "
                              f"{', '.join(names)}", file=matrix.path)
    return [e for e in matrix.experiments if e.name in only]


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
    """Every step of the matrix in order, done or not (module docstring). Shell paths are
    relative to ``cwd`` (default: the current folder) when inside it. Nothing is run or
    written."""
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    selected = {e.name for e in select(matrix, only)}
    prepared = prepared_folder(matrix)
    steps: list[Step] = []
    complete: list[str] = []
    pending = False
    for exp in matrix.experiments:
        if exp.name not in selected:
            try:
                state = inspect(matrix, exp, prepared)
            except MatrixError:  # not ours to run now: it stays out of the evaluation
                continue
        else:
            state = inspect(matrix, exp, prepared)
        if exp.name in selected:
            exp_steps = _experiment_steps(matrix, state, cwd)
            steps += exp_steps
            pending |= not all(s.done for s in exp_steps)
            complete.append(exp.name)
        elif state.complete:
            complete.append(exp.name)
    if not complete:
        return steps
    eval_done = not pending and eval_current(matrix, complete)
    steps.append(Step(None, "eval", eval_line(matrix, complete, cwd), eval_done,
                      "up to date" if eval_done else f"{len(complete)} experiment(s)"))
    if matrix.curves:
        curves_done = not pending and curves_current(matrix, complete)
        steps.append(Step(None, "curves", curves_line(matrix, complete, cwd), curves_done,
                          "up to date" if curves_done else
                          f"every checkpoint on {', '.join(matrix.curves)}"))
        eval_done = eval_done and curves_done
    report_done = eval_done and report_current(matrix)
    steps.append(Step(None, "report", report_line(matrix, complete, cwd), report_done,
                      "up to date" if report_done else "after the evaluation"))
    compare_done = report_done and comparison_current(matrix)
    steps.append(Step(None, "compare", matrix_line(matrix, only, cwd), compare_done,
                      "up to date" if compare_done else "out/comparison.md"))
    return steps


def remaining_lines(matrix: Matrix, only: Sequence[str] = (), *,
                    cwd: Path | None = None) -> list[str]:
    """The shell lines of the steps still to do, in order (``lesion matrix --print``)."""
    return [s.line for s in plan(matrix, only, cwd=cwd) if not s.done]
