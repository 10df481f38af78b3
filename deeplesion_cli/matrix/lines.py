"""The ``lesion`` shell line of each matrix step (``lesion matrix --print``: lines for a cluster
queue). Run in order, the lines do what :func:`~deeplesion_cli.matrix.run.run_matrix` does.

The words come from :mod:`deeplesion_cli.steps` (the ``*_words`` companions of the step functions
the matrix runs, built from the options' one declaration, read at call time); the command's
plumbing (the prepared folder, ``--out``, ``--cfg``, ``-o``) from the matrix's folder layout.
Paths are relative to ``cwd`` when inside it, else absolute. A frcnn training whose task asks for
more than one node or GPU per node is a ``torchrun ... -m deeplesion_cli train frcnn ...`` line
(:func:`torchrun_prefix`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deeplesion_cli import steps
from deeplesion_cli.matrix.model import Experiment, Matrix, yolo_final_weights
from deeplesion_cli.matrix.options import frcnn_spec_now, option_values
from deeplesion_cli.spec import darknet as darknet_spec
from deeplesion_cli.spec import evaluation as eval_spec
from deeplesion_cli.spec.core import shell_line, shell_path


#: the variable a multi-node torchrun line reads its rendezvous host from
RDZV_HOST_VAR = "LESION_RDZV_HOST"


def frcnn_train_line(matrix: Matrix, exp: Experiment, cwd: Path, resume: bool = False) -> str:
    """``lesion train frcnn`` with every option that has a value as a flag (``resume``:
    ``--resume`` and only the options a resumed run may change); under ``torchrun`` when the
    experiment's task asks for more than one node or GPU (:func:`torchrun_prefix`)."""
    words = steps.train_frcnn_words(matrix.prepared, exp.run_dir,
                                    option_values(exp.options, frcnn_spec_now()), cwd,
                                    resume=resume)
    prefix = torchrun_prefix(matrix, exp)
    if prefix is None:
        return shell_line(words)
    return prefix + " " + shell_line(["-m", "deeplesion_cli", *words[1:]])


def torchrun_prefix(matrix: Matrix, exp: Experiment) -> str | None:
    """The ``torchrun`` words before ``-m deeplesion_cli train frcnn ...`` for a frcnn task with
    ``nodes`` > 1 or ``gpus_per_node`` > 1 (None otherwise): one node, ``--standalone
    --nproc_per_node G``; several, ``--nnodes N --nproc_per_node G`` with a c10d rendezvous at
    ``$LESION_RDZV_HOST:rdzv_port`` (the first node: the line runs once on each node, all with
    the same host; the SLURM script sets it and starts the line with ``srun`` on every node)."""
    if exp.backend != "frcnn":
        return None
    task = matrix.resources(exp)
    nodes, gpus = task["nodes"], task["gpus_per_node"]
    if nodes == 1 and gpus <= 1:
        return None
    per_node = ["--nproc_per_node", str(max(gpus, 1))]
    if nodes == 1:
        return shell_line(["torchrun", "--standalone", "--nnodes", "1", *per_node])
    port = matrix.scheduler.rdzv_port
    endpoint = (f'"${{{RDZV_HOST_VAR}:?the first node of the {nodes}: run this line on each '
                f'of them}}:{port}"')
    return (shell_line(["torchrun", "--nnodes", str(nodes), *per_node, "--rdzv_id", exp.name,
                        "--rdzv_backend", "c10d"]) + " --rdzv_endpoint " + endpoint)


def frcnn_predict_line(matrix: Matrix, exp: Experiment, cwd: Path) -> str:
    """``lesion predict frcnn RUN PREPARED --split S -o out/NAME/S.json`` with the run's
    ``--device`` and ``--workers`` (what :func:`~deeplesion_cli.matrix.run.run_matrix` passes)."""
    return shell_line(steps.predict_frcnn_words(
        exp.run_dir, matrix.prepared, exp.predictions(matrix.split),
        {"split": matrix.split, "workers": exp.options.workers, "device": exp.options.device},
        cwd))


