"""``lesion matrix EXPERIMENTS.toml``: run a table of experiments, then one evaluation and report.

One TOML file lists experiments (a backend and its options). :func:`run_matrix` runs what is
missing, one experiment after the other, skips what is finished, resumes what was interrupted,
predicts every experiment on the same split, evaluates all of them together and writes one
comparison table and report. :func:`plan` says what remains without running anything; each
step carries the exact ``lesion`` shell line that does it (``lesion matrix --print``: lines for
a cluster queue).

The file
========

.. code-block:: toml

    prepared = "prepared"        # a `lesion prepare` folder      (paths: relative to this file)
    out = "matrix"               # out/<name>/ runs, out/eval/, out/report/, out/comparison.md
    split = "test"               # every experiment is predicted and evaluated on this split

    [defaults.frcnn]             # shared by every frcnn experiment (an experiment overrides)
    epochs = 110
    [defaults.yolo]
    size = 416

    [eval]                       # optional: `lesion eval` options
    iou = 0.5                    # score = 0.25, froc_strict = false, bootstrap = 0, seed = 0
    [report]                     # optional: build_report options
    pdf = false                  # n_overlay = 4, images = ["000001_01_01_103.png", ...]

    [[experiment]]
    name = "frcnn-adam"          # folder name: letters, digits, - and _ (not eval/report)
    backend = "frcnn"            # frcnn | yolo
    optimizer = "adam"
    lr = 1e-4

    [[experiment]]
    name = "yolov4"
    backend = "yolo"
    arch = "yolov4"
    weights = "yolov4.conv.137"

Top-level keys: ``prepared`` (required), ``out`` (default ``matrix``), ``split`` (``train``,
``val`` or ``test``; default ``test``), ``defaults`` (tables ``frcnn`` and ``yolo`` only),
``eval``, ``report``, ``scheduler``, ``curves``, ``reported`` and ``experiment`` (at least one).

Scheduling (:mod:`deeplesion_cli.spec.scheduler`): ``[scheduler]`` takes the queue's keys
(partition, account, qos, setup, predict_time, eval_time, rdzv_port) and the training-task
resources (nodes, gpus_per_node, cpus_per_task, mem, time), which an experiment or
``[defaults.BACKEND]`` may also set for its own training (kept in
:attr:`Experiment.resources`, out of the run's options; :meth:`Matrix.resources` merges them).
A frcnn experiment with more than one node or GPU per node prints a ``torchrun`` line
(:func:`~deeplesion_cli.matrix.lines.torchrun_prefix`); ``lesion matrix --print --scheduler
slurm`` writes the remaining steps as a SLURM submit script (:mod:`deeplesion_cli.matrix.slurm`).

Options are those of the commands, declared once in :mod:`deeplesion_cli.spec`, same names
(:mod:`deeplesion_cli.matrix.options`). frcnn: every option of ``lesion train frcnn`` that has a
flag (:data:`~deeplesion_cli.spec.frcnn.TRAIN_FRCNN`; ``size_px`` is ``--size``, ``lr_steps`` a
list of epochs), e.g. arch, pretrained, weights, anchors, size_px, epochs, batch_size, optimizer,
lr, scheduler, augment, balanced, device, workers, seed, nms_iou, threads. Unset options take
``lesion train frcnn``'s defaults.

yolo (:data:`~deeplesion_cli.spec.darknet.YOLO_EXPERIMENT`): ``lesion cfg``'s arch (required),
size (416 or ``"608x416"``), anchors (an anchors.json), batch, subdivisions, max_batches,
burn_in, lr, small_objects, mosaic, flip; ``lesion train yolo``'s weights (initial weights),
darknet (binary: a path, or a program name on PATH), gpus (``"0,1"``), map, clear, save_every;
``lesion predict yolo``'s thresh, predict_size (its ``--size``: predict at another network size),
darknet_map and map_iou. ``[eval]``: ``lesion eval``'s options; ``[report]``: ``lesion report``'s
(:mod:`deeplesion_cli.spec.evaluation`).

``curves = ["train", "test"]`` (top level) scores every saved checkpoint of each experiment on
those splits after the evaluation (``lesion eval --checkpoint every``, into ``out/curves/``; the
report draws them). ``[reported]`` (top level: ``source``, ``iou``, ``note``) and
``[experiment.reported]`` (``source``, ``best_epoch``, ``map_train``, ``map_test``, ``iou_train``,
``iou_test``, ``map50``, ``map75``: fractions) keep a publication's figures, which comparison.md
sets beside ours (:mod:`deeplesion_cli.matrix.reported`).

Validation is strict (:func:`load_matrix`, :mod:`deeplesion_cli.matrix.load`): an unknown key
(with a "did you mean"), an unknown backend, a duplicate name (also one differing only by case), a
name that is not a safe folder name, a value of the wrong type or out of range raises
:class:`MatrixError` naming the file, the experiment (name and position) and the key. Files named
by options (weights, anchors) are checked when a step needs them, so a file can be validated and
printed on a machine that lacks them.

State, per experiment (run folder ``out/<name>/``; :mod:`deeplesion_cli.matrix.state`)
===================================================================================

frcnn: training is finished when ``last.pt``'s epoch equals ``epochs``, interrupted when it is
lower (resumed with ``train(..., resume=True)``, ``epochs``/``workers``/``device`` passed as
resumable overrides). A run whose saved options differ from the file's in anything a resumed run
may not change (:data:`~deeplesion_cli.frcnn.options.RESUMABLE_OVERRIDES`), that holds more epochs
than asked, or that was trained on another prepared folder (its ``config_hash``) stops the plan
with a :class:`MatrixError` naming the key: the matrix never mixes two settings in one row.
Predictions ``out/<name>/<split>.json`` (from ``best.pt``, else ``last.pt``, as ``lesion predict
frcnn RUN`` picks) are up to date when newer than that checkpoint.

yolo: ``out/<name>/<name>.cfg`` is what ``lesion cfg`` writes for the options (rewritten when it
differs and training has not started; when training has started only a changed ``max_batches``
is accepted: the run is resumed to train longer; any other difference is a :class:`MatrixError`).
Training is finished when ``backup/<name>_final.weights`` exists and the last darknet session in
``darknet.log`` passes :func:`~deeplesion_cli.darknet.train.judge_training` (a failed run with
final weights is a :class:`MatrixError`: delete its folder to retrain); interrupted when
darknet's resume weights exist (``<name>.backup`` pjreddie, ``<name>_last.weights``
AlexeyAB/hank-ai). Predictions are up to date when newer than the final weights.

Evaluation: all experiments whose training is finished and whose predictions are up to date
(after this run's steps) are evaluated together into ``out/eval/``, exactly what ``lesion eval
PREPARED --split S --pred NAME=out/NAME/S.json ... --out out/eval`` writes; it is up to date when
``metrics.json`` holds exactly those runs, in file order, with the same options and ground truth,
and is newer than every predictions file. Then the report: ``build_report(runs=[run folders],
evals=[out/eval], prepared=PREPARED, out_dir=out/report)``; it is up to date when its
``index.md`` is newer than ``metrics.json`` and the matrix file. ``out/comparison.md`` (and
``comparison.csv``) is rewritten at the end of every run: one row per experiment with the options
that differ between experiments of its backend, its status, and COCO AP50, AP, FROC mean
sensitivity at 0.5-4 FP/image and sensitivity at 4 FP/image from ``metrics.json``.

Shell lines (:func:`plan`, :func:`remaining_lines`; :mod:`deeplesion_cli.matrix.lines`): per
experiment ``lesion train frcnn PREPARED --out out/<name> ...`` with every option that has a value
as a flag (``--resume`` with only the resumable ones for an interrupted run) and ``lesion predict
frcnn``; or ``mkdir -p out/<name> && lesion cfg ... -o out/<name>/<name>.cfg``, ``lesion train
yolo`` and ``lesion predict yolo``; then ``lesion eval``, ``lesion report`` and, last, ``lesion
matrix FILE`` (with the same ``--only``), which then finds everything done and writes the
comparison. Paths are relative to the current
folder when inside it, else absolute. Run in order, the lines do what :func:`run_matrix` does.

``only``: the experiments to train and predict (names); the evaluation still covers every
experiment that is complete (an experiment outside ``only`` whose run folder does not fit the
file is left out, with a warning). A step that fails (e.g. a non-finite loss) is logged and
recorded in :attr:`MatrixResult.failures`; the other experiments go on. Inputs a step needs
(weights and anchors files, the darknet binary, a darknet fork that can build the arch) are
checked for every remaining step before the first one starts. While it runs, the matrix holds
``out``'s folder lock (:mod:`deeplesion_cli.lock`): a second ``lesion matrix`` on the same ``out``
stops with exit code 2; each step locks its own folder (``out/<name>``, ``out/eval``,
``out/report``) as the command it stands for does.

Modules, one concept each: :mod:`~deeplesion_cli.matrix.options` (which spec options each table
takes), :mod:`~deeplesion_cli.matrix.model` (the dataclasses and :class:`MatrixError`),
:mod:`~deeplesion_cli.matrix.load` (reading and validating the file),
:mod:`~deeplesion_cli.matrix.lines` (shell lines), :mod:`~deeplesion_cli.matrix.slurm` (the SLURM
script), :mod:`~deeplesion_cli.matrix.state` (run
folders on disk), :mod:`~deeplesion_cli.matrix.plan` (what remains),
:mod:`~deeplesion_cli.matrix.run` (running it) and :mod:`~deeplesion_cli.matrix.compare` (the
comparison table). This package imports no torch: ``lesion --help`` may import it.
"""

