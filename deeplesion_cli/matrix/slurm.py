"""``lesion matrix FILE --print --scheduler slurm``: the remaining steps as a SLURM submit script.

The script is bash; run once on the cluster's login node (``bash jobs.sh``), it submits one job
array per stage and resource set with ``sbatch``, each job's script read from a here-document:

* **train** arrays: array task ``N`` is experiment ``#N`` of the file (its position), running
  that experiment's remaining ``cfg`` (yolo) and ``train``/``resume`` lines. Experiments whose
  training task asks for the same resources (``nodes``, ``gpus_per_node``, ``cpus_per_task``,
  ``mem``, ``time``: :data:`deeplesion_cli.spec.scheduler.TASK`) share an array. A frcnn task
  with several nodes starts its ``torchrun`` line with ``srun`` on every node, the rendezvous
  host being the allocation's first node (``$LESION_RDZV_HOST``).
* **predict** arrays, one per train array (same task numbers), each with
  ``--dependency=aftercorr:<train>``: task ``N`` starts when train task ``N`` succeeded (an
  experiment already trained is predicted without waiting). One node, one GPU when its
  training had any, ``predict_time``.
* **eval**: one job, ``--dependency=afterok:<every predict array>``, no GPU, ``eval_time``.
* **report**: one job after eval (``afterok``): ``lesion report`` then ``lesion matrix FILE``,
  which finds everything done and writes ``out/comparison.md``.

Dependent jobs carry ``--kill-on-invalid-dep=yes``: when a step fails, what needs it is
cancelled rather than left pending; fix it and print the script again (done steps are left
out). ``[scheduler]`` gives every job its ``partition``, ``account``, ``qos`` and ``setup``
line; logs go to ``out/slurm/<job name>-<job id>_<task>.out``. The lines are exactly those of
``lesion matrix --print`` (:mod:`deeplesion_cli.matrix.lines`), run from the folder the script
was printed in.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Sequence

from deeplesion_cli.matrix.lines import RDZV_HOST_VAR
from deeplesion_cli.matrix.model import Matrix, Step
from deeplesion_cli.matrix.plan import plan
from deeplesion_cli.spec.core import shell_path

#: the here-document delimiter of each job's script
END = "LESION_JOB"


def _job_name(matrix: Matrix, stage: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", matrix.path.stem) or "matrix"
    return f"{stem}-{stage}"


def _sbatch_lines(matrix: Matrix, name: str, logs: str, resources: dict, *,
                  array: Sequence[int] = ()) -> list[str]:
    table = matrix.scheduler
    lines = [f"--job-name={name}"]
    if array:
        lines.append("--array=" + ",".join(str(i) for i in array))
    lines += [f"--nodes={resources['nodes']}", "--ntasks-per-node=1"]
    if resources["gpus_per_node"]:
        lines.append(f"--gpus-per-node={resources['gpus_per_node']}")
    lines.append(f"--cpus-per-task={resources['cpus_per_task']}")
    if resources["mem"]:
        lines.append(f"--mem={resources['mem']}")
    lines.append(f"--time={resources['time']}")
    for key in ("partition", "account", "qos"):
        if getattr(table, key):
            lines.append(f"--{key}={getattr(table, key)}")
    lines.append(f"--output={logs}/%x-%A_%a.out" if array else f"--output={logs}/%x-%j.out")
    return ["#SBATCH " + line for line in lines]


def _job_script(matrix: Matrix, sbatch: list[str], body: list[str]) -> list[str]:
    lines = ["#!/bin/bash", *sbatch, "set -euo pipefail"]
    if matrix.scheduler.setup:
        lines.append(matrix.scheduler.setup)
    return lines + body


def _case(tasks: list[tuple[int, str, list[str]]]) -> list[str]:
    """``case $SLURM_ARRAY_TASK_ID``: one branch per (task id, comment, lines)."""
    body = ['case "$SLURM_ARRAY_TASK_ID" in']
    for task, comment, lines in tasks:
        body.append(f"  {task})  # {comment}")
        body += [f"    {line}" for line in lines]
        body.append("    ;;")
    body += ['  *) echo "no step for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    return body


def _train_lines(matrix: Matrix, steps: list[Step]) -> list[str]:
    exp = matrix.experiment(steps[0].experiment)
    task = matrix.resources(exp)
    lines = []
    for step in steps:
        if step.kind in ("train", "resume") and exp.backend == "frcnn" and task["nodes"] > 1:
            lines.append(f'export {RDZV_HOST_VAR}="$(scontrol show hostnames '
                         '"$SLURM_JOB_NODELIST" | head -n 1)"')
            lines.append("srun --ntasks-per-node=1 " + step.line)
        else:
            lines.append(step.line)
    return lines


def _signature(resources: dict) -> tuple:
    return tuple(sorted(resources.items()))


def slurm_script(matrix: Matrix, only: Sequence[str] = (), *, cwd: Path | None = None) -> str:
    """The submit script of the steps that remain (module docstring); nothing is run or
    written. Paths are relative to ``cwd`` (default: the current folder), where the script
    ``cd``s first."""
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    remaining = [s for s in plan(matrix, only, cwd=cwd) if not s.done]
    logs = shell_path(matrix.out / "slurm", cwd)
    table = matrix.scheduler
    out = ["#!/bin/bash",
           f"# SLURM jobs for the remaining steps of {matrix.path.name}, written by",
           f"#   lesion matrix {matrix.path.name} --print --scheduler slurm",
           "# Submit them from a login node: bash THIS_FILE. Array task N is experiment #N of "
           "the file;",
           "# predict task N waits for train task N (aftercorr), eval for every prediction, "
           "report for eval.",
           "set -euo pipefail",
           f"cd {shlex.quote(str(cwd))}",
           f"mkdir -p {shlex.quote(logs)}",
           "submit() {  # sbatch the job script on stdin; print its job id",
           "  local id",
           '  id=$(sbatch --parsable "$@")',
           '  echo "${id%%;*}"',
           "}"]
    if not remaining:
        return "\n".join(out + ['echo "nothing remains: every step is done" >&2', ""])

    by_experiment: dict[str, dict[str, list[Step]]] = {}
    for step in remaining:
        if step.experiment is not None:
            stage = "predict" if step.kind == "predict" else "train"
            by_experiment.setdefault(step.experiment, {}).setdefault(stage, []).append(step)

    # train arrays: experiments grouped by their task's resources, in file order
    train_groups: dict[tuple, list[str]] = {}
    for name, stages in by_experiment.items():
        if "train" in stages:
            key = _signature(matrix.resources(matrix.experiment(name)))
            train_groups.setdefault(key, []).append(name)
    jobs: list[str] = []          # shell variables holding job ids, in submit order
    train_var: dict[str, str] = {}
    for number, names in enumerate(train_groups.values(), start=1):
        var = f"train_{number}"
        resources = matrix.resources(matrix.experiment(names[0]))
        exps = [matrix.experiment(n) for n in names]
        sbatch = _sbatch_lines(matrix, _job_name(matrix, "train"), logs, resources,
                               array=[e.index for e in exps])
        body = _case([(e.index, f"{e.name}: " + ", ".join(
            s.kind for s in by_experiment[e.name]["train"]),
            _train_lines(matrix, by_experiment[e.name]["train"])) for e in exps])
        out += _submit(var, [], _job_script(matrix, sbatch, body))
        jobs.append(var)
        train_var.update({n: var for n in names})

    # predict arrays: one per train array (aftercorr), then one per resource set without training
    predict_groups: dict[tuple, list[str]] = {}
    for name, stages in by_experiment.items():
        if "predict" in stages:
            task = matrix.resources(matrix.experiment(name))
            resources = {**task, "nodes": 1, "gpus_per_node": min(task["gpus_per_node"], 1),
                         "time": table.predict_time}
            key = (train_var.get(name), _signature(resources))
            predict_groups.setdefault(key, []).append(name)
    predict_vars = []
    for number, ((after, _), names) in enumerate(predict_groups.items(), start=1):
        var = f"predict_{number}"
        task = matrix.resources(matrix.experiment(names[0]))
        resources = {**task, "nodes": 1, "gpus_per_node": min(task["gpus_per_node"], 1),
                     "time": table.predict_time}
        exps = [matrix.experiment(n) for n in names]
        sbatch = _sbatch_lines(matrix, _job_name(matrix, "predict"), logs, resources,
                               array=[e.index for e in exps])
        body = _case([(e.index, f"{e.name}: predict",
                       [s.line for s in by_experiment[e.name]["predict"]]) for e in exps])
        dependency = [f"--dependency=aftercorr:${after}"] if after else []
        out += _submit(var, dependency, _job_script(matrix, sbatch, body))
        jobs.append(var)
        predict_vars.append(var)

    # eval, then report (+ the comparison): one job each, no GPU
    final = [s for s in remaining if s.experiment is None]
    cpu = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": table.cpus_per_task,
           "mem": table.mem, "time": table.eval_time}
    before = predict_vars
    for stage, kinds in (("eval", ("eval",)), ("report", ("report", "compare"))):
        lines = [s.line for s in final if s.kind in kinds]
        if not lines:
            continue
        sbatch = _sbatch_lines(matrix, _job_name(matrix, stage), logs, cpu)
        dependency = (["--dependency=afterok:" + ":".join(f"${v}" for v in before)]
                      if before else [])
        out += _submit(stage, dependency, _job_script(matrix, sbatch, lines))
        jobs.append(stage)
        before = [stage]
    out.append('echo "submitted: ' + " ".join(f"{v}=${v}" for v in jobs) + '" >&2')
    return "\n".join(out) + "\n"


def _submit(var: str, options: list[str], script: list[str]) -> list[str]:
    """``var=$(submit OPTIONS <<'END' ... END)``; dependent jobs are cancelled when what they wait
    for fails (``--kill-on-invalid-dep=yes``)."""
    if options:
        options = options + ["--kill-on-invalid-dep=yes"]
    head = " ".join(["submit", *options])
    return ["", f"{var}=$({head} <<'{END}'", *script, END, ")"]
