"""``last.pt`` / ``best.pt``: what a Faster R-CNN run saves, and how a model is rebuilt from it.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read (tensors, numbers,
strings, lists and dicts only: nothing in it executes code when loaded):

``format`` (1), ``tool``/``version``, ``model_args`` (the keyword arguments of
:func:`deeplesion_cli.frcnn.model.build_model` without weights, enough to rebuild the identical
module), ``model`` (its ``state_dict``, unwrapped from DDP), ``classes`` (``names`` and
``category_ids`` in class-index order; model label k + 1 is class k), ``options`` (the run's
:class:`~deeplesion_cli.frcnn.engine.TrainOptions` as a dict), ``epoch`` (epochs completed),
``step`` (optimiser steps done), ``images`` (images trained on), ``optimizer``, ``scheduler``,
``scaler`` (AMP ``GradScaler``; empty when AMP is off), ``sampler`` (its ``state_dict``),
``rng`` (torch CPU and CUDA generator states at the save), ``best`` (selection metric name,
best value and its epoch), ``ema_loss``, ``threads`` (the CPU threads it trained with, kept on
resume).
"""

from __future__ import annotations

from pathlib import Path

import torch

from deeplesion_cli import atomic

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a run killed while saving
    keeps its previous checkpoint whole."""
    atomic.write_with(Path(path), lambda tmp: torch.save(state, tmp))


def load(path: Path) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable lesion checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model_args" not in state:
        raise CheckpointError(f"{path}: not a `lesion train frcnn` checkpoint (no model_args); "
                              "torchvision weights go to `lesion train frcnn --weights`")
    return state


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise a torch device string (``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"--device {name}: CUDA is not available on this machine")
    return device


def model_from_checkpoint(state: dict, **overrides):
    """The checkpoint's model with its weights, on the CPU, in eval mode. ``overrides`` replace
    inference-only arguments of ``build_model`` (``score_thresh``, ``detections_per_img``,
    ``nms_iou``); None keeps the checkpoint's."""
    from deeplesion_cli.frcnn.model import build_model

    args = dict(state["model_args"])
    args.update({k: v for k, v in overrides.items() if v is not None})
    model = build_model(**args, load_pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit its own model_args: {exc}") from None
    return model.eval()
