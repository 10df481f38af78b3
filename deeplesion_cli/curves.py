"""mAP over training: score every saved checkpoint of runs on several splits
(``lesion eval PREPARED --run NAME=RUN ... --checkpoint every --split train --split test --out
DIR``).

For each run (its progress points: :func:`deeplesion_cli.runs.list_checkpoints`, Faster R-CNN
``epochs/epoch_0010.pt`` of ``--save-every``, darknet ``backup/<cfg>_<iteration>.weights`` and
``_final.weights``), each checkpoint and each split, :func:`score_checkpoints` predicts through
the run's detection cache (:func:`deeplesion_cli.steps.predict_run`: a re-run, or one resumed
after an interruption, predicts only what is not cached yet) and scores the detections with the
evaluator and options of ``lesion eval`` (one metrics block per checkpoint and split, the same
numbers ``lesion eval --pred`` gives for that file; no eval folder is written per checkpoint).
The rows go to ``DIR/checkpoints.csv`` and ``DIR/checkpoints.json`` (with the settings), and
``DIR/checkpoints.png`` draws them (:mod:`deeplesion_cli.report.checkpoints`). The best
checkpoint of each run and split is the one with the highest seed-protocol mAP (ties: the
earliest).

Every run's checkpoints are listed before anything is predicted, so that a run without any is
refused at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from deeplesion_cli import __version__
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.lock import locks
from deeplesion_cli.spec import evaluation as eval_spec

#: the splits scored by default: the study's curves (train and test)
DEFAULT_SPLITS = ("train", "test")


class CheckpointCurvesError(LesionInputError):
    """Options or inputs that cannot make checkpoint curves (message names the option)."""


@dataclass
class CheckpointCurves:
    """What :func:`score_checkpoints` scored and wrote."""

    rows: list[dict]                      # checkpoints.csv's rows, in run, step, split order
    best: dict[str, dict[str, dict | None]]   # run -> split -> best row by seed mAP (or None)
    document: dict                        # checkpoints.json
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    predicted: int = 0                    # checkpoint x split predicted now
    reused: int = 0                       # ... found in the run's detection cache
    warnings: list[str] = field(default_factory=list)


def parse_splits(items: Sequence[str] | str | None) -> tuple[str, ...]:
    """``--split`` values, repeated and/or comma-separated, in order, each once
    (``("train,test", "val")`` -> ``("train", "test", "val")``); None or empty: the defaults."""
    if isinstance(items, str):
        items = (items,)
    splits = [s.strip() for item in (items or ()) for s in str(item).split(",") if s.strip()]
    return tuple(dict.fromkeys(splits)) or DEFAULT_SPLITS


def _eval_options(eval_values: Mapping | None):
    from deeplesion_cli.evaluation.evaluate import EvalOptions

    v = eval_spec.EVAL.defaults()
    v.update(dict(eval_values or {}))
    if v.get("bootstrap"):
        raise CheckpointCurvesError(
            f"--bootstrap {v['bootstrap']}: checkpoints.csv holds no intervals; score the chosen "
            "checkpoint with `lesion eval --run NAME=RUN --checkpoint best|last --bootstrap N`")
    return EvalOptions(**v)


@locks("out_dir", "lesion eval")
def score_checkpoints(runs: Mapping[str, Path], prepared, *,
                      splits: Sequence[str] = DEFAULT_SPLITS, values: Mapping | None = None,
                      eval_values: Mapping | None = None, out_dir,
                      show_progress: bool = True) -> CheckpointCurves:
    """Score every checkpoint of each run (name -> run folder) on each of ``splits`` of the
    prepared folder ``prepared`` (module docstring) and write ``out_dir/checkpoints.csv``,
    ``checkpoints.json`` and ``checkpoints.png``. ``values``: prediction options of either
    backend, as :func:`deeplesion_cli.steps.predict_run` takes them; ``eval_values``: the options
    of ``lesion eval`` (:data:`deeplesion_cli.spec.evaluation.EVAL`; ``bootstrap`` must be 0).
    ``show_progress``: a bar over the checkpoints x splits (plain lines when piped).

    :class:`deeplesion_cli.runs.RunFolderError` for a run without checkpoints (naming what was
    looked for and how to get them), before anything is predicted."""
    from deeplesion_cli import runs as run_folders
    from deeplesion_cli import steps
    from deeplesion_cli.evaluation.evaluate import evaluate_runs
    from deeplesion_cli.evaluation.outputs import prepared_record, resolve_ground_truth
    from deeplesion_cli.formats.detections import read_detections
    from deeplesion_cli.formats.groundtruth import load_ground_truth
    from deeplesion_cli.progress import Progress
    from deeplesion_cli.report.checkpoints import (BEST_BY, COLUMNS, best_rows, metrics_of,
                                                   write_checkpoint_outputs)

    if not runs:
        raise CheckpointCurvesError("--checkpoint every: give at least one --run NAME=RUN")
    options = _eval_options(eval_values)
    splits = parse_splits(splits)
    prepared = Path(prepared)
    truths = {split: resolve_ground_truth(prepared, split)[0] for split in splits}
    listed = {name: run_folders.list_checkpoints(run_dir) for name, run_dir in runs.items()}
    total = sum(len(found) for found in listed.values()) * len(splits)
    gts: dict[str, object] = {}
    rows: list[dict] = []
    warnings: list[str] = []
    predicted = reused = 0
    with Progress(total, "score checkpoints", unit="checkpoints", enabled=show_progress) as bar:
        for name, checkpoints in listed.items():
            for chosen in checkpoints:
                for split in splits:
                    found = steps.predict_run(chosen.run_dir, prepared, split=split,
                                              checkpoint=chosen, values=values,
                                              show_progress=False)
                    reused, predicted = reused + found.reused, predicted + (not found.reused)
                    where = f"run {name} {chosen.checkpoint.name} {split}"
                    warnings += [f"{where}: {m}" for m in found.warnings]
                    if split not in gts:
                        gts[split] = load_ground_truth(truths[split])
                    gt = gts[split]
                    document = evaluate_runs(
                        gt, {name: read_detections(found.path, gt)}, options,
                        ground_truth_path=str(truths[split]),
                        prepared=prepared_record(prepared, truths[split]))
                    warnings += [f"{where}: {m}" for m in document["warnings"]]
                    rows.append({"run": name, "backend": chosen.backend,
                                 "checkpoint": chosen.checkpoint.name, "unit": chosen.unit,
                                 "step": chosen.step, "split": split,
                                 **metrics_of(document["runs"][name])})
                    bar.advance(1, info=f"{name} {chosen.unit} {chosen.step} {split}"
                                        + (" (cached)" if found.reused else ""))
    best = best_rows(rows)
    doc = {
        "tool": "lesion", "version": __version__, "command": "eval --checkpoint every",
        "prepared": prepared_record(prepared, truths[splits[0]]) or {"path": str(prepared)},
        "splits": list(splits),
        "runs": {name: str(Path(run_dir).resolve()) for name, run_dir in runs.items()},
        "options": options.to_json(),
        "predict_options": {k: v if v is None or isinstance(v, (bool, int, float, str))
                            else str(v) for k, v in sorted((values or {}).items())},
        "best_by": BEST_BY,
        "columns": COLUMNS,
        "rows": rows,
        "best": best,
        "warnings": warnings,
    }
    written = write_checkpoint_outputs(doc, Path(out_dir))
    return CheckpointCurves(rows, best, doc, Path(out_dir), written, predicted, reused, warnings)