from __future__ import annotations

from deeplesion_cli.matrix.compare import (COMPARISON_METRICS, comparison_markdown,
                                           comparison_rows, fmt_metric, write_comparison)
from deeplesion_cli.matrix.lines import (eval_line, frcnn_predict_line, frcnn_train_line,
                                         matrix_line, report_line, torchrun_prefix,
                                         yolo_cfg_line, yolo_predict_line, yolo_train_line)
from deeplesion_cli.matrix.load import load_matrix, matrix_from_dict
from deeplesion_cli.matrix.model import (BACKENDS, NAME_RE, RESERVED_NAMES, TOP_KEYS, Experiment,
                                         ExperimentState, Matrix, MatrixError, MatrixResult, Step,
                                         yolo_final_weights)
from deeplesion_cli.matrix.options import (OptionValues, ReportOptions, SchedulerOptions,
                                           YoloOptions, eval_keys, frcnn_keys, report_keys,
                                           scheduler_keys, task_keys, yolo_keys)
from deeplesion_cli.matrix.plan import plan, remaining_lines
from deeplesion_cli.matrix.run import build_matrix_report, evaluate, run_matrix
from deeplesion_cli.matrix.slurm import slurm_script
from deeplesion_cli.matrix.state import inspect, read_manifest
from deeplesion_cli.prepared import SPLITS

__all__ = [
    "BACKENDS", "COMPARISON_METRICS", "NAME_RE", "RESERVED_NAMES", "SPLITS", "TOP_KEYS",
    "Experiment", "ExperimentState", "Matrix", "MatrixError", "MatrixResult", "OptionValues",
    "ReportOptions", "SchedulerOptions", "Step", "YoloOptions", "build_matrix_report",
    "comparison_markdown",
    "comparison_rows", "eval_keys", "eval_line", "evaluate", "fmt_metric", "frcnn_keys",
    "frcnn_predict_line", "frcnn_train_line", "inspect", "load_matrix", "matrix_from_dict",
    "matrix_line", "plan", "read_manifest", "remaining_lines", "report_keys", "report_line",
    "run_matrix", "scheduler_keys", "slurm_script", "task_keys", "torchrun_prefix",
    "write_comparison", "yolo_cfg_line", "yolo_final_weights", "yolo_keys",
    "yolo_predict_line", "yolo_train_line",
]
