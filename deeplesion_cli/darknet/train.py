"""Training with darknet: the run folder, its ``obj.data``, resuming, and judging the run.

Commands per fork (``<x>`` = absolute paths):

================  ==========================================================================
train, pjreddie   ``darknet detector train <run>/obj.data <run>/<cfg> [<weights>] [-gpus L]``
train, AlexeyAB   ``... train <run>/obj.data <run>/<cfg> [<weights>] -dont_show [-map]
                  [-mAP_epochs N] [-iou_thresh X] [-chart P] [-gpus L]``
train, hank-ai    same as AlexeyAB without ``-mAP_epochs``, with ``yes`` on stdin (CPU builds
                  ask for it, docs/darknet.md 5.4)
================  ==========================================================================

Each fork gets only the flags it knows (an unknown flag becomes a positional argument in
pjreddie and AlexeyAB, docs/darknet.md 4): :data:`TRAIN_FLAGS` says which fork knows which,
:func:`check_train_flags` refuses the others before anything is written, and ``-gpus`` is left
out (with a warning) for a build without CUDA. The inputs are checked first (:mod:`.inputs`); the
console goes into ``darknet.log`` and ``metrics.csv`` (:mod:`.process`,
:mod:`deeplesion_cli.runlog`) and :func:`judge_training` decides whether the run trained,
whatever darknet's exit code says.
``args.json`` (:mod:`.runargs`) records the run's options before darknet starts.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplesion_cli import runlog
from deeplesion_cli.darknet import log as dlog
from deeplesion_cli.darknet.binary import (FORK_NAMES, FORKS, detect_fork, find_darknet,
                                           gpu_support)
from deeplesion_cli.darknet.errors import (DarknetInputError, DarknetInterrupted,
                                           DarknetOptionError, DarknetRunError)
from deeplesion_cli.darknet.inputs import (CfgSummary, data_file_problems, read_cfg,
                                           relocated_list, validate_inputs, write_data_file)
from deeplesion_cli.darknet.process import (RunOutcome, describe_returncode, run_darknet,
                                            signal_name)
from deeplesion_cli.darknet.runargs import record_outputs, write_run_args
from deeplesion_cli.darknet.weights import (start_iteration, weights_images_seen,
                                            weights_problems)
from deeplesion_cli.prepared import Prepared
from deeplesion_cli.progress import Progress
from deeplesion_cli.spec.darknet import TRAIN_YOLO

#: training flags beyond ``-map`` and ``-clear``: the ``lesion train yolo`` option -> (darknet's
#: flag, the forks whose ``detector train`` reads it). AlexeyAB reads all three
#: (``detector.c``); hank-ai ``-iou_thresh`` and ``-chart`` but computes the mAP every epoch
#: whatever ``-mAP_epochs`` says; pjreddie none (docs/darknet.md 4, 5.2). ``-points`` is no
#: training flag in any fork: ``train -map`` always computes all-point AP (``points = 0``).
TRAIN_FLAGS = {"map_epochs": ("-mAP_epochs", ("alexeyab",)),
               "iou_thresh": ("-iou_thresh", ("alexeyab", "hankai")),
               "chart": ("-chart", ("alexeyab", "hankai"))}
#: flags that only change what ``-map`` does
_MAP_ONLY = ("map_epochs", "iou_thresh")
#: metrics.csv column of a ``-map`` result, by its IoU threshold
_MAP_COLUMNS = {0.5: "val_mAP50", 0.75: "val_mAP75"}

@dataclass
class TrainResult:
    """A finished, checked training run."""

    run_dir: Path
    final_weights: Path
    iterations: int            # last iteration reached (= the cfg's max_batches)
    avg_loss: float            # darknet's running average loss at the last iteration
    metrics_csv: Path
    fork: str
    log_path: Path = None
    cfg_path: Path = None
    data_path: Path = None
    command: list = field(default_factory=list)
    seconds: float = 0.0       # wall-clock seconds of the darknet process
    first_iteration: int = 1   # > 1 when resumed
    warnings: list = field(default_factory=list)
    best_weights: Path | None = None   # <base>_best.weights (AlexeyAB/hank-ai -map), if written
    resumed: bool = False

    @property
    def session_iterations(self) -> int:
        """Iterations this darknet process ran (a resumed run: since it restarted)."""
        return self.iterations - self.first_iteration + 1

    def iterations_text(self) -> str:
        """``6 iterations``, or for a run that did not start at 1 (``--resume``, weights that had
        seen images) ``iterations 501-750 (250 this session)``."""
        if self.first_iteration <= 1:
            return f"{self.iterations} iterations"
        return (f"iterations {self.first_iteration}-{self.iterations} "
                f"({self.session_iterations} this session)")


def weights_paths(backup_dir: Path, base: str, fork: str) -> dict[str, Path]:
    """The weights darknet writes into ``backup_dir`` (docs/darknet.md 5): ``final``, and
    ``resume`` (what a resumed run starts from: ``_last`` for AlexeyAB/hank-ai, ``.backup`` for
    pjreddie)."""
    resume = (backup_dir / f"{base}.backup" if fork == "pjreddie"
              else backup_dir / f"{base}_last.weights")
    return {"final": backup_dir / f"{base}_final.weights", "resume": resume,
            "best": backup_dir / f"{base}_best.weights"}


def check_train_flags(fork: str, binary, map: bool = False, **values) -> None:
    """Refuse the :data:`TRAIN_FLAGS` options (``map_epochs``, ``iou_thresh``, ``chart``; None =
    not given) that ``fork`` does not read, and those that only change ``-map`` without ``map``:
    :class:`DarknetOptionError` naming the ``lesion`` flag, darknet's, and the fork."""
    for name, value in values.items():
        if value is None:
            continue
        flag, forks = TRAIN_FLAGS[name]
        option = TRAIN_YOLO[name].cli_flag
        if fork not in forks:
            names = " or ".join(FORK_NAMES[f] for f in forks)
            if fork == "hankai" and name == "map_epochs":
                why = ("which computes the mAP every epoch (at least every 100 iterations) and has "
                       "no -mAP_epochs")
            else:
                why = (f"which has no {flag} (it would read the flag as a file name, "
                       "docs/darknet.md 4)")
            raise DarknetOptionError(f"{option} (darknet {flag}) needs {names}; {binary} is "
                                     f"{FORK_NAMES[fork]}, {why}")
        if name in _MAP_ONLY and not map:
            raise DarknetOptionError(f"{option} (darknet {flag}) changes the mAP that --map "
                                     "computes during training; add --map")