def _only(values: dict, spec) -> dict:
    return {k: v for k, v in values.items() if k in spec}


def yolo_cfg_line(matrix: Matrix, exp: Experiment, cwd: Path) -> str:
    """``lesion cfg`` writing the run's cfg (``mkdir -p`` first: ``lesion cfg`` does not make
    the folder)."""
    words = steps.cfg_words(matrix.prepared, exp.cfg_path,
                            _only(exp.options.as_dict(), darknet_spec.CFG), cwd)
    return shell_line(["mkdir", "-p", shell_path(exp.run_dir, cwd)]) + " && " + shell_line(words)


def yolo_train_line(matrix: Matrix, exp: Experiment, cwd: Path, resume: bool = False) -> str:
    """``lesion train yolo`` (``resume``: darknet's own resume weights, not the initial ones)."""
    return shell_line(steps.train_yolo_words(
        matrix.prepared, exp.cfg_path, exp.run_dir,
        _only(exp.options.as_dict(), darknet_spec.TRAIN_YOLO), cwd, resume=resume))


def yolo_predict_line(matrix: Matrix, exp: Experiment, cwd: Path) -> str:
    values = _only(exp.options.as_dict(), darknet_spec.PREDICT_YOLO)
    return shell_line(steps.predict_yolo_words(
        matrix.prepared, exp.cfg_path, yolo_final_weights(exp), exp.predictions(matrix.split),
        {**values, "split": matrix.split}, cwd))


def eval_line(matrix: Matrix, names: Sequence[str], cwd: Path) -> str:
    """``lesion eval PREPARED --split S --pred NAME=out/NAME/S.json ... --out out/eval`` with
    every ``[eval]`` option."""
    predictions = {name: matrix.experiment(name).predictions(matrix.split) for name in names}
    return shell_line(steps.evaluate_words(
        matrix.prepared, predictions, option_values(matrix.eval_options, eval_spec.EVAL), cwd,
        split=matrix.split, out_dir=matrix.eval_dir))


def curves_values(matrix: Matrix) -> dict:
    """The ``[eval]`` options of the checkpoint curves: those of the evaluation, without the
    bootstrap (checkpoints.csv holds no intervals)."""
    return {**option_values(matrix.eval_options, eval_spec.EVAL), "bootstrap": 0}


def curves_line(matrix: Matrix, names: Sequence[str], cwd: Path) -> str:
    """``lesion eval PREPARED --split train,test --run NAME=out/NAME ... --checkpoint every
    --out out/curves``: every saved checkpoint of each run scored on the ``curves`` splits."""
    return shell_line(steps.evaluate_words(
        matrix.prepared, {}, curves_values(matrix), cwd, split=",".join(matrix.curves),
        out_dir=matrix.curves_dir, runs={n: matrix.experiment(n).run_dir for n in names},
        checkpoint="every"))


def report_line(matrix: Matrix, names: Sequence[str], cwd: Path) -> str:
    """``lesion report RUN... --eval DIR --prepared DIR --out DIR`` and the ``[report]`` options
    that differ from the defaults (as :func:`~deeplesion_cli.matrix.run.build_matrix_report`
    runs it)."""
    return shell_line(steps.report_words(
        [matrix.experiment(n).run_dir for n in names], report_evals(matrix), matrix.prepared,
        matrix.report_dir, matrix.report.as_dict(), cwd))


def report_evals(matrix: Matrix) -> list[Path]:
    """The eval folders the matrix's report reads: out/eval, and out/curves when the file sets
    ``curves`` (the report draws its checkpoints.csv)."""
    return [matrix.eval_dir] + ([matrix.curves_dir] if matrix.curves else [])


def matrix_line(matrix: Matrix, only: Sequence[str], cwd: Path) -> str:
    """``lesion matrix FILE [--only NAME ...]``: after the other lines it finds everything done
    and writes out/comparison.md."""
    words = ["lesion", "matrix", shell_path(matrix.path.resolve(), cwd)]
    for name in only:
        words += ["--only", name]
    return shell_line(words)
