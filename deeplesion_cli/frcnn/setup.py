"""Everything a ``lesion train frcnn`` run is built from, before its first step: the process
(device, CPU threads, process group, seeds, determinism), the data (datasets, batch sampler,
loader) and the model.

Seeds. Nothing depends on random state carried over from an earlier epoch: the model is
initialised right after ``seed_everything(seed)``, each epoch starts with
``seed_everything(epoch_seed(seed, epoch, rank))``, and the samplers draw from their own
generators seeded by ``(seed, epoch, rank, world_size)``, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deeplesion_cli.frcnn.data import ClassMap, DataError, PreparedSplit, collate
from deeplesion_cli.frcnn.distributed import Dist, init_process_group
from deeplesion_cli.frcnn.evaluate import train_sample_indices
from deeplesion_cli.frcnn.options import TrainOptions
from deeplesion_cli.frcnn.threads import resolve_threads

# ------------------------------------------------------------------------------ the process


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator and ``random`` from one integer."""
    seed = int(seed) % (2 ** 63)
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of epoch ``epoch`` (0-based) on ``rank``: distinct per (seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(seed) % (2 ** 32), epoch, rank]).generate_state(1)[0])


def set_deterministic(enabled: bool) -> None:
    if enabled:
        # cuBLAS needs this for deterministic matmuls; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # roi_align's backward has no deterministic CUDA kernel: warn instead of failing
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # undo an earlier deterministic run in this process (the setting is global)
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def setup_process(options: TrainOptions, state: dict | None, dist_info: Dist,
                  device: torch.device) -> int:
    """Set torch's CPU threads, join the process group on this rank's ``device``
    (:func:`~deeplesion_cli.frcnn.distributed.device_for_rank`) and set determinism; returns the
    threads. The caller restores the thread count after the run (it is process-wide)."""
    # a resumed run keeps the thread count it was trained with (recorded when it was chosen)
    threads = ((state or {}).get("threads")
               or resolve_threads(options.threads, options.workers, dist_info.world_size))
    torch.set_num_threads(threads)
    init_process_group(dist_info, device)
    set_deterministic(options.deterministic)
    return threads


# --------------------------------------------------------------------------------- the data

@dataclass
class TrainData:
    """The datasets and this rank's batch sampler of a run."""

    train: PreparedSplit            # the train split, augmented
    train_eval: PreparedSplit       # the fixed training sample evaluated every epoch
    val: PreparedSplit
    classes: ClassMap
    size_px: int                    # the model's input size (longest side, pixels)
    train_images: int               # images in the train split
    sampler: object                 # ShuffledBatchSampler or BalancedBatchSampler of this rank
    steps_per_epoch: int            # this rank's batches per epoch
    epoch_images: int               # this rank's images per epoch


def model_size_px(options: TrainOptions, train_set: PreparedSplit) -> int:
    """The model's input size in pixels: ``--size``, 240 for the seed study's augmentation, else
    the largest training image's longest side."""
    if options.size_px is not None:
        return int(options.size_px)
    if options.augment == "seed":
        return 240
    return max(max(int(im["width"]), int(im["height"])) for im in train_set.images)