def train_command(binary, fork: str, data_path, cfg_path, weights=None, map: bool = False,
                  gpus: str | None = None, clear: bool = False, map_epochs: int | None = None,
                  iou_thresh: float | None = None, chart=None,
                  save_every: int | None = None) -> list[str]:
    """``darknet detector train`` for ``fork``, with only the flags that fork knows (an unknown
    flag would become the weights path in pjreddie, docs/darknet.md 4). ``clear``: ``-clear``
    (all three forks: the weights' images-seen count starts again from 0, docs/darknet.md 16);
    ``map_epochs``, ``iou_thresh``, ``chart``: ``-mAP_epochs``, ``-iou_thresh``, ``-chart``
    (:data:`TRAIN_FLAGS`, refused by :func:`check_train_flags` where the fork lacks them);
    ``save_every``: hank-ai's ``-saveweights`` (AlexeyAB reads ``saveweights=`` from the .data
    file instead: :func:`save_every_entry`)."""
    if fork not in FORKS:
        raise DarknetOptionError(f"fork {fork!r}: expected one of {', '.join(FORKS)}")
    cmd = [str(binary), "detector", "train", str(data_path), str(cfg_path)]
    if weights is not None:
        cmd.append(str(weights))
    if clear:
        if weights is None:
            raise DarknetOptionError("-clear resets the images-seen count of initial weights; "
                                     "there are none")
        cmd.append("-clear")
    if fork in ("alexeyab", "hankai"):
        cmd.append("-dont_show")
        if map:
            cmd.append("-map")
    elif map:
        raise DarknetOptionError("pjreddie darknet has no -map")
    flags = {"map_epochs": map_epochs, "iou_thresh": iou_thresh, "chart": chart}
    check_train_flags(fork, binary, map, **flags)
    for name, value in flags.items():
        if value is not None:
            cmd += [TRAIN_FLAGS[name][0], str(value)]
    if save_every is not None and save_every_entry(fork, binary, save_every) is None:
        cmd += ["-saveweights", str(int(save_every))]
    if gpus is not None:
        cmd += ["-gpus", gpus]
    return cmd


