"""`lesion matrix FILE --print --scheduler slurm` (deeplesion_cli.matrix.slurm) and the torchrun
lines of multi-GPU / multi-node frcnn experiments. Nothing trains: the plan of a matrix whose run
folders do not exist yet, over a stub prepared folder (a manifest.json).

SLURM is not installed here: the submit script runs in real bash with an `sbatch` that records
each job script (its stdin) and arguments and answers a job id, as `sbatch --parsable` does; the
recorded job scripts are parsed and run (one array task each) with `lesion`, `srun` and `scontrol`
that record what they were given. torchrun's words are read by torch's own torchrun parser.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli import matrix as mx

REPO = Path(__file__).resolve().parents[1]

TOML = """
prepared = "prepared"
out = "out"

[scheduler]
partition = "gpu"
account = "lesions"
cpus_per_task = 4
setup = "export LESION_SETUP=done"

[defaults.frcnn]
arch = "mobilenet_v3_fpn"
epochs = 3

[[experiment]]
name = "a"
backend = "frcnn"

[[experiment]]
name = "big"
backend = "frcnn"
nodes = 2
gpus_per_node = 4
time = "12:00:00"

[[experiment]]
name = "y"
backend = "yolo"
arch = "yolov3-tiny"
time = "2-00:00:00"