def build_data(prepared: Path, manifest: dict, options: TrainOptions,
               dist_info: Dist) -> TrainData:
    """The train split (augmented), the training sample and val split for evaluation, and this
    rank's batch sampler; :class:`DataError` when there is nothing to train on."""
    from deeplesion_cli.frcnn.sampler import BalancedBatchSampler, ShuffledBatchSampler
    from deeplesion_cli.frcnn.transforms import build_augment

    train_base = PreparedSplit(prepared, "train", manifest=manifest)
    if len(train_base) == 0:
        raise DataError(f"{prepared}: the train split has no images")
    size_px = model_size_px(options, train_base)
    train_set = PreparedSplit(prepared, "train", manifest=manifest,
                              transform=build_augment(options.augment, out_size_px=size_px))
    sample = train_sample_indices(len(train_base), options.eval_train_images, options.seed)
    train_eval_set = PreparedSplit(prepared, "train", manifest=manifest, indices=sample)
    val_set = PreparedSplit(prepared, "val", manifest=manifest)
    if options.balanced:
        sampler = BalancedBatchSampler(train_base.image_classes(), options.batch_size,
                                       seed=options.seed, rank=dist_info.rank,
                                       world_size=dist_info.world_size)
    else:
        sampler = ShuffledBatchSampler(len(train_base), options.batch_size, seed=options.seed,
                                       rank=dist_info.rank, world_size=dist_info.world_size)
    steps_per_epoch = len(sampler)
    epoch_images = sum(len(batch) for batch in sampler)  # this rank's images per epoch
    if steps_per_epoch == 0:
        raise DataError(f"{prepared}: no training batches (is the train split empty?)")
    return TrainData(train_set, train_eval_set, val_set, train_base.classes, size_px,
                     len(train_base), sampler, steps_per_epoch, epoch_images)


def make_loader(data: TrainData, options: TrainOptions, device: torch.device):
    """The training DataLoader over ``data.sampler``'s batches (uint8 images, decoded in
    ``--workers`` processes; pinned memory for CUDA)."""
    from torch.utils.data import DataLoader

    return DataLoader(data.train, batch_sampler=data.sampler, num_workers=options.workers,
                      collate_fn=collate, pin_memory=device.type == "cuda",
                      persistent_workers=False,
                      prefetch_factor=4 if options.workers > 0 else None)


# -------------------------------------------------------------------------------- the model

def model_args(options: TrainOptions, data: TrainData) -> dict:
    """The keyword arguments of :func:`~deeplesion_cli.frcnn.model.build_model` for this run,
    without the weights (``--anchors`` read here: :class:`DataError` naming the file)."""
    anchors = None
    if options.anchors:
        try:
            anchors = json.loads(Path(options.anchors).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{options.anchors}: cannot read anchors json ({exc})")
    return {"arch": options.arch, "num_classes": data.classes.num_classes, "anchors": anchors,
            "size_px": data.size_px, "detections_per_img": options.detections_per_img,
            "score_thresh": options.score_thresh, "nms_iou": options.nms_iou,
            "trainable_backbone_layers": options.trainable_backbone_layers,
            "rpn_score_thresh": options.rpn_score_thresh,
            "rois_per_image": options.rois_per_image,
            "rpn_pre_nms_train": options.rpn_pre_nms_train,
            "rpn_post_nms_train": options.rpn_post_nms_train,
            "rpn_post_nms_test": options.rpn_post_nms_test}


def build_training_model(options: TrainOptions, args: dict, state: dict | None, device,
                         report: list[str]) -> tuple[torch.nn.Module, dict]:
    """The model on ``device`` and the ``model_args`` a checkpoint stores for it. A new run:
    seeded with ``--seed`` and initialised from ``--pretrained``/``--weights`` (``report`` gets
    what was loaded); a resumed run: the checkpoint's module and weights."""
    from deeplesion_cli.frcnn.model import build_model

    seed_everything(options.seed)
    if state is None:
        # model_args rebuild the module without weights (load_pretrained=False) but with the same
        # structure: pretrained weights mean frozen BatchNorm and frozen early layers
        stored_args = dict(args, pretrained=options.pretrained)
        model = build_model(**args, pretrained=options.pretrained,
                            weights=Path(options.weights) if options.weights else None,
                            report=report)
    else:
        stored_args = dict(state["model_args"])
        model = build_model(**stored_args, load_pretrained=False)
        model.load_state_dict(state["model"])
    model.to(device)
    return model, stored_args


def build_scaler(options: TrainOptions, device: torch.device):
    """AMP's gradient scaler: active for ``--amp`` on CUDA (float16); a no-op otherwise (CPU
    autocast uses bfloat16, which needs no scaling)."""
    return torch.amp.GradScaler("cuda", enabled=options.amp and device.type == "cuda")
