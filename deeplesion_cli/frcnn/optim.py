"""The optimiser of ``lesion train frcnn`` and its learning-rate schedule.

The learning rate is a pure function of the optimiser step (:func:`lr_factor`), set on the
optimiser before every step (:class:`LrSchedule`): nothing about it is carried in a scheduler
object, so a resumed run continues the schedule from the step count in ``last.pt`` alone.
"""

from __future__ import annotations

import math

import torch

from deeplesion_cli.frcnn.options import TrainOptions


def build_optimizer(model, options: TrainOptions):
    """SGD with momentum or Adam over ``model``'s trainable parameters, at the base rate
    (``--lr``, else :data:`~deeplesion_cli.frcnn.options.DEFAULT_LR` of the optimiser)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.resolved_lr(), momentum=options.momentum,
                               weight_decay=options.weight_decay)
    return torch.optim.Adam(params, lr=options.resolved_lr(), weight_decay=options.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, options: TrainOptions) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based): warm-up times
    the schedule (``step``: x gamma at each milestone epoch; ``cosine``: half cosine from 1 to 0
    over all steps)."""
    factor = 1.0
    if options.warmup_steps and step < options.warmup_steps:
        alpha = step / options.warmup_steps
        factor = options.warmup_factor * (1 - alpha) + alpha
    epoch = step // max(steps_per_epoch, 1)
    if options.scheduler == "step":
        milestones = options.lr_steps or default_lr_steps(options.epochs)
        factor *= options.lr_gamma ** sum(epoch >= m for m in milestones)
    elif options.scheduler == "cosine":
        total = max(options.epochs * steps_per_epoch, 1)
        factor *= 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return factor


def default_lr_steps(epochs: int) -> tuple[int, ...]:
    """torchvision's reference recipe decays at epochs 16 and 22 of 26: 2/3 and 8/9 of the run."""
    return tuple(sorted({max(1, round(epochs * 2 / 3)), max(1, round(epochs * 8 / 9))}))


class LrSchedule:
    """Sets ``optimizer``'s learning rate for a step: base rate x :func:`lr_factor`."""

    def __init__(self, optimizer, options: TrainOptions, steps_per_epoch: int):
        self.optimizer = optimizer
        self.options = options
        self.steps_per_epoch = steps_per_epoch
        self.base_lr = options.resolved_lr()

    def set(self, step: int) -> float:
        """Set and return the learning rate of optimiser step ``step`` (0-based)."""
        lr = self.base_lr * lr_factor(step, self.steps_per_epoch, self.options)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
