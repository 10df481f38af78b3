"""One training epoch of Faster R-CNN: the optimiser step (AMP, gradient clipping, the
learning-rate schedule with its warm-up) over every batch of this rank's loader, and the epoch's
loss and speed summed over the ranks.

Like ``train_one_epoch`` of torchvision's detection references; what differs: a non-finite loss
stops every rank before any weight changes (:class:`TrainError`), the learning rate is set per
step from the step count (:class:`~deeplesion_cli.frcnn.optim.LrSchedule`), and time spent waiting
for the loader is measured (the ``data_wait`` column of metrics.csv).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from deeplesion_cli.errors import LesionRunError
from deeplesion_cli.frcnn.data import to_model_input
from deeplesion_cli.frcnn.distributed import Dist, all_reduce_sum
from deeplesion_cli.progress import Progress

#: torchvision's Faster R-CNN losses; their sum is the training loss
LOSS_PARTS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


class TrainError(LesionRunError):
    """Training stopped (e.g. a non-finite loss); the message says where and what was kept."""


def train_step(model, optimizer, scaler, inputs, targets, *, amp: bool = False,
               clip_grad: float | None = None, where: str = "", kept: str = "",
               dist_info: Dist | None = None) -> list[float]:
    """One optimiser step on a batch (``inputs``/``targets`` as
    :func:`~deeplesion_cli.frcnn.data.to_model_input` makes them); returns ``[loss, *LOSS_PARTS]``
    as floats. A non-finite loss raises :class:`TrainError` before any weight changes
    (``where``/``kept`` go into its message). ``clip_grad``: maximum L2 norm of all gradients."""
    device = inputs[0].device
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp):
        loss_dict = model(inputs, targets)
    loss = sum(loss_dict[k] for k in LOSS_PARTS)
    values = [float(loss.detach())] + [float(loss_dict[k].detach()) for k in LOSS_PARTS]
    finite = all(math.isfinite(v) for v in values)
    if dist_info is not None and dist_info.enabled:
        # every rank must stop together, or the others wait forever in the gradient all-reduce
        finite = all_reduce_sum([0.0 if finite else 1.0], device, dist_info)[0] == 0.0
        if finite is False and all(math.isfinite(v) for v in values):
            raise TrainError(f"non-finite loss on another rank at {where}; {kept}.")
    if not finite:
        parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_PARTS, values[1:]))
        raise TrainError(f"non-finite loss {values[0]} at {where} ({parts}); {kept}. Lower "
                         "--lr, or add --clip-grad or --warmup-steps.")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return values


@dataclass
class EpochTotals:
    """What one epoch of training did, all ranks together."""

    step: int                   # optimiser steps done after the epoch, since the run's start
    ema_loss: float | None      # exponential mean (weight 0.1) of the step losses, run-long
    lr: float                   # learning rate of the epoch's last step
    loss: float                 # mean step loss over all ranks' batches
    parts: dict                 # the same for each of LOSS_PARTS
    images: int                 # images trained on in this epoch, all ranks
    seconds: float              # wall time of the epoch on this rank
    data_wait: float            # share of the epoch's time spent waiting for the loader (0..1)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(model, optimizer, scaler, loader, schedule, *, epoch: int, epochs: int,
                    step: int, ema_loss: float | None, device, dist_info: Dist, amp: bool,
                    clip_grad: float | None, kept: str, log: Callable[..., None],
                    log_every: int | None, images: int, show_progress: bool,
                    stop=None) -> EpochTotals:
    """Train ``model`` (DDP-wrapped under torchrun) on every batch of ``loader``.

    ``epoch`` is 0-based (of ``epochs``), ``step`` the optimiser steps done before it and
    ``ema_loss`` the running loss carried over; ``schedule`` sets each step's learning rate;
    ``kept`` says, in a :class:`TrainError`, which checkpoint survives. ``log`` gets a line every
    ``log_every`` steps (rank 0); ``images`` (this rank's images per epoch) sizes the progress
    bar. The caller seeds the epoch and sets the sampler's epoch first. ``stop`` (a
    :class:`~deeplesion_cli.frcnn.interrupt.StopRequest`) is looked at before every step, by all
    ranks together: :class:`~deeplesion_cli.frcnn.interrupt.Interrupted` abandons the epoch.
    """
    from deeplesion_cli.frcnn.interrupt import Interrupted

    main = dist_info.is_main
    model.train()
    sums = dict.fromkeys(("loss",) + LOSS_PARTS, 0.0)
    n_batches = n_images = 0
    wait_s = 0.0
    epoch_start = time.monotonic()
    lr = schedule.set(step)
    with Progress(images, f"epoch {epoch + 1}/{epochs}",
                  enabled=show_progress and main) as progress:
        t_ready = time.monotonic()
        for batch_images, targets in loader:
            wait_s += time.monotonic() - t_ready
            if stop is not None and stop.agreed(device, dist_info):
                raise Interrupted(f"in epoch {epoch + 1} at step {step + 1}", stop.signum)
            lr = schedule.set(step)
            inputs, tgts = to_model_input(batch_images, targets, device, non_blocking=True)
            values = train_step(model, optimizer, scaler, inputs, tgts, amp=amp,
                                clip_grad=clip_grad, where=f"epoch {epoch + 1}, step {step + 1}",
                                kept=kept, dist_info=dist_info)
            step += 1
            n_batches += 1
            n_images += len(batch_images)
            sums["loss"] += values[0]
            for k, v in zip(LOSS_PARTS, values[1:]):
                sums[k] += v
            ema_loss = values[0] if ema_loss is None else 0.9 * ema_loss + 0.1 * values[0]
            progress.advance(len(batch_images), info=f"step {step}, loss {values[0]:.4f}, "
                                                     f"lr {lr:.3g}")
            if main and log_every and step % log_every == 0:
                log(f"epoch {epoch + 1} step {step} loss {values[0]:.5f} "
                    f"avg {ema_loss:.5f} lr {lr:.4g}")
            t_ready = time.monotonic()
    seconds = time.monotonic() - epoch_start
    totals = all_reduce_sum([sums[k] for k in sums] + [n_batches, n_images, wait_s], device,
                            dist_info)
    n_batches_all, n_images_all = totals[-3], int(totals[-2])
    mean = {k: totals[i] / max(n_batches_all, 1) for i, k in enumerate(sums)}
    wait_share = (totals[-1] / dist_info.world_size) / max(seconds, 1e-9)
    return EpochTotals(step, ema_loss, lr, mean["loss"], {k: mean[k] for k in LOSS_PARTS},
                       n_images_all, seconds, wait_share)