def save_every_entry(fork: str, binary, save_every: int | None) -> dict:
    """``--save-every N``: the .data entry that asks for it (AlexeyAB: ``saveweights``), None
    where a flag does (hank-ai: ``-saveweights``), {} without it; pjreddie saves on its own fixed
    schedule (every 100 iterations up to 1,000, then every 10,000): DarknetOptionError."""
    if save_every is None:
        return {}
    if fork == "pjreddie":
        raise DarknetOptionError(
            f"--save-every {save_every} needs AlexeyAB or hank-ai darknet; {binary} is "
            "pjreddie's, which saves weights every 100 iterations up to 1,000, then every "
            "10,000, whatever it is asked")
    return {"saveweights": int(save_every)} if fork == "alexeyab" else None


def judge_training(outcome: RunOutcome, max_batches: int, final_weights: Path,
                   burn_in: int | None = None) -> list[str]:
    """Why a training run failed (empty if it did not), whatever darknet's exit code says
    (docs/darknet.md 10): non-zero exit; an error, missing-file, bad-data or out-of-memory
    line; NaN or infinite average loss; no iteration line; a learning rate printed as 0 at every
    iteration (the run never left its ``burn_in`` warm-up: weights barely moved); last iteration
    < ``max_batches``; ``final_weights`` missing."""
    reasons = []
    if outcome.returncode != 0 and outcome.stopped is None:
        reasons.append(describe_returncode(outcome.returncode))
    kinds = {"out-of-memory": "out of memory", "missing-file": "a file is missing",
             "bad-data": "bad training data", "error": "darknet reported an error"}
    seen = set()
    for problem in outcome.problems:
        if problem.kind in seen:
            continue
        seen.add(problem.kind)
        reasons.append(f"{kinds[problem.kind]}: {problem.message[:300]}")
    diverged = next((it for it in outcome.iterations if it.diverged), None)
    if diverged is not None:
        stopped = ", so lesion stopped darknet there" if outcome.stopped is not None else ""
        reasons.append(f"the average loss became {diverged.avg_loss} at iteration "
                       f"{diverged.iteration}{stopped}: training diverged (lower learning_rate "
                       "(`lesion cfg --lr`), raise burn_in (`--burn-in`), or check the labels)")
    elif outcome.stopped is not None:
        reasons.append(f"lesion stopped darknet: {outcome.stopped}")
    if outcome.stopped is not None:
        return reasons  # the rest (no final weights, iterations short) follows from the stop
    if outcome.iterations and all(it.rate == 0 for it in outcome.iterations):
        first, last_it = outcome.iterations[0].iteration, outcome.iterations[-1].iteration
        cause = (f"burn_in={burn_in} warm-up ramps the rate as learning_rate x (iteration / "
                 f"burn_in)^4, too small to print by iteration {last_it}; lower burn_in "
                 "(`lesion cfg --burn-in`, whose default suits --max-batches)"
                 if burn_in else "learning_rate is 0 or the policy brought it to 0")
        reasons.append(f"the learning rate was 0 at every iteration ({first}-{last_it}), so "
                       f"nothing was learnt: {cause}")
    last = outcome.last_iteration
    if last is None:
        reasons.append("darknet printed no training iteration")
    elif last.iteration < max_batches:
        reasons.append(f"training stopped at iteration {last.iteration} of max_batches="
                       f"{max_batches}")
    if not Path(final_weights).is_file():
        reasons.append(f"no final weights {final_weights}")
    return reasons


class _TrainProgress(Progress):
    """Progress whose description can change (iteration and average loss)."""

    def set_description(self, text: str) -> None:
        self.description = text
        if self._rich is not None:
            self._rich.update(self._task, description=text)


def _gpu_list(gpus) -> str | None:
    if gpus is None or gpus == "" or gpus == []:
        return None
    if isinstance(gpus, int):
        return str(gpus)
    if isinstance(gpus, str):
        text = gpus.replace(" ", "")
    else:
        text = ",".join(str(int(g)) for g in gpus)
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise DarknetOptionError(f"gpus {gpus!r}: expected GPU indices like 0 or 0,1")
    return text


