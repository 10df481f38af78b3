"""The scheduling options of a matrix file (``lesion matrix --print --scheduler slurm``), declared
once.

:data:`SCHEDULER` is the ``[scheduler]`` table: where and how every job of the queue runs
(partition, account, a setup line) and the resources of each task. :data:`TASK` are the
resources an experiment (or ``[defaults.frcnn]``/``[defaults.yolo]``) may set for its own
training task: ``nodes``, ``gpus_per_node``, ``cpus_per_task``, ``mem``, ``time``. An experiment's
value wins over its backend's defaults, which win over ``[scheduler]``, which wins over the
declared default. A frcnn training with more than one node or more than one GPU per node runs under
``torchrun`` (``--nnodes``, ``--nproc_per_node``, c10d rendezvous on the first node at
``rdzv_port``). No command takes these options as flags: they shape the printed lines and the
SLURM script, not a ``lesion`` command. Torch-free.
"""

from __future__ import annotations

import re

from deeplesion_cli.spec.core import Option, Spec

#: the schedulers ``lesion matrix --print --scheduler`` writes for
SCHEDULERS = ("slurm",)

#: SLURM's --time forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}")
#: SLURM's --mem: a size with an optional unit (K, M, G, T)
_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


class PatternOption(Option):
    """A string option checked against a pattern (``form`` says it in the message)."""

    pattern: re.Pattern = _TIME
    form: str = ""

    def problem(self, value):
        message = super().problem(value)
        if message or value is None:
            return message
        if not self.pattern.fullmatch(str(value)):
            return f"{self.cli_flag} {value!r}: expected {self.form}"
        return None


class TimeOption(PatternOption):
    pattern = _TIME
    form = "a SLURM time such as \"90\" (minutes), \"12:00:00\" or \"2-00:00:00\""


class MemOption(PatternOption):
    pattern = _MEM
    form = "a SLURM memory size such as \"64G\" or \"16000M\""


#: an experiment's training task (also accepted in [defaults.frcnn], [defaults.yolo], [scheduler])
TASK = Spec("training task", [
    Option("nodes", "int", 1, low=1,
           help="Nodes of the training task (frcnn only: torchrun --nnodes)."),
    Option("gpus_per_node", "int", 1, low=0,
           help="GPUs per node (frcnn: torchrun --nproc_per_node when above 1; yolo: darknet's "
                "-gpus should list as many)."),
    Option("cpus_per_task", "int", 8, low=1, help="CPU cores per node."),
    MemOption("mem", "str", None, help="Memory per node (\"64G\"); SLURM's default "
                                                  "when unset."),
    TimeOption("time", "str", "24:00:00", help="Wall time of the training task."),
])

#: the [scheduler] table: the task resources above (defaults of every experiment) and the queue's
SCHEDULER = Spec("scheduler", [
    *TASK,
    Option("partition", "str", None, help="sbatch --partition of every job."),
    Option("account", "str", None, help="sbatch --account of every job."),
    Option("qos", "str", None, help="sbatch --qos of every job."),
    TimeOption("predict_time", "str", "02:00:00",
               help="Wall time of a prediction task (one GPU when the training has any)."),
    TimeOption("eval_time", "str", "04:00:00",
               help="Wall time of the evaluation job and of the report job (no GPU)."),
    Option("rdzv_port", "int", 29500, low=1024, high=65535,
           help="torchrun's c10d rendezvous port on the first node of a multi-node training."),
    Option("setup", "str", None,
           help="Shell line run at the start of every job (e.g. \"source .venv/bin/activate\")."),
])