[[experiment]]
name = "b"
backend = "frcnn"
optimizer = "sgd"
"""

SBATCH = r"""#!/bin/bash
# records one job: its arguments (one per line) and its script (stdin); answers like --parsable
n=$(( $(ls "$JOBS" | grep -c '\.sh$') + 1 ))
printf '%s\n' "$@" > "$JOBS/$n.args"
cat > "$JOBS/$n.sh"
echo "$((1000 + n));cluster"
"""

RECORD = r"""#!/bin/bash
# records its name and arguments (NUL-separated) in $CALLS
{ printf '%s\0' "$(basename "$0")" "$@"; printf '\n'; } >> "$CALLS"
"""

SCONTROL = """#!/bin/bash
[ "$1 $2 $3" = "show hostnames node[07-08]" ] && printf 'node07\\nnode08\\n'
"""


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.json").write_text("{}")
    (tmp_path / "m.toml").write_text(TOML)
    return tmp_path


def _bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("lesion", RECORD), ("srun", RECORD),
                       ("torchrun", RECORD), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _bash(script: Path, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def _job(args: list[str], text: str, job_id: int) -> dict:
    """A recorded job: its id, sbatch options (command line and #SBATCH), dependency, array task
    ids and, per task (None: not an array), the lines it runs."""
    lines = text.splitlines()
    sbatch: dict[str, str] = {}
    for line in lines:
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            sbatch[key] = value
    for arg in args:
        key, _, value = arg.partition("=")
        sbatch[key] = value
    body = [ln for ln in lines if not ln.startswith("#") and ln != "set -euo pipefail"
            and ln != "export LESION_SETUP=done"]
    tasks: dict = {}
    if "--array" in sbatch:
        current = None
        for line in body:
            match = re.fullmatch(r"  (\d+)\)  # .*", line)
            if match:
                current = int(match.group(1))
                tasks[current] = []
            elif current is not None and line.startswith("    ") and line.strip() != ";;":
                tasks[current].append(line.strip())
            elif line.strip() == ";;":
                current = None
        assert sorted(tasks) == [int(i) for i in sbatch["--array"].split(",")]
    else:
        tasks[None] = body
    return {"id": job_id, "sbatch": sbatch, "tasks": tasks, "text": text,
            "dependency": sbatch.get("--dependency")}


def _submit(folder: Path):
    matrix = mx.load_matrix(folder / "m.toml")
    script = folder / "submit.sh"
    script.write_text(mx.slurm_script(matrix, cwd=folder))
    jobs_dir = folder / "jobs"
    jobs_dir.mkdir()
    bin_dir = _bin(folder)
    done = _bash(script, {"PATH": f"{bin_dir}:{os.environ['PATH']}", "JOBS": str(jobs_dir)},
                 Path("/"))
    assert done.returncode == 0, done.stderr
    jobs = []
    for n in range(1, len(list(jobs_dir.glob("*.sh"))) + 1):
        args = (jobs_dir / f"{n}.args").read_text().splitlines()
        jobs.append(_job(args, (jobs_dir / f"{n}.sh").read_text(), 1000 + n))
    return matrix, script, jobs, done.stderr, bin_dir


def test_slurm_script_jobs_and_dependency_graph(folder):
    matrix, script, jobs, stderr, _ = _submit(folder)
    assert script.read_text().startswith("#!/bin/bash\n")
    assert (folder / "out" / "slurm").is_dir()          # SLURM does not make the log folder
    # every job is a bash script that parses
    for job in jobs:
        assert job["text"].startswith("#!/bin/bash\n"), job["text"][:40]
        syntax = subprocess.run(["bash", "-n"], input=job["text"], capture_output=True,
                                text=True)
        assert syntax.returncode == 0, syntax.stderr
        assert (job["sbatch"]["--partition"], job["sbatch"]["--account"]) == ("gpu", "lesions")
        assert "export LESION_SETUP=done" in job["text"]
    # each remaining step is in exactly one job (array task = the experiment's position)
    steps = [s for s in mx.plan(matrix, cwd=folder) if not s.done]
    where: dict = {}
    for step in steps:
        index = matrix.experiment(step.experiment).index if step.experiment else None
        found = [j for j in jobs if step.line in j["tasks"].get(index, [])
                 or (step.kind == "train" and index in j["tasks"]
                     and any(step.line in line for line in j["tasks"][index]))]
        assert len(found) == 1, (step.kind, step.experiment, [j["tasks"] for j in jobs])
        where[(step.experiment, step.kind)] = found[0]
    by_id = {j["id"]: j for j in jobs}
    names = [e.name for e in matrix.experiments]
    assert [e.index for e in matrix.experiments] == [1, 2, 3, 4]

    # train: a and b share an array (same resources); big and y have their own
    train_a = where[("a", "train")]
    assert train_a is where[("b", "train")] and train_a["sbatch"]["--array"] == "1,4"
    assert train_a["dependency"] is None
    assert {k: train_a["sbatch"][k] for k in ("--nodes", "--gpus-per-node", "--cpus-per-task",
                                              "--time")} == {
        "--nodes": "1", "--gpus-per-node": "1", "--cpus-per-task": "4", "--time": "24:00:00"}
    big = where[("big", "train")]
    assert (big["sbatch"]["--array"], big["sbatch"]["--nodes"], big["sbatch"]["--gpus-per-node"],
            big["sbatch"]["--time"], big["sbatch"]["--ntasks-per-node"]) == ("2", "2", "4",
                                                                            "12:00:00", "1")
    y = where[("y", "cfg")]
    assert y is where[("y", "train")] and y["sbatch"]["--time"] == "2-00:00:00"
    assert y["tasks"][3][0].startswith("mkdir -p out/y && lesion cfg prepared ")
    assert y["tasks"][3][1].startswith("lesion train yolo prepared --cfg out/y/y.cfg")
    assert big["sbatch"]["--output"] == "out/slurm/%x-%A_%a.out"

    # predict N after train N of the same experiment (aftercorr), one node, one GPU
    for name in names:
        predict, train = where[(name, "predict")], where[(name, "train")]
        assert predict["dependency"] == f"aftercorr:{train['id']}", name
        assert predict["sbatch"]["--kill-on-invalid-dep"] == "yes"
        assert set(predict["tasks"]) == set(train["tasks"])
        assert (predict["sbatch"]["--nodes"], predict["sbatch"]["--gpus-per-node"],
                predict["sbatch"]["--time"]) == ("1", "1", "02:00:00")
    # eval after every predict array; report (and the comparison) after eval
    evaluation = where[(None, "eval")]
    kind, _, ids = evaluation["dependency"].partition(":")
    assert kind == "afterok"
    assert {by_id[int(i)]["id"] for i in ids.split(":")} == {
        where[(n, "predict")]["id"] for n in names}
    assert "--gpus-per-node" not in evaluation["sbatch"]
    assert (evaluation["sbatch"]["--time"], evaluation["sbatch"]["--output"]) == (
        "04:00:00", "out/slurm/%x-%j.out")
    report = where[(None, "report")]
    assert report is where[(None, "compare")]
    assert report["dependency"] == f"afterok:{evaluation['id']}"
    assert report["tasks"][None] == [where_line.line for where_line in steps
                                     if where_line.kind in ("report", "compare")]
    assert [j["id"] for j in jobs].index(report["id"]) == len(jobs) - 1
    assert f"eval={evaluation['id']}" in stderr and f"report={report['id']}" in stderr


def test_array_tasks_run_their_lines(folder):
    """Running a recorded job script for one array task runs that task's `lesion` lines,
    word for word; a multi-node task starts torchrun with srun, rendezvous on its first node."""
    matrix, _, jobs, _, bin_dir = _submit(folder)
    calls = folder / "calls"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
           "SLURM_JOB_NODELIST": "node[07-08]"}
    train_y = next(j for j in jobs if 3 in j["tasks"] and j["dependency"] is None)
    (folder / "job.sh").write_text(train_y["text"])
    done = _bash(folder / "job.sh", {**env, "SLURM_ARRAY_TASK_ID": "3"}, folder)
    assert done.returncode == 0, done.stderr
    recorded = [c.split("\0") for c in calls.read_text().split("\0\n") if c]
    y = matrix.experiment("y")
    assert recorded == [
        shlex.split(mx.yolo_cfg_line(matrix, y, folder).split(" && ")[1]),
        shlex.split(mx.yolo_train_line(matrix, y, folder))]
    assert (folder / "out" / "y").is_dir()            # the cfg line's mkdir -p ran

    calls.unlink()
    train_big = next(j for j in jobs if 2 in j["tasks"] and j["dependency"] is None)
    (folder / "job.sh").write_text(train_big["text"])
    done = _bash(folder / "job.sh", {**env, "SLURM_ARRAY_TASK_ID": "2"}, folder)
    assert done.returncode == 0, done.stderr
    (srun,) = [c.split("\0") for c in calls.read_text().split("\0\n") if c]
    assert srun[:3] == ["srun", "--ntasks-per-node=1", "torchrun"]
    assert srun[srun.index("--rdzv_endpoint") + 1] == "node07:29500"

    done = _bash(folder / "job.sh", {**env, "SLURM_ARRAY_TASK_ID": "9"}, folder)
    assert done.returncode == 1 and "no step for array task 9" in done.stderr


def _expanded(line: str, env: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The words bash gives `torchrun` for ``line`` (with ``env``)."""
    done = subprocess.run(["bash", "-c", 'torchrun() { printf "%s\\0" "$@"; }\n' + line],
                          env={**os.environ, **env}, capture_output=True, text=True)
    return done, done.stdout.split("\0")[:-1]


def test_multi_node_torchrun_line(folder, monkeypatch):
    from torch.distributed.run import get_args_parser

    from deeplesion_cli.cli import main
    from deeplesion_cli.frcnn.options import TrainOptions
    from deeplesion_cli.spec.frcnn import TRAIN_FRCNN

    matrix = mx.load_matrix(folder / "m.toml")
    big = matrix.experiment("big")
    lines = mx.remaining_lines(matrix, cwd=folder)
    line = mx.frcnn_train_line(matrix, big, folder)
    assert line in lines and line.startswith("torchrun --nnodes 2 --nproc_per_node 4 ")
    done, words = _expanded(line, {"LESION_RDZV_HOST": "node07"})
    assert done.returncode == 0, done.stderr
    args = get_args_parser().parse_args(words)           # torchrun's own parser
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint,
            args.rdzv_id, args.module, args.training_script) == (
        "2", "4", "c10d", "node07:29500", "big", True, "deeplesion_cli")
    assert args.training_script_args[:2] == ["train", "frcnn"]
    monkeypatch.chdir(folder)                            # the line's paths are relative to it
    command = main.commands["train"].commands["frcnn"]
    params = command.make_context("frcnn", list(args.training_script_args[2:]),
                                  **main.context_settings).params
    assert (folder / params["run_dir"]).resolve() == (folder / "out" / "big").resolve()
    assert TrainOptions(**TRAIN_FRCNN.from_cli(params)) == big.options
    # without the rendezvous host the line stops, saying what to set
    done, _ = _expanded(line, {})
    assert done.returncode != 0 and "LESION_RDZV_HOST" in done.stderr
    # one GPU: the plain line; several on one node: torchrun --standalone
    assert lines[0] == mx.frcnn_train_line(matrix, matrix.experiment("a"), folder)
    assert lines[0].startswith("lesion train frcnn prepared --out out/a ")
    (folder / "m.toml").write_text(TOML.replace("nodes = 2\n", ""))
    one_node = mx.load_matrix(folder / "m.toml")
    line = mx.frcnn_train_line(one_node, one_node.experiment("big"), folder)
    assert line.startswith("torchrun --standalone --nnodes 1 --nproc_per_node 4 -m "
                           "deeplesion_cli train frcnn prepared --out out/big ")
    assert mx.frcnn_train_line(one_node, one_node.experiment("big"), folder, resume=True) \
        .startswith("torchrun --standalone --nnodes 1 --nproc_per_node 4 -m deeplesion_cli "
                    "train frcnn prepared --out out/big --resume ")


