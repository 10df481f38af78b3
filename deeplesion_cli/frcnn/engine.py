"""``lesion train frcnn``: :func:`train`, the loop over epochs that ties the pieces together.

One call of :func:`train` runs on one process; under ``torchrun`` every rank calls it and the
ranks cooperate through ``torch.distributed`` (DistributedDataParallel; each rank's sampler holds
its own shard; losses, image counts and detections are reduced or gathered to rank 0, which alone
writes files). The pieces, as in torchvision's detection references:

=========================  =====================================================================
``frcnn/options.py``       :class:`TrainOptions`, the run's every knob
``frcnn/setup.py``         device, threads, seeds, determinism; datasets, sampler, loader, model
``frcnn/distributed.py``   rank, process group, DDP wrapper, reduce/gather/broadcast
``frcnn/optim.py``         optimiser and learning-rate schedule
``frcnn/epoch.py``         ``train_one_epoch``: the step with AMP, clipping, warm-up
``frcnn/evaluate.py``      per-epoch metrics of a training sample and the val split
``frcnn/checkpoint.py``    ``last.pt``/``best.pt``: what they hold, and resuming from one
``frcnn/records.py``       ``args.json``, ``metrics.csv`` rows, ``train.log`` lines
``frcnn/interrupt.py``     SIGTERM/SIGHUP/SIGINT: stop at a step boundary, exit 128 + signal
=========================  =====================================================================

Determinism and resume. Nothing depends on random state carried over from an earlier epoch: the
model is initialised after ``torch.manual_seed(seed)``, and epoch ``e`` starts by seeding torch,
numpy and ``random`` with a value derived from ``(seed, e, rank)``; the samplers' orders are
functions of ``(seed, e, rank, world_size)``. A run resumed from ``last.pt`` (saved at the end of an
epoch with model, optimiser, AMP scaler, step and image counters; the learning rate follows from
the step) therefore continues exactly as the uninterrupted run would have; with
``--deterministic`` on CPU the weights are equal bit for bit (tested). ``best.pt`` holds the
weights only (:func:`ckpt.weights_only`): it is never resumed from.

Per epoch (rank 0): a row in ``metrics.csv`` (:mod:`deeplesion_cli.runlog`: the epoch's mean loss
and its four parts, learning rate, seconds, images/s, share of time waiting for data, and mAP50,
mAP75, mAP, mean IoU, FROC sensitivity at 4 FP/image on a fixed sample of the training set and on
the validation split, computed by the toolkit's own evaluator), ``last.pt`` and, when the
selection metric improved, ``best.pt``, with ``--save-every N`` every N-th (and the last) epoch's
weights in ``epochs/epoch_0010.pt`` (written before ``last.pt``), a line in ``train.log``, then the caller's ``on_epoch``
(which may draw figures: training itself draws nothing). The metrics row is written before the
checkpoint: a run killed between the two re-does that epoch on resume, and the row is replaced
(rows after the checkpoint's step are dropped on resume).

Faults. Checkpoints are written atomically and durably (:func:`ckpt.save`); ``best.pt`` is written
before ``last.pt``, and the best record (in ``last.pt`` and :class:`TrainResult`) changes only once
``best.pt`` is on disk. A failed save (disk full, read-only) stops the run with
:class:`~deeplesion_cli.frcnn.checkpoint.CheckpointSaveError` naming the file and the errno, and
train.log says which checkpoints were kept; a resumed run checks its best record against
``best.pt`` (:func:`ckpt.check_best`). SIGTERM, SIGHUP and SIGINT stop the run at the next step
boundary (:mod:`deeplesion_cli.frcnn.interrupt`): the epoch in progress is abandoned, ``last.pt``
keeps the last completed one, train.log names the epoch reached, and
:class:`~deeplesion_cli.frcnn.interrupt.Interrupted` carries the exit code 128 + the signal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from deeplesion_cli import atomic, runlog
from deeplesion_cli.errors import LesionError
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn.data import DataError, read_manifest, render_of
from deeplesion_cli.frcnn.distributed import (Dist, backend_name, barrier, destroy_process_group,
                                              device_for_rank, dist_from_env, wrap_model)
from deeplesion_cli.frcnn.epoch import LOSS_PARTS, TrainError, train_one_epoch, train_step
from deeplesion_cli.frcnn.evaluate import evaluate_epoch
from deeplesion_cli.frcnn.interrupt import Interrupted, StopRequest, stop_on_signals
from deeplesion_cli.frcnn.optim import LrSchedule, build_optimizer
from deeplesion_cli.frcnn.options import (DEFAULT_LR, RESUMABLE_OVERRIDES, SELECT_METRICS,
                                          OptionError, TrainOptions)
from deeplesion_cli.frcnn.records import (EpochStats, TrainLog, args_doc, epoch_line, fmt,
                                          metrics_row)
from deeplesion_cli.frcnn.setup import (TrainData, build_data, build_scaler,
                                        build_training_model, epoch_seed, make_loader,
                                        model_args, seed_everything, setup_process)
from deeplesion_cli.frcnn.threads import ThreadsError, check_resumed_threads

# names callers import from here (cli, matrix, demo, tests, benchmarks)
__all__ = ["train", "TrainResult", "EpochEvent", "EpochStats", "TrainOptions", "OptionError",
           "TrainError", "DEFAULT_LR", "SELECT_METRICS", "RESUMABLE_OVERRIDES", "LOSS_PARTS",
           "train_step", "Dist", "dist_from_env", "Interrupted"]

#: a metric for a log line (``cli`` prints the last epoch with it)
_fmt = fmt


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_value: float | None
    select: str
    last_checkpoint: Path
    best_checkpoint: Path | None
    metrics_csv: Path
    history: list[EpochStats] = field(default_factory=list)
    resumed_from_epoch: int = 0
    warnings: list[str] = field(default_factory=list)   # for the user (the CLI prints them)


@dataclass
class EpochEvent:
    """What :func:`train` tells its ``on_epoch`` after each epoch (rank 0, once the epoch's
    metrics.csv row, ``last.pt`` and train.log line are written)."""

    run_dir: Path                   # the run folder
    stats: EpochStats               # the epoch just finished
    history: list[EpochStats]       # every epoch of this call so far, this one last
    metrics_path: Path              # run_dir / metrics.csv, the whole run's rows
    options: TrainOptions
    improved: bool                  # this epoch is the new best.pt
    log: Callable[[str], None]      # writes a line to the run's train.log


# ---------------------------------------------------------------------------- the loop

def train(prepared: Path, run_dir: Path, options: TrainOptions | None = None, *,
          resume: bool = False, overrides: dict | None = None, stop_after: int | None = None,
          show_progress: bool = True, dist_info: Dist | None = None,
          on_epoch: Callable[[EpochEvent], None] | None = None) -> TrainResult:
    """Train on ``prepared``'s train split, evaluate on a training sample and the val split each
    epoch, and write the run folder ``run_dir`` (module docstring).

    ``resume=True`` continues ``run_dir/last.pt`` with the options saved in the run; ``overrides``
    may change only :data:`RESUMABLE_OVERRIDES` (e.g. ``epochs`` to train longer) and must not
    contradict the rest (:class:`OptionError` naming the option). Raising ``epochs`` on resume
    stretches a ``step``/``cosine`` schedule from there on (it spans ``epochs``).
    ``stop_after`` ends this call after that epoch (1-based) while the schedule still spans
    ``epochs``: a job on a time-limited queue trains in slices, each continued with ``resume``,
    and ends exactly where one long call would have.
    ``on_epoch`` is called on rank 0 after each epoch with an :class:`EpochEvent` (the command
    line draws curves.png with it); an exception in it is logged to train.log and training goes
    on. SIGTERM, SIGHUP or SIGINT during the call raise :class:`Interrupted` at the next step
    boundary (module docstring); the previous handlers are restored on return.
    """
    # the run's --threads holds for this call only: torch's thread count is process-wide
    threads_before = torch.get_num_threads()
    stop = StopRequest()
    try:
        with stop_on_signals(stop):
            return _train(Path(prepared), Path(run_dir), options, resume=resume,
                          overrides=overrides, stop_after=stop_after,
                          show_progress=show_progress, dist_info=dist_info or dist_from_env(),
                          on_epoch=on_epoch, stop=stop)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _Run:
    """Everything one call of :func:`train` trains with, built before the first epoch."""

    prepared: Path
    run_dir: Path
    options: TrainOptions
    dist_info: Dist
    device: torch.device
    threads: int
    config_hash: str | None
    data: TrainData
    model: torch.nn.Module          # unwrapped: saved and evaluated
    train_model: torch.nn.Module    # DDP-wrapped under torchrun: trained
    stored_args: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    counters: ckpt.Counters
    show_progress: bool
    on_epoch: Callable[[EpochEvent], None] | None
    stop: StopRequest
    render: dict | None = None      # the prepared folder's pixel options (data.render_of)
    log: TrainLog | None = None
    writer: runlog.MetricsWriter | None = None
    saved_epoch: int = 0            # epoch of the last.pt on disk (0: none yet)
    current_epoch: int = 0          # the epoch being trained (1-based)
    warnings: list[str] = field(default_factory=list)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"


def _train(prepared: Path, run_dir: Path, options: TrainOptions | None, *, resume: bool,
           overrides: dict | None, stop_after: int | None, show_progress: bool,
           dist_info: Dist, on_epoch, stop: StopRequest) -> TrainResult:
    state, options = _start_or_resume(run_dir, options, resume, overrides)
    device = device_for_rank(options.device, dist_info)  # a bad --device before any data
    manifest = read_manifest(prepared)
    if state is not None and state.get("prepared_config_hash") != manifest.get("config_hash"):
        raise OptionError(f"{prepared} is not the prepared folder this run was trained on "
                          f"(config_hash {manifest.get('config_hash')!r}, the run's "
                          f"{state.get('prepared_config_hash')!r}); resume on the same folder")
    threads = setup_process(options, state, dist_info, device)
    data = build_data(prepared, manifest, options, dist_info)
    report: list[str] = []
    model, stored_args = build_training_model(options, model_args(options, data), state, device,
                                              report)
    train_model = wrap_model(model, device, dist_info)
    optimizer = build_optimizer(model, options)
    scaler = build_scaler(options, device)
    counters = ckpt.restore(state, optimizer, scaler, options.select)
    run = _Run(prepared, run_dir, options, dist_info, device, threads,
               manifest.get("config_hash"), data, model, train_model, stored_args, optimizer,
               scaler, counters, show_progress, on_epoch, stop, render_of(manifest),
               saved_epoch=counters.epoch)
    if state is not None:  # the best record must match best.pt on disk
        mismatch = ckpt.check_best(run_dir, counters, options.select)
        if mismatch:
            run.warnings.append(mismatch)
    start_epoch = counters.epoch
    result = TrainResult(run_dir, start_epoch, counters.best["epoch"], counters.best["value"],
                         options.select, run.last_path,
                         run.best_path if counters.best["epoch"] is not None else None,
                         run.metrics_path, resumed_from_epoch=start_epoch,
                         warnings=run.warnings)
    try:
        _open_run_folder(run, resumed=state is not None, report=report)
        loader = make_loader(data, options, device)
        schedule = LrSchedule(optimizer, options, data.steps_per_epoch)
        end_epoch = options.epochs if stop_after is None else min(options.epochs, stop_after)
        for epoch in range(start_epoch, end_epoch):
            _epoch(run, epoch, loader, schedule, result.history)
            result.epochs_done = epoch + 1
            if epoch + 1 < end_epoch and stop.agreed(device, dist_info):
                raise Interrupted(f"after epoch {epoch + 1}", stop.signum)
        if stop.requested and run.log is not None:
            run.log(f"{stop.name} received after the last epoch of this call: nothing was lost")
    except Interrupted as exc:
        raise _stopped(run, exc, exc.signum) from None
    except Exception as exc:
        if not stop.requested or isinstance(exc, LesionError):
            raise
        # what the signal broke on its way (e.g. a DataLoader worker killed by it)
        raise _stopped(run, exc, stop.signum) from None
    finally:
        if run.writer is not None:
            run.writer.close()
        if run.log is not None:
            run.log.close()
        destroy_process_group(dist_info)
    best = run.counters.best
    result.best_epoch, result.best_value = best["epoch"], best["value"]
    result.best_checkpoint = run.best_path if best["epoch"] is not None else None
    return result


def _start_or_resume(run_dir: Path, options: TrainOptions | None, resume: bool,
                     overrides: dict | None) -> tuple[dict | None, TrainOptions]:
    """``(last.pt's state or None, the run's checked options)``: a new run refuses a folder that
    holds one; a resumed run takes its saved options with the allowed ``overrides``."""
    last_path = run_dir / "last.pt"
    state = None
    if resume:
        if not last_path.is_file():
            best_path = run_dir / "best.pt"
            if best_path.is_file():
                raise DataError(
                    f"{last_path} is missing: nothing to resume. {best_path} holds model weights "
                    "only (no optimiser, AMP scaler or sampler state), so a run cannot resume "
                    "from it: --resume needs last.pt. Predict with best.pt, or start a new run "
                    f"from its weights (--weights {best_path}, another --out)")
            raise DataError(f"{last_path}: nothing to resume (no last.pt in the run folder)")
        state = ckpt.load_for_resume(last_path)
        options = TrainOptions.from_json(state["options"])
        overrides = dict(overrides or {})
        try:
            check_resumed_threads(overrides.pop("threads", None), state.get("threads"))
        except ThreadsError as exc:
            raise OptionError(str(exc)) from None
        for name, value in overrides.items():
            if getattr(options, name) == value:
                continue
            if name not in RESUMABLE_OVERRIDES:
                raise OptionError(f"--{name.replace('_', '-')} {value!r} differs from the resumed "
                                  f"run's {getattr(options, name)!r}; a resumed run keeps its "
                                  f"options (may change: {', '.join(sorted(RESUMABLE_OVERRIDES))})")
            setattr(options, name, value)
    else:
        options = options or TrainOptions()
        if last_path.exists():
            raise DataError(f"{run_dir} already holds a run (last.pt); continue it with --resume "
                            "or choose another --out")
        if (run_dir / "best.pt").exists():
            raise DataError(f"{run_dir} already holds a run's best.pt (and no last.pt, so it "
                            "cannot be resumed); choose another --out, or move best.pt away")
    options.check()
    return state, options


def _open_run_folder(run: _Run, *, resumed: bool, report: list[str]) -> None:
    """Rank 0: create the run folder, open train.log and metrics.csv (dropping rows a resumed
    run will redo), write args.json and the start lines. Other ranks get a silent log."""
    main = run.dist_info.is_main
    options, data = run.options, run.data
    if main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(run.run_dir)
        if (run.run_dir / ckpt.EPOCHS_DIR).is_dir():
            atomic.remove_stale_temps(run.run_dir / ckpt.EPOCHS_DIR)
    run.log = log = TrainLog(run.run_dir / "train.log" if main else None,
                             echo=run.show_progress and main)
    if not main:
        return
    step = run.counters.step
    if resumed:
        dropped = runlog.truncate_metrics(run.metrics_path, step + 1)
        if dropped:
            log(f"resume: dropped {dropped} metrics row(s) after step {step}")
    run.writer = runlog.MetricsWriter(run.metrics_path)
    doc = args_doc(prepared=run.prepared, config_hash=run.config_hash, options=options,
                   model_args=run.stored_args, class_names=data.classes.names,
                   world_size=run.dist_info.world_size, device=run.device,
                   steps_per_epoch=data.steps_per_epoch, train_images=data.train_images,
                   val_images=len(data.val), train_eval_images=len(data.train_eval),
                   threads=run.threads, render=run.render)
    atomic.write_text(run.run_dir / "args.json", json.dumps(doc, indent=2) + "\n")
    if not resumed:
        log(f"start: {options.arch} ({options.pretrained}), {data.train_images} train / "
            f"{len(data.val)} val images, input {data.size_px} px, {data.steps_per_epoch} "
            f"steps/epoch x {run.dist_info.world_size} rank(s), device {run.device}, "
            f"{run.threads} CPU thread(s)", echo=True)
    else:
        log(f"resume from {run.last_path} at epoch {run.counters.epoch}, step {step}", echo=True)
    for line in report:
        log(f"weights: {line}")
    if run.dist_info.enabled:
        log(f"distributed: {backend_name()} process group, {run.dist_info.world_size} "
            "rank(s), DistributedDataParallel")
    if len(data.val) == 0:
        run.warnings.append(
            f"the val split of {run.prepared} is empty: no validation metrics, so no "
            f"best-checkpoint selection (--select {options.select}) and no best.pt; "
            "`lesion predict frcnn` on this run uses last.pt")
    for message in run.warnings:
        log(f"warning: {message}", echo=True)


def _stopped(run: _Run, exc: Exception, signum: int) -> Interrupted:
    """The :class:`Interrupted` of a run stopped by signal ``signum`` (rank 0 logs it): where it
    stopped, what ``last.pt`` holds, how to go on."""
    from deeplesion_cli.frcnn.interrupt import signal_name

    if isinstance(exc, Interrupted):
        where = str(exc)
        if where.startswith("at once"):
            where += f" in epoch {run.current_epoch}, which is abandoned"
        elif not where.startswith("after"):
            where += f" (epoch {run.current_epoch} abandoned: a run resumes from an epoch's end)"
    else:
        where = (f"in epoch {run.current_epoch}, which is abandoned "
                 f"({type(exc).__name__}: {exc})")
    if run.saved_epoch:
        kept = (f"{run.last_path} holds epoch {run.saved_epoch} of {run.options.epochs}: "
                "continue with --resume")
    else:
        kept = ("no epoch was completed, so nothing was saved: run the same command again "
                "(without --resume)")
    message = f"stopped by {signal_name(signum)} {where}; {kept}"
    if run.log is not None:
        run.log(message)
    return Interrupted(message, signum)


def _save_failed(run: _Run, exc: ckpt.CheckpointSaveError, epoch: int,
                 best_epoch: int | None, best_written: bool) -> ckpt.CheckpointSaveError:
    """Rank 0: the error of a checkpoint (or metrics row) of epoch ``epoch`` that could not be
    written, saying what was kept (``best_epoch``: the epoch ``best.pt`` holds; ``best_written``:
    saved in this epoch, before the failure); logged to train.log."""
    kept = [f"{run.last_path} (epoch {run.saved_epoch})" if run.saved_epoch
            else "no last.pt (no epoch saved yet)"]
    if best_epoch is not None:
        kept.append(f"{run.best_path} (epoch {best_epoch}"
                    + (", saved before the failure)" if best_written else ")"))
    message = (f"{exc}; epoch {epoch} is not saved; kept {' and '.join(kept)}; free space (or "
               "make the folder writable) and continue with --resume")
    try:
        run.log(f"error: {message}")
    except OSError:
        pass
    return ckpt.CheckpointSaveError(message, exc.errno)


def _epoch(run: _Run, epoch: int, loader, schedule: LrSchedule,
           history: list[EpochStats]) -> None:
    """Epoch ``epoch`` (0-based): train, evaluate, and (rank 0) record and checkpoint it."""
    options, dist_info, counters = run.options, run.dist_info, run.counters
    run.current_epoch = epoch + 1
    seed_everything(epoch_seed(options.seed, epoch, dist_info.rank))
    run.data.sampler.set_epoch(epoch)
    kept = (f"the last good checkpoint {run.last_path} (epoch {run.saved_epoch}) is kept"
            if run.saved_epoch else "no checkpoint was saved yet")
    totals = train_one_epoch(
        run.train_model, run.optimizer, run.scaler, loader, schedule, epoch=epoch,
        epochs=options.epochs, step=counters.step, ema_loss=counters.ema_loss, device=run.device,
        dist_info=dist_info, amp=options.amp, clip_grad=options.clip_grad, kept=kept,
        log=run.log, log_every=options.log_every, images=run.data.epoch_images,
        show_progress=run.show_progress, stop=run.stop)
    counters.step, counters.ema_loss = totals.step, totals.ema_loss
    counters.images += totals.images
    eval_bs = options.eval_batch_size or max(1, options.batch_size * 2)
    train_eval, val_eval, eval_seconds = evaluate_epoch(
        run.model, run.data.train_eval, run.data.val, run.device, eval_bs, options.workers,
        dist_info, run.stop)
    stats = EpochStats(epoch + 1, totals.step, counters.images, totals.loss, totals.parts,
                       totals.lr, totals.seconds, totals.images_per_s, totals.data_wait,
                       train_eval, val_eval, eval_seconds)
    history.append(stats)
    counters.epoch = epoch + 1
    previous_best = dict(counters.best)
    improved = _update_best(counters, val_eval, options.select)
    if dist_info.is_main:
        _record(run, stats, improved, previous_best)
        _announce(run, stats, history, improved)
    barrier(dist_info)
    run.saved_epoch = stats.epoch


def _update_best(counters: ckpt.Counters, val_eval: dict | None, select: str) -> bool:
    """Make epoch ``counters.epoch`` the best when its val metric ``select`` beats the best so
    far; whether it did."""
    value = (val_eval or {}).get(SELECT_METRICS[select])
    best = counters.best
    if value is not None and (best["value"] is None or value > best["value"]):
        counters.best = {"metric": select, "value": value, "epoch": counters.epoch}
        return True
    return False


def _record(run: _Run, stats: EpochStats, improved: bool, previous_best: dict) -> None:
    """Rank 0: the epoch's metrics.csv row, then best.pt (when ``improved``), then
    ``epochs/epoch_NNNN.pt`` (``--save-every``), then last.pt, then its train.log line. The best record (``run.counters.best``, saved in both) stands only once
    best.pt is on disk: a failed best.pt save restores ``previous_best``. A failed write raises
    :class:`~deeplesion_cli.frcnn.checkpoint.CheckpointSaveError` saying what was kept."""
    old_best = previous_best.get("epoch")
    try:
        run.writer.write(metrics_row(stats, run.counters.ema_loss))
    except OSError as exc:
        run.counters.best = previous_best
        error = ckpt.CheckpointSaveError(
            f"cannot write {run.metrics_path}: {ckpt.describe_os_error(exc)}", exc.errno)
        raise _save_failed(run, error, stats.epoch, old_best, False) from None
    state = ckpt.training_state(
        model=run.model, model_args=run.stored_args, classes=run.data.classes,
        options=run.options, counters=run.counters, optimizer=run.optimizer, scaler=run.scaler,
        sampler=run.data.sampler, threads=run.threads, prepared_config_hash=run.config_hash,
        prepared_render=run.render)
    if improved:  # best.pt: the weights and what predicting needs (ckpt.weights_only)
        try:
            ckpt.save(run.best_path, ckpt.weights_only(state))
        except ckpt.CheckpointSaveError as exc:
            run.counters.best = previous_best
            raise _save_failed(run, exc, stats.epoch, old_best, False) from None
    if ckpt.save_epoch_due(stats.epoch, run.options.epochs, run.options.save_every):
        # --save-every: this epoch's weights, before last.pt (a failure re-does the epoch)
        kept = ckpt.epoch_path(run.run_dir, stats.epoch)
        try:
            kept.parent.mkdir(exist_ok=True)
            ckpt.save(kept, ckpt.weights_only(state))
        except OSError as exc:   # the folder cannot be made
            error = ckpt.CheckpointSaveError(
                f"cannot write {kept}: {ckpt.describe_os_error(exc)}", exc.errno)
            raise _save_failed(run, error, stats.epoch, stats.epoch if improved else old_best,
                               improved) from None
        except ckpt.CheckpointSaveError as exc:
            raise _save_failed(run, exc, stats.epoch, stats.epoch if improved else old_best,
                               improved) from None
    try:
        ckpt.save(run.last_path, state)
    except ckpt.CheckpointSaveError as exc:
        raise _save_failed(run, exc, stats.epoch, stats.epoch if improved else old_best,
                           improved) from None
    run.saved_epoch = stats.epoch
    run.log(epoch_line(stats, run.options.epochs, improved), echo=True)


def _announce(run: _Run, stats: EpochStats, history: list[EpochStats], improved: bool) -> None:
    """Rank 0: the caller's ``on_epoch``. Its failure is logged, never raised: the epoch is
    already saved, and under torchrun the other ranks wait at the barrier for this one."""
    if run.on_epoch is None:
        return
    try:
        run.on_epoch(EpochEvent(run.run_dir, stats, list(history), run.metrics_path,
                                run.options, improved, run.log))
    except Exception as exc:
        run.log(f"warning: on_epoch after epoch {stats.epoch} failed: {exc}")