def train(prepared_dir, cfg_path, run_dir, weights=None, darknet=None, gpus=None,
          map: bool = False, resume: bool = False, show_progress: bool = True,
          clear: bool = False, map_epochs: int | None = None, iou_thresh: float | None = None,
          chart=None, save_every: int | None = None) -> TrainResult:
    """Train a darknet detector on a prepared folder and check that it really trained.

    ``run_dir`` receives: a copy of the cfg, the run's own ``train.txt`` and ``valid.txt``
    (the prepared lists re-rooted to the folder's current location,
    :func:`~deeplesion_cli.darknet.inputs.relocated_list`), ``obj.data`` (absolute paths,
    ``backup`` = ``run_dir/backup``), ``args.json`` (:mod:`.runargs`: written before darknet starts,
    rewritten on resume), ``darknet.log`` (the clean console), ``metrics.csv``
    (:mod:`deeplesion_cli.runlog`, one row per iteration) and ``backup/<cfgbase>_final.weights``.
    darknet runs with ``run_dir`` as its working folder.

    ``weights``: initial weights (a pretrained backbone such as ``yolov3-tiny.conv.11``),
    checked first (:func:`~deeplesion_cli.darknet.weights.weights_problems`); weights whose
    images-seen count already reaches ``max_batches`` (a finished run's) are refused unless
    ``clear`` (darknet's ``-clear``: count from 0), and weights that have seen fewer start
    darknet at a later iteration, with a warning. Nothing is written before these checks.
    ``map``: evaluate mAP@0.5 on the val list during training (AlexeyAB / hank-ai ``-map``; the
    values go to ``val_mAP50``); pjreddie cannot, which is an error. ``resume``: continue from
    ``backup/<cfgbase>_last.weights`` (AlexeyAB / hank-ai) or ``backup/<cfgbase>.backup``
    (pjreddie), or from ``_final.weights`` when ``max_batches`` was raised (the cfg given
    replaces the run's copy, so a resumed run can train longer); metrics.csv rows from the
    iteration it restarts at on are replaced, and darknet.log is appended to. ``gpus``: GPU
    indices (``"0,1"`` or ``[0, 1]``) for ``-gpus``; a build without CUDA
    (:func:`~deeplesion_cli.darknet.binary.gpu_support`) does not get them, with a warning.
    ``map_epochs``, ``iou_thresh`` (with ``map``) and ``chart``: darknet's ``-mAP_epochs``,
    ``-iou_thresh`` and ``-chart`` (:data:`TRAIN_FLAGS`; a fork without the flag is an error);
    a mAP at IoU 0.75 goes to ``val_mAP75``. With ``map``, AlexeyAB and hank-ai write
    ``<base>_best.weights`` (:attr:`TrainResult.best_weights`); both restart their best mAP
    when a run resumes, which the result's warnings say. ``save_every``: a numbered weights file
    every N iterations (:func:`save_every_entry`).

    darknet is stopped at the first NaN or infinite average loss. SIGTERM, SIGHUP and SIGINT
    reach darknet too (:func:`~deeplesion_cli.darknet.process.run_darknet`).

    Raises :class:`DarknetNotFound`, :class:`DarknetOptionError`, :class:`DarknetInputError`
    (before launching), :class:`DarknetInterrupted` (a signal: exit code 128 + its number) or
    :class:`DarknetRunError` (after: see :func:`judge_training`; the run folder is kept).
    """
    binary = find_darknet(darknet)
    fork = detect_fork(binary)
    prepared_dir = Path(prepared_dir).resolve()
    run_dir = Path(run_dir).resolve()
    cfg_source = Path(cfg_path).resolve()
    gpu_list = _gpu_list(gpus)
    if map and fork == "pjreddie":
        raise DarknetOptionError(
            "mAP during training (-map) needs AlexeyAB or hank-ai darknet; "
            f"{binary} is pjreddie's, which has no -map. Train without it and run "
            "`lesion predict` + `lesion eval` on the weights instead.")
    check_train_flags(fork, binary, map, map_epochs=map_epochs, iou_thresh=iou_thresh,
                      chart=chart)
    save_entry = save_every_entry(fork, binary, save_every) or {}
    chart_path = Path(chart).resolve() if chart is not None else None
    if not cfg_source.is_file():
        raise DarknetInputError([f"{cfg_source}: cfg file not found"], "cfg")
    if weights is not None and not Path(weights).is_file():
        raise DarknetInputError([f"{weights}: weights file not found (pjreddie would exit 0 "
                                 "without training, hank-ai would silently train from "
                                 "scratch)"], "weights")
    if clear and (weights is None or resume):
        raise DarknetOptionError("--clear restarts the images-seen count of --weights in a "
                                 "fresh run; " + ("a resumed run keeps its own count"
                                                  if resume else "give --weights"))
    # first the checks that read only: a refused run writes nothing into its folder
    cfg = read_cfg(cfg_source)
    warnings = _check_initial_weights(Path(weights), cfg, clear) if weights is not None else []
    gpu_list = _cpu_only_gpus(binary, fork, gpu_list, warnings)
    map_column = _MAP_COLUMNS.get(round(iou_thresh if iou_thresh is not None else 0.5, 6))
    if map and map_column is None:
        warnings.append(f"the mAP at IoU {iou_thresh} (--iou-thresh) is in darknet.log only: "
                        "metrics.csv has mAP columns for IoU 0.5 and 0.75")
    backup_dir = run_dir / "backup"
    cfg_copy = run_dir / cfg_source.name
    data_path = run_dir / "obj.data"
    log_path = run_dir / "darknet.log"
    metrics_path = run_dir / "metrics.csv"
    prepared = Prepared(prepared_dir)
    names_path = prepared.names_path
    problems = data_file_problems({"train": run_dir / "train.txt", "names": names_path,
                                   "backup": backup_dir})
    if problems:
        raise DarknetInputError(problems, "run paths")
    paths = weights_paths(backup_dir, cfg.base, fork)
    final_weights = paths["final"]
    initial_weights = Path(weights).resolve() if weights is not None else None
    start_weights = initial_weights
    if resume:
        start_weights = _resume_weights(paths, metrics_path, cfg, fork, log_path)
    else:
        existing = sorted(backup_dir.glob("*.weights")) + sorted(backup_dir.glob("*.backup"))
        if existing:
            raise DarknetOptionError(f"{run_dir} already holds trained weights "
                                     f"({existing[0].name}); resume it (--resume) or choose a "
                                     "new run folder")

    run_dir.mkdir(parents=True, exist_ok=True)
    if chart_path is not None:
        chart_path.parent.mkdir(parents=True, exist_ok=True)  # darknet would not create it
    # the run's own lists, valid wherever the prepared folder now is (copied or moved)
    train_list = relocated_list(prepared_dir, "train", run_dir)
    valid_list = relocated_list(prepared_dir, "val", run_dir)
    sources = {str(train_list): prepared.list_path("train"),
               str(valid_list): prepared.list_path("val")}
    lists = [train_list, valid_list] if map else [train_list]
    summary = validate_inputs(prepared_dir, cfg_source, lists, fork=fork, backup_dir=backup_dir,
                              list_sources=sources)
    n_train = summary.images[str(train_list)]

    if cfg_copy != cfg_source:
        shutil.copyfile(cfg_source, cfg_copy)
    write_data_file(data_path, {"classes": cfg.classes, "train": train_list,
                                "valid": valid_list, "names": names_path, "backup": backup_dir,
                                **save_entry})
    # the record lesion report reads; written before darknet starts so a failed run has it too
    flags = {"clear": bool(clear and not resume), "map_epochs": map_epochs,
             "iou_thresh": iou_thresh, "chart": None if chart_path is None else str(chart_path),
             "save_every": save_every}
    write_run_args(run_dir, prepared=prepared_dir, cfg_path=cfg_copy, weights=initial_weights,
                   binary=binary, fork=fork, gpus=gpu_list, map=map, resumed=resume,
                   classes=cfg.classes, flags=flags, outputs=paths)
    if not resume:
        metrics_path.unlink(missing_ok=True)

    cmd = train_command(binary, fork, data_path, cfg_copy, start_weights, map, gpu_list,
                        clear=clear and not resume, map_epochs=map_epochs,
                        iou_thresh=iou_thresh, chart=chart_path, save_every=save_every)
    stdin_path = None
    if fork == "hankai":
        stdin_path = run_dir / ".stdin-yes"
        stdin_path.write_text("yes\n")

    state = _TrainState(metrics_path, n_train, cfg.max_batches, resume, show_progress,
                        map_column)
    best_before = _mtime(paths["best"])
    try:
        outcome = run_darknet(cmd, run_dir, log_path, stdin_path=stdin_path,
                              on_event=state.on_event, append_log=resume, stop_on=_diverged)
    finally:
        state.close()
        if stdin_path is not None:
            stdin_path.unlink(missing_ok=True)
        record_outputs(run_dir, paths)  # the weights darknet left, whatever the outcome
    if outcome.signum is not None:
        raise _interrupted(outcome, fork, cfg, paths, run_dir)
    reasons = judge_training(outcome, cfg.max_batches, final_weights, cfg.burn_in)
    if reasons:
        raise DarknetRunError(f"darknet training ({FORK_NAMES[fork]})", reasons,
                              list(outcome.tail), run_dir, log_path)
    last = outcome.last_iteration
    first = outcome.iterations[0].iteration
    best = paths["best"] if paths["best"].is_file() else None
    if best is not None and resume and _mtime(best) != best_before:
        where = (f"{map_column} in metrics.csv" if map_column else "darknet.log")
        warnings.append(f"{FORK_NAMES[fork]} starts its best mAP afresh when a run resumes: "
                        f"{best.name} is the best of iterations {first}-{last.iteration} only, "
                        f"not of the whole run ({where} has every session's mAP)")
    return TrainResult(run_dir, final_weights, last.iteration, last.avg_loss, metrics_path, fork,
                       log_path, cfg_copy, data_path, cmd, outcome.seconds, first,
                       warnings + outcome.warnings, best, resume)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _cpu_only_gpus(binary, fork: str, gpu_list: str | None, warnings: list) -> str | None:
    """``gpu_list``, or None with a warning when ``binary`` was built without CUDA: its
    ``-gpus`` would not use a GPU, but pjreddie and AlexeyAB would still load one network per
    listed GPU and scale the learning rate by their number (docs/darknet.md 0)."""
    if gpu_list is None:
        return None
    support = gpu_support(binary)
    if support.cuda is not False:
        return gpu_list
    warnings.append(f"--gpus {gpu_list}: {binary} ({FORK_NAMES[fork]}) is a CPU-only build "
                    f"({support.evidence}), so it trains on the CPU; lesion does not pass "
                    "-gpus to it")
    return None