@pytest.mark.parametrize("text, experiment, key, message", [
    ('[[experiment]]\nname = "y2"\nbackend = "yolo"\narch = "yolov3"\nnodes = 2\n',
     "'y2' (#5)", "nodes", "darknet trains on one node"),
    ('[[experiment]]\nname = "y2"\nbackend = "yolo"\narch = "yolov3"\ngpus = "0,1"\n',
     "'y2' (#5)", "gpus_per_node", "lists 2 GPU(s) but the task asks for gpus_per_node = 1"),
    ('[[experiment]]\nname = "c"\nbackend = "frcnn"\ntime = "tomorrow"\n', "'c' (#5)", "time",
     "expected a SLURM time"),
    ('[[experiment]]\nname = "c"\nbackend = "frcnn"\nnode = 2\n', "'c' (#5)", "node",
     "did you mean 'nodes'"),
    ('[[experiment]]\nname = "c"\nbackend = "frcnn"\ngpus_per_node = -1\n', "'c' (#5)",
     "gpus_per_node", ">= 0"),
])
def test_scheduling_keys_are_validated(folder, text, experiment, key, message):
    (folder / "m.toml").write_text(TOML + text)
    with pytest.raises(mx.MatrixError) as info:
        mx.load_matrix(folder / "m.toml")
    assert (info.value.experiment, info.value.key) == (experiment, key)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("table, key, message", [
    ('partiton = "gpu"\n', "scheduler.partiton", "did you mean 'partition'"),
    ('mem = "lots"\n', "scheduler.mem", "expected a SLURM memory size"),
    ('rdzv_port = 80\n', "scheduler.rdzv_port", "1024..65535"),
])
def test_scheduler_table_is_validated(folder, table, key, message):
    (folder / "m.toml").write_text(TOML.replace("[scheduler]\n", "[scheduler]\n" + table))
    with pytest.raises(mx.MatrixError) as info:
        mx.load_matrix(folder / "m.toml")
    assert info.value.key == key and message in str(info.value), str(info.value)


