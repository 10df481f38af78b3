"""Where each experiment, the evaluation and the report stand on disk (nothing is written).

frcnn: training is finished when ``last.pt``'s epoch equals ``epochs``, interrupted when lower; a
run whose saved options differ from the file's in anything a resumed run may not change, that
holds more epochs than asked, or that was trained on another prepared folder (its
``config_hash``) is a :class:`~deeplesion_cli.matrix.model.MatrixError` naming the key.

yolo: the cfg on disk is compared with what ``lesion cfg`` writes for the options (only a changed
``max_batches`` is accepted once training has started: the run is resumed to train longer);
training is finished when the final weights exist and the last darknet session in
``darknet.log`` passes :func:`~deeplesion_cli.darknet.train.judge_training`.

Predictions, the evaluation and the report are up to date by file times (package docstring).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from deeplesion_cli.matrix.model import (Experiment, ExperimentState, Matrix, MatrixError,
                                         yolo_final_weights)
from deeplesion_cli.matrix.options import frcnn_spec_now
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.prepared import Prepared, PreparedError
from deeplesion_cli.spec import darknet as darknet_spec


def _mtime(path: Path) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return None


def newer_or_same(a: Path, b: Path) -> bool:
    """``a`` exists and was written no earlier than ``b``."""
    ta, tb = _mtime(a), _mtime(b)
    return ta is not None and tb is not None and ta >= tb


def prepared_folder(matrix: Matrix) -> Prepared:
    """The matrix's prepared folder, its manifest read (:class:`MatrixError` on key ``prepared``
    when it cannot be)."""
    prepared = Prepared(matrix.prepared)
    try:
        prepared.manifest
    except PreparedError as exc:
        raise MatrixError(str(exc), file=matrix.path, key="prepared") from None
    return prepared


def read_manifest(matrix: Matrix) -> dict:
    """The prepared folder's ``manifest.json`` (:class:`MatrixError` on key ``prepared`` when it
    cannot be read)."""
    return prepared_folder(matrix).manifest


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


def _frcnn_state(matrix: Matrix, exp: Experiment, prepared: Prepared) -> ExperimentState:
    from deeplesion_cli.frcnn import checkpoint as ckpt
    from deeplesion_cli.frcnn import options as frcnn_options
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
    train_options = frcnn_options.TrainOptions
    resumable = frcnn_spec_now().resumable
    trained_with = train_options.from_json(saved["options"])
    for f in fields(train_options):
        if f.name in resumable:
            continue
        ours, theirs = getattr(options, f.name), getattr(trained_with, f.name)
        if ours != theirs:
            raise fail(f"{ours!r} here, but {exp.run_dir} was trained with {theirs!r}; a run "
                       "keeps its options: restore the value, or delete (or rename) the run "
                       "folder to train it again", f.name)
    if saved["prepared_config_hash"] != prepared.config_hash:
        raise fail(f"{exp.run_dir} was trained on another prepared folder (config_hash "
                   f"{saved['prepared_config_hash']!r}, {matrix.prepared}: "
                   f"{prepared.config_hash!r}); delete the run folder to train it again",
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
    try:
        state.checkpoint = resolve_checkpoint(exp.run_dir)
    except LesionInputError as exc:  # e.g. a best.pt the run recorded is gone: this experiment's
        raise fail(str(exc)) from None
    state.predictions_current = newer_or_same(exp.predictions(matrix.split), state.checkpoint)
    return state


def yolo_cfg_text(matrix: Matrix, exp: Experiment, prepared: Prepared,
                  max_batches: int | None = None) -> str:
    """What ``lesion cfg`` writes for the experiment (``max_batches``: instead of the file's):
    :func:`deeplesion_cli.steps.cfg_text`, its errors named by the matrix file and key."""
    from deeplesion_cli import steps

    values = {k: v for k, v in exp.options.as_dict().items() if k in darknet_spec.CFG}
    try:
        return steps.cfg_text(prepared, values, max_batches=max_batches)
    except steps.AnchorsFileError as exc:
        raise MatrixError(str(exc), file=matrix.path, experiment=exp.label,
                          key="anchors") from None
    except (ValueError, KeyError) as exc:  # PreparedError is a ValueError
        raise MatrixError(f"lesion cfg refuses these options: {exc}", file=matrix.path,
                          experiment=exp.label) from None


def _last_session(log_path: Path):
    """The darknet.log lines of its last darknet process (after the last ``$ command`` line)
    as a :class:`~deeplesion_cli.darknet.process.RunOutcome`."""
    from deeplesion_cli.darknet.process import RunOutcome

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


def _yolo_state(matrix: Matrix, exp: Experiment, prepared: Prepared) -> ExperimentState:
    from deeplesion_cli.darknet.cfg import parse_cfg
    from deeplesion_cli.darknet.train import judge_training, weights_images_seen

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
    wanted = yolo_cfg_text(matrix, exp, prepared)
    max_batches = parse_cfg(wanted).net.int("max_batches", 0)
    if cfg_exists:
        existing = exp.cfg_path.read_text(encoding="utf-8", errors="replace")
        state.cfg_current = existing == wanted
        if not state.cfg_current and started:
            net = parse_cfg(existing).net
            old_max = net.int("max_batches", 0) if net is not None else 0
            if not old_max or yolo_cfg_text(matrix, exp, prepared, old_max) != existing:
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
        state.predictions_current = newer_or_same(exp.predictions(matrix.split), final)
    elif started:
        state.resume = True
        state.progress = "interrupted"
    return state


def inspect(matrix: Matrix, exp: Experiment, prepared: Prepared | None = None) -> ExperimentState:
    """Where an experiment stands on disk (package docstring); :class:`MatrixError` when its run
    folder does not fit the file's options. ``prepared``: the matrix's prepared folder, when
    the caller has read it already (:func:`prepared_folder`)."""
    prepared = prepared if prepared is not None else prepared_folder(matrix)
    if exp.backend == "frcnn":
        return _frcnn_state(matrix, exp, prepared)
    return _yolo_state(matrix, exp, prepared)


def eval_current(matrix: Matrix, names: Sequence[str]) -> bool:
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
    gt_path = Prepared(matrix.prepared).coco_path(matrix.split)
    if Path(document.get("ground_truth", "")).resolve() != gt_path.resolve():
        return False
    return all(newer_or_same(metrics, matrix.experiment(n).predictions(matrix.split))
               for n in names)


def curves_current(matrix: Matrix, names: Sequence[str]) -> bool:
    """out/curves/checkpoints.json scored exactly ``names`` on the ``curves`` splits with the
    file's evaluation options, and is newer than every checkpoint those runs hold now."""
    from deeplesion_cli.runs import RunFolderError, list_checkpoints

    path = matrix.curves_dir / "checkpoints.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if list(document.get("runs", {})) != list(names) \
            or list(document.get("splits", [])) != list(matrix.curves):
        return False
    from deeplesion_cli.matrix.lines import curves_values
    from deeplesion_cli.evaluation.evaluate import EvalOptions

    if document.get("options") != EvalOptions(**curves_values(matrix)).to_json():
        return False
    try:
        listed = [c for n in names for c in list_checkpoints(matrix.experiment(n).run_dir)]
    except RunFolderError:
        return False
    return all(newer_or_same(path, c.checkpoint) for c in listed)


def report_current(matrix: Matrix) -> bool:
    """out/report/index.md (build_report writes it last) is newer than out/eval/metrics.json
    (and out/curves/checkpoints.json with ``curves``) and than the matrix file (whose [report]
    options it follows)."""
    index = matrix.report_dir / "index.md"
    return (newer_or_same(index, matrix.eval_dir / "metrics.json")
            and (not matrix.curves
                 or newer_or_same(index, matrix.curves_dir / "checkpoints.json"))
            and newer_or_same(index, matrix.path))


def comparison_current(matrix: Matrix) -> bool:
    md = matrix.out / "comparison.md"
    return (newer_or_same(md, matrix.eval_dir / "metrics.json")
            and newer_or_same(md, matrix.path))