def _diverged(event) -> str | None:
    """``stop_on`` of training: the first NaN or infinite average loss ends the run (as the
    Faster R-CNN path does); :func:`judge_training` then says what to change."""
    if isinstance(event, dlog.Iteration) and event.diverged:
        return f"average loss {event.avg_loss} at iteration {event.iteration}"
    return None


def _interrupted(outcome: RunOutcome, fork: str, cfg: CfgSummary, paths: dict[str, Path],
                 run_dir: Path) -> DarknetInterrupted:
    """The error of a run stopped by a signal: where it stopped and how to go on."""
    last = outcome.last_iteration
    where = (f"at iteration {last.iteration} of {cfg.max_batches}" if last is not None
             else "before its first iteration")
    saved = [p for p in (paths["resume"], paths["final"]) if p.is_file()]
    if saved:
        seen = weights_images_seen(saved[-1])
        at = (f" (iteration {start_iteration(seen, cfg.batch)})" if seen is not None else "")
        hint = (f"`lesion train yolo ... --out {run_dir} --resume` continues from "
                f"{saved[-1]}{at}")
    else:
        every = "100 iterations" if fork == "pjreddie" else "savelast (100) iterations"
        hint = (f"darknet saved no weights yet ({FORK_NAMES[fork]} saves "
                f"{paths['resume'].name} every {every}): run it again without --resume")
    name = signal_name(outcome.signum)
    return DarknetInterrupted(
        f"darknet training ({FORK_NAMES[fork]}) stopped by {name} {where}; darknet got "
        f"{name} too and has exited ({describe_returncode(outcome.returncode)}); {hint}. "
        f"Log: {outcome.log_path}", outcome.signum)