def test_cli_prints_the_script(folder, monkeypatch):
    from deeplesion_cli.cli import main

    monkeypatch.chdir(folder)
    result = CliRunner().invoke(main, ["matrix", "m.toml", "--print", "--scheduler", "slurm"])
    assert result.exit_code == 0, result.output
    assert result.output == mx.slurm_script(mx.load_matrix("m.toml"), cwd=folder)
    result = CliRunner().invoke(main, ["matrix", "m.toml", "--scheduler", "slurm"])
    assert result.exit_code == 2 and "give it with --print" in result.output
    plain = CliRunner().invoke(main, ["matrix", "m.toml", "--print"])
    assert plain.exit_code == 0 and "#SBATCH" not in plain.output
    assert plain.output.splitlines() == mx.remaining_lines(mx.load_matrix("m.toml"), cwd=folder)


def test_shipped_slurm_example_validates():
    matrix = mx.load_matrix(REPO / "docs" / "examples" / "slurm.toml")
    ddp = matrix.experiment("frcnn-adam-8gpu")
    assert matrix.resources(ddp)["nodes"] == 2 and matrix.resources(ddp)["gpus_per_node"] == 4
    assert mx.torchrun_prefix(matrix, ddp).startswith("torchrun --nnodes 2 --nproc_per_node 4")
    assert mx.torchrun_prefix(matrix, matrix.experiment("frcnn-adam")) is None
    assert matrix.scheduler.partition == "gpu"
