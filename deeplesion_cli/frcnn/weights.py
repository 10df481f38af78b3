"""Weights files for the Faster R-CNN models: finding, reading and fitting a ``state_dict``.

Nothing here downloads anything. :func:`resolve_file` picks the file a user named, else torch
hub's cache file where torchvision itself would store it; :func:`read_state_dict` reads a plain
``state_dict`` or the ``"model"`` entry of a checkpoint dict with ``weights_only=True``;
:func:`load_checked` compares keys and shapes with the module before loading, so that a file that
does not fit is an error naming the file and the first keys (:class:`WeightsError`), and only the
tensors whose shape depends on the classes or anchors (:data:`HEAD_PREFIXES`) may be skipped.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from deeplesion_cli.errors import LesionInputError

HEAD_PREFIXES = ("roi_heads.box_predictor.", "rpn.head.cls_logits.", "rpn.head.bbox_pred.")
_SHOWN_KEYS = 5
# torchvision < 0.12 names of the RPN conv and the FPN convs (see _upgrade_legacy_keys)
_LEGACY_KEY = re.compile(r"(?P<module>.*(?:rpn\.head\.conv|fpn\.(?:inner|layer)_blocks\.\d+))"
                         r"\.(?P<leaf>weight|bias)")



class WeightsError(LesionInputError):
    """A weights file that is missing, unreadable or does not fit; the message names the file and
    what to do."""



@dataclass(frozen=True)
class WeightsSource:
    """Where the torchvision weights for an ``(arch, pretrained)`` pair come from.

    ``url``: torchvision's download URL; ``file_name``: its basename (what torch hub stores);
    ``cache_path``: ``<torch.hub.get_dir()>/checkpoints/<file_name>``, where
    :func:`build_model` looks when no ``weights`` file is given; ``kind``: ``"backbone"``
    (ImageNet classification weights) or ``"detector"`` (a COCO Faster R-CNN); ``name``: the
    torchvision weights enum, e.g. ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``.
    """

    url: str
    file_name: str
    cache_path: Path
    kind: Literal["backbone", "detector"]
    name: str




def resolve_file(source: WeightsSource, weights: Path | None) -> Path:
    """``weights`` when given (it must exist), else the hub cache file (it must exist)."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file (expected {source.name}, "
                               f"{source.file_name}, from {source.url})")
        return path
    if source.cache_path.is_file():
        return source.cache_path
    raise WeightsError(
        f"{source.name} weights not found: place {source.file_name} at {source.cache_path} "
        f"(download it on a machine with network from {source.url}), or point --weights FILE at "
        "a copy of it")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from ``path``: a plain one, or the ``"model"`` entry of a checkpoint dict
    (``lesion`` checkpoints, torchvision reference checkpoints). Read with ``weights_only=True``;
    ``argparse.Namespace`` is allowed because torchvision's reference scripts save their ``args``
    as one. Raises :class:`WeightsError` naming the file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise WeightsError(f"{path}: not a readable PyTorch weights file "
                           f"({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if (not isinstance(obj, Mapping) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise WeightsError(f"{path}: not a state_dict (a dict of tensors, or a dict with a "
                           "'model' entry holding one)")
    return dict(obj)


def _upgrade_legacy_keys(state: dict[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Rename pre-2021 torchvision keys (``rpn.head.conv.weight``,
    ``backbone.fpn.inner_blocks.0.weight``; the 2019 ``fasterrcnn_resnet50_fpn`` COCO file has
    them) to today's (``rpn.head.conv.0.0.weight``, ``...inner_blocks.0.0.weight``).
    torchvision's modules rename them inside ``load_state_dict``, but keys are compared here
    before loading."""
    out = {}
    for key, value in state.items():
        new = key
        match = _LEGACY_KEY.fullmatch(key)
        if match and key not in model_keys:
            inner = ".0.0." if match["module"].endswith("rpn.head.conv") else ".0."
            candidate = f"{match['module']}{inner}{match['leaf']}"
            if candidate in model_keys and candidate not in state:
                new = candidate
        out[new] = value
    return out


def _first(keys, n: int = _SHOWN_KEYS) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fit_state(own: Mapping[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path,
               what: str, skippable: tuple[str, ...] = ()) -> tuple[dict, list[str], list[str]]:
    """Check ``state`` key by key and shape by shape against ``own`` (a module's ``state_dict``;
    meta tensors do). Returns ``(state to load, skipped keys, counters left as they are)``.

    Shape misfits under a ``skippable`` prefix are skipped; any other misfit, missing or
    unexpected key is a :class:`WeightsError` naming ``path`` and the first keys.
    ``num_batches_tracked`` counters are dropped when ``own`` has none (``FrozenBatchNorm2d``) and
    not required when the file has none (a model trained with frozen batch norm): they count
    batches, they are no weights.
    """
    state = _upgrade_legacy_keys(state, own)
    state = {k: v for k, v in state.items()
             if k in own or not k.endswith("num_batches_tracked")}
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    counters = [k for k in own if k not in state and k.endswith("num_batches_tracked")]
    misfit = [k for k in state if k in own and state[k].shape != own[k].shape]
    skipped = [k for k in misfit if k.startswith(skippable)]
    bad = [k for k in misfit if k not in skipped]
    if unexpected or missing or bad:
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        if bad:
            parts.append("shape misfits: " + _first(
                f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in bad))
        raise WeightsError(f"{path}: does not fit {what} ({'; '.join(parts)})")
    return {k: v for k, v in state.items() if k not in skipped}, skipped, counters


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
                  report: list[str], skippable: tuple[str, ...] = ()) -> list[str]:
    """:func:`fit_state` against ``module``, then load; returns the skipped keys."""
    state, skipped, counters = fit_state(module.state_dict(), state, path, what, skippable)
    module.load_state_dict(state, strict=False)
    _report_counters(counters, path, report)
    return skipped


def _report_counters(counters: list[str], path: Path, report: list[str]) -> None:
    if counters:
        report.append(f"{path}: no num_batches_tracked counters for {len(counters)} batch norms "
                      "(weights trained with frozen batch norm); counters start at 0")