def _check_initial_weights(weights: Path, cfg: CfgSummary, clear: bool) -> list[str]:
    """Refuse initial weights darknet would misread or train nothing from; warn when they
    make darknet start at a later iteration."""
    problems = weights_problems(weights, cfg.cfg, cfg.path, whole=False)
    if problems:
        raise DarknetInputError(problems, "weights")
    seen = weights_images_seen(weights) or 0
    first = start_iteration(seen, cfg.batch)
    if clear or first == 0:
        return []
    if first >= cfg.max_batches:
        raise DarknetOptionError(
            f"{weights} has been trained on {seen} images = {first} iterations of "
            f"batch={cfg.batch}, which reaches max_batches={cfg.max_batches} of {cfg.path}: "
            "darknet would continue counting from there and train 0 iterations. Add --clear "
            "to train from these weights with the count restarted at 0 (darknet's -clear), or "
            "raise max_batches; to continue a run of lesion, use --resume on its folder")
    return [f"{weights} has been trained on {seen} images, so darknet starts at iteration "
            f"{first + 1} of {cfg.max_batches} (burn_in and steps counted from there); add "
            "--clear to start from iteration 1"]


def _resume_weights(paths: dict[str, Path], metrics_path: Path, cfg: CfgSummary,
                    fork: str, log_path: Path) -> Path:
    final, last = paths["final"], paths["resume"]
    if final.is_file():
        done = 0
        if metrics_path.is_file():
            rows = runlog.read_metrics(metrics_path)
            done = max((r["step"] for r in rows if r["step"] is not None), default=0)
        seen = weights_images_seen(final)
        if seen is not None and cfg.batch > 0:
            done = max(done, seen // cfg.batch)  # darknet's own count (cfg batch = images/iter)
        if done >= cfg.max_batches:
            raise DarknetOptionError(f"the run already reached max_batches={cfg.max_batches} "
                                     f"({final}); raise max_batches in the cfg to train longer")
        return final
    if last.is_file():
        return last
    started = (" (the run stopped before darknet saved any)" if log_path.is_file() else "")
    raise DarknetOptionError(f"nothing to resume from: no {last} (darknet writes it every 100 "
                             f"iterations) and no {final}{started}; run it again without "
                             "--resume")


class _TrainState:
    """Turns iteration events into metrics.csv rows and progress updates.

    A row is held back until the next iteration (or the end), so that the mAP darknet prints
    after an iteration's line lands in that iteration's row.
    """

    def __init__(self, metrics_path: Path, n_train: int, max_batches: int, resume: bool,
                 show_progress: bool, map_column: str | None = "val_mAP50"):
        self.map_column = map_column
        self.metrics_path = metrics_path
        self.n_train = max(n_train, 1)
        self.max_batches = max_batches
        self.resume = resume
        self.show_progress = show_progress
        self.writer: runlog.MetricsWriter | None = None
        self.progress: _TrainProgress | None = None
        self.pending: dict | None = None
        self.previous = None
        self.first = None

    def on_event(self, event) -> None:
        if isinstance(event, dlog.Iteration):
            self._iteration(event)
        elif isinstance(event, dlog.MapResult) and event.kind == "train" and self.pending:
            column = _MAP_COLUMNS.get(round(event.iou_threshold, 6))
            if column is not None and column == self.map_column:
                self.pending[column] = event.map

    def _iteration(self, it) -> None:
        if self.first is None:
            self.first = it.iteration
            if self.resume and self.metrics_path.exists():
                runlog.truncate_metrics(self.metrics_path, it.iteration)
            self.writer = runlog.MetricsWriter(self.metrics_path)
            self.progress = _TrainProgress(self.max_batches - it.iteration + 1, "darknet train",
                                           unit="iterations", enabled=self.show_progress)
            self.progress.__enter__()
        self._flush_pending()
        previous = self.previous
        if previous is not None and it.iteration > previous.iteration:
            step_images = (it.images - previous.images) / (it.iteration - previous.iteration)
        else:
            step_images = it.images / it.iteration if it.iteration else float("nan")
        per_s = (step_images / it.seconds
                 if it.seconds and it.seconds > 0 and np.isfinite(step_images) else None)
        self.pending = {"step": it.iteration, "epoch": it.images / self.n_train,
                        "loss": it.loss, "avg_loss": it.avg_loss, "lr": it.rate,
                        "images": it.images, "seconds": it.seconds, "images_per_s": per_s}
        self.previous = it
        done = it.iteration - self.first + 1
        self.progress.set_description(f"darknet train: iteration {it.iteration}/"
                                      f"{self.max_batches}, avg loss {it.avg_loss:.4g}")
        if done > self.progress.done:
            self.progress.advance(done - self.progress.done)

    def _flush_pending(self) -> None:
        if self.pending is not None and self.writer is not None:
            self.writer.write(self.pending)
        self.pending = None

    def close(self) -> None:
        self._flush_pending()
        if self.writer is not None:
            self.writer.close()
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
