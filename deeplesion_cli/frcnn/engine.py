"""``lesion train frcnn``: the training loop, per-epoch evaluation, checkpoints and resume.

One call of :func:`train` runs on one process; under ``torchrun`` every rank calls it and the
ranks cooperate through ``torch.distributed`` (DistributedDataParallel; each rank's sampler holds
its own shard; losses, image counts and detections are reduced or gathered to rank 0, which alone
writes files).

Determinism and resume. Nothing depends on random state carried over from an earlier epoch: the
model is initialised after ``torch.manual_seed(seed)``, and epoch ``e`` starts by seeding torch,
numpy and ``random`` with a value derived from ``(seed, e, rank)``; the samplers' orders are
functions of ``(seed, e, rank, world_size)``. A run resumed from ``last.pt`` (saved at the end of an
epoch with model, optimiser, scheduler, AMP scaler, step and image counters) therefore continues
exactly as the uninterrupted run would have; with ``--deterministic`` on CPU the weights are equal
bit for bit (tested).

Per epoch (rank 0): a row in ``metrics.csv`` (:mod:`deeplesion_cli.runlog`: the epoch's mean loss
and its four parts, learning rate, seconds, images/s, share of time waiting for data, and mAP50,
mAP75, mAP, mean IoU, FROC sensitivity at 4 FP/image on a fixed sample of the training set and on
the validation split, computed by the toolkit's own evaluator), a line in ``train.log``, then
``last.pt`` and, when the selection metric improved, ``best.pt``. The metrics row is written
before the checkpoint: a run killed between the two re-does that epoch on resume, and the row is
replaced (rows after the checkpoint's step are dropped on resume).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deeplesion_cli import __version__, atomic, runlog
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn.data import DataError, PreparedSplit, collate, read_manifest, to_model_input
from deeplesion_cli.frcnn.threads import ThreadsError, check_resumed_threads, resolve_threads
from deeplesion_cli.progress import Progress

LOSS_PARTS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
#: ``--select`` choices and the evaluation key each one reads (higher is better for all).
SELECT_METRICS = {"map50": "mAP50", "map75": "mAP75", "map": "mAP", "froc4": "froc_sens4",
                  "mean_iou": "mean_iou"}
#: Default learning rates of the seed study: Adam 1e-4, SGD (momentum 0.9) 2e-5.
DEFAULT_LR = {"adam": 1e-4, "sgd": 2e-5}
#: Options a resumed run may change; every other option is fixed by the run's first start.
RESUMABLE_OVERRIDES = frozenset({"epochs", "workers", "device", "eval_batch_size",
                                 "log_every"})


class OptionError(ValueError):
    """An option value that cannot work, or that a resumed run may not change."""


class TrainError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message says where and what was kept."""


@dataclass
class TrainOptions:
    """Every knob of ``lesion train frcnn`` (the CLI's options, same names)."""

    arch: str = "resnet50_fpn"
    pretrained: str = "none"               # none | imagenet | coco
    weights: str | None = None             # local weights file (see frcnn.model)
    anchors: str | None = None             # anchors.json of `lesion anchors`
    size_px: int | None = None             # model input size; None: 240 with seed augment, else
                                           # the largest side of the training images
    epochs: int = 110
    batch_size: int = 4
    optimizer: str = "adam"                # adam | sgd
    lr: float | None = None                # None: DEFAULT_LR[optimizer]
    momentum: float = 0.9                  # SGD only
    weight_decay: float = 0.0
    scheduler: str = "none"                # none | step | cosine
    lr_steps: tuple[int, ...] | None = None  # step: epochs where lr *= lr_gamma (default 2/3, 8/9)
    lr_gamma: float = 0.1
    warmup_steps: int = 0                  # linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.001
    clip_grad: float | None = None         # max gradient L2 norm
    balanced: bool = False
    augment: str = "seed"                  # seed | none
    amp: bool = False
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    deterministic: bool = False
    select: str = "map50"
    eval_train_images: int = 200           # fixed training sample evaluated each epoch (0: none)
    eval_batch_size: int | None = None
    score_thresh: float = 0.001
    detections_per_img: int = 100
    nms_iou: float = 0.5                   # box head NMS at inference (torchvision's 0.5)
    trainable_backbone_layers: int | None = None
    rois_per_image: int = 512              # box head: proposals sampled per image (torchvision's)
    rpn_pre_nms_train: int = 2000          # RPN proposals per level before NMS, training
    rpn_post_nms_train: int = 2000         # RPN proposals kept after NMS, training
    rpn_post_nms_test: int = 1000          # ... and at inference (per-epoch evaluation, predict)
    rpn_score_thresh: float | None = None  # None: the arch's default (mobilenet 0.05, else 0)
    threads: int | None = None             # CPU intra-op threads per rank; None: default_threads
    log_every: int = 50                    # train.log line every N steps

    def to_json(self) -> dict:
        d = asdict(self)
        d["lr_steps"] = list(self.lr_steps) if self.lr_steps is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("lr_steps") is not None:
            d["lr_steps"] = tuple(d["lr_steps"])
        return cls(**d)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def check(self) -> None:
        """:class:`OptionError` naming the option for values that cannot work."""
        from deeplesion_cli.frcnn.model import ARCHS, PRETRAINED
        from deeplesion_cli.frcnn.transforms import AUGMENTS

        choices = {"arch": ARCHS, "pretrained": PRETRAINED, "optimizer": tuple(DEFAULT_LR),
                   "scheduler": ("none", "step", "cosine"), "augment": AUGMENTS,
                   "select": tuple(SELECT_METRICS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise OptionError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: one of "
                                 f"{', '.join(allowed)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "rois_per_image": self.rois_per_image,
                    "rpn_pre_nms_train": self.rpn_pre_nms_train,
                    "rpn_post_nms_train": self.rpn_post_nms_train,
                    "rpn_post_nms_test": self.rpn_post_nms_test,
                    "threads": 1 if self.threads is None else self.threads}
        for name, value in positive.items():
            if value < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        if not (self.resolved_lr() > 0 and math.isfinite(self.resolved_lr())):
            raise OptionError(f"--lr must be a positive number (got {self.lr})")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise OptionError(f"--clip-grad must be > 0 (got {self.clip_grad})")
        if not 0 < self.nms_iou <= 1:
            raise OptionError(f"--nms-iou must be in (0, 1] (got {self.nms_iou})")
        if self.rpn_score_thresh is not None and not 0 <= self.rpn_score_thresh < 1:
            raise OptionError(f"--rpn-score-thresh must be in [0, 1) (got "
                              f"{self.rpn_score_thresh})")


@dataclass
class EpochStats:
    epoch: int                      # 1-based
    step: int                       # optimiser steps done after this epoch
    images: int                     # images trained on, all ranks, since the run's start
    loss: float
    parts: dict
    lr: float
    seconds: float                  # training time of the epoch (evaluation excluded)
    images_per_s: float
    data_wait: float                # share of the epoch's step time spent waiting for data
    train_eval: dict | None
    val_eval: dict | None
    eval_seconds: float


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


# ---------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False          # started by torchrun (even as its only rank)

    @property
    def enabled(self) -> bool:
        """Whether to join a process group and wrap the model in DDP: several ranks, or one
        rank started by torchrun (so that ``torchrun --nproc_per_node 1`` checks the NCCL/gloo
        path on a single device)."""
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (a plain run: rank 0 of 1);
    ``launched`` when torchrun set them (``TORCHELASTIC_RUN_ID`` is torchrun's own mark)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)),
                launched="TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ)


def _init_distributed(dist_info: Dist, device: torch.device) -> None:
    import torch.distributed as dist

    if dist_info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _all_reduce_sum(values: list[float], device, dist_info: Dist) -> list[float]:
    if not dist_info.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _gather(obj, dist_info: Dist):
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj, dist_info: Dist):
    if not dist_info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------- pieces

def seed_everything(seed: int) -> None:
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


def build_optimizer(model, options: TrainOptions):
    params = [p for p in model.parameters() if p.requires_grad]
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.resolved_lr(), momentum=options.momentum,
                               weight_decay=options.weight_decay)
    return torch.optim.Adam(params, lr=options.resolved_lr(), weight_decay=options.weight_decay)


def evaluate_detections(gt, dets) -> dict:
    """The per-epoch metrics: COCO AP50/AP75/AP, mean IoU of true positives at score 0.25 and
    FROC sensitivity at 4 FP/image (DeepLesion protocol); fractions, ``None`` when undefined."""
    from deeplesion_cli.evaluation import coco, froc, threshold

    stats = coco.evaluate(gt, dets)["stats"]
    curve = froc.froc(gt, dets)
    at = threshold.at_threshold(gt, dets, score=0.25, iou=0.5)

    def clean(v):
        # pycocotools' -1 means "nothing to score": with ground truth present and no detections
        # (an untrained model) the AP of a training curve is 0, not missing
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if v < 0:
            return 0.0 if len(gt.image) else None
        return v

    return {"mAP50": clean(stats["AP50"]), "mAP75": clean(stats["AP75"]),
            "mAP": clean(stats["AP"]), "mean_iou": at["mean_iou_tp"],
            "froc_sens4": clean(curve["sens"][curve["fps"].index(4)])}


def _model_size_px(options: TrainOptions, train_set: PreparedSplit) -> int:
    if options.size_px is not None:
        return int(options.size_px)
    if options.augment == "seed":
        return 240
    return max(max(int(im["width"]), int(im["height"])) for im in train_set.images)


def _train_sample_indices(n: int, k: int, seed: int) -> list[int]:
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng([int(seed) % (2 ** 32), 2 ** 20 + 7])
    return sorted(rng.choice(n, size=k, replace=False).tolist())


class _Log:
    """``train.log`` (rank 0): plain lines, flushed at once; lines logged with ``echo=True``
    (start, epoch summaries) also go to stderr when ``echo`` is enabled."""

    def __init__(self, path: Path | None, echo: bool):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None
        self.echo = echo

    def __call__(self, message: str, echo: bool = False) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        if self.echo and echo:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# ---------------------------------------------------------------------------- the loop

def train(prepared: Path, run_dir: Path, options: TrainOptions | None = None, *,
          resume: bool = False, overrides: dict | None = None, stop_after: int | None = None,
          show_progress: bool = True, dist_info: Dist | None = None) -> TrainResult:
    """Train on ``prepared``'s train split, evaluate on a training sample and the val split each
    epoch, and write the run folder ``run_dir`` (module docstring).

    ``resume=True`` continues ``run_dir/last.pt`` with the options saved in the run; ``overrides``
    may change only :data:`RESUMABLE_OVERRIDES` (e.g. ``epochs`` to train longer) and must not
    contradict the rest (:class:`OptionError` naming the option). Raising ``epochs`` on resume
    stretches a ``step``/``cosine`` schedule from there on (it spans ``epochs``).
    ``stop_after`` ends this call after that epoch (1-based) while the schedule still spans
    ``epochs``: a job on a time-limited queue trains in slices, each continued with ``resume``,
    and ends exactly where one long call would have.
    """
    # the run's --threads holds for this call only: torch's thread count is process-wide
    threads_before = torch.get_num_threads()
    try:
        return _train(prepared, run_dir, options, resume=resume, overrides=overrides,
                      stop_after=stop_after, show_progress=show_progress, dist_info=dist_info)
    finally:
        torch.set_num_threads(threads_before)


def _train(prepared: Path, run_dir: Path, options: TrainOptions | None, *, resume: bool,
           overrides: dict | None, stop_after: int | None, show_progress: bool,
           dist_info: Dist | None) -> TrainResult:
    prepared, run_dir = Path(prepared), Path(run_dir)
    dist_info = dist_info or dist_from_env()
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise DataError(f"{last_path}: nothing to resume (no last.pt in the run folder)")
        state = ckpt.load(last_path)
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
    options.check()
    manifest = read_manifest(prepared)
    if state is not None and state.get("prepared_config_hash") != manifest.get("config_hash"):
        raise OptionError(f"{prepared} is not the prepared folder this run was trained on "
                          f"(config_hash {manifest.get('config_hash')!r}, the run's "
                          f"{state.get('prepared_config_hash')!r}); resume on the same folder")

    device = ckpt.pick_device(options.device)
    # a resumed run keeps the thread count it was trained with (recorded when it was chosen)
    threads = ((state or {}).get("threads")
               or resolve_threads(options.threads, options.workers, dist_info.world_size))
    torch.set_num_threads(threads)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    _init_distributed(dist_info, device)
    set_deterministic(options.deterministic)

    from deeplesion_cli.frcnn.model import build_model
    from deeplesion_cli.frcnn.sampler import BalancedBatchSampler, ShuffledBatchSampler
    from deeplesion_cli.frcnn.transforms import build_augment

    train_base = PreparedSplit(prepared, "train", manifest=manifest)
    if len(train_base) == 0:
        raise DataError(f"{prepared}: the train split has no images")
    size_px = _model_size_px(options, train_base)
    train_set = PreparedSplit(prepared, "train", manifest=manifest,
                              transform=build_augment(options.augment, out_size_px=size_px))
    sample = _train_sample_indices(len(train_base), options.eval_train_images, options.seed)
    train_eval_set = PreparedSplit(prepared, "train", manifest=manifest, indices=sample)
    val_set = PreparedSplit(prepared, "val", manifest=manifest)
    classes = train_base.classes

    anchors = None
    if options.anchors:
        try:
            anchors = json.loads(Path(options.anchors).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{options.anchors}: cannot read anchors json ({exc})")
    model_args = {"arch": options.arch, "num_classes": classes.num_classes, "anchors": anchors,
                  "size_px": size_px, "detections_per_img": options.detections_per_img,
                  "score_thresh": options.score_thresh, "nms_iou": options.nms_iou,
                  "trainable_backbone_layers": options.trainable_backbone_layers,
                  "rpn_score_thresh": options.rpn_score_thresh,
                  "rois_per_image": options.rois_per_image,
                  "rpn_pre_nms_train": options.rpn_pre_nms_train,
                  "rpn_post_nms_train": options.rpn_post_nms_train,
                  "rpn_post_nms_test": options.rpn_post_nms_test}
    report: list[str] = []
    seed_everything(options.seed)
    if state is None:
        # model_args rebuild the module without weights (load_pretrained=False) but with the same
        # structure: pretrained weights mean frozen BatchNorm and frozen early layers
        stored_args = dict(model_args, pretrained=options.pretrained)
        model = build_model(**model_args, pretrained=options.pretrained,
                            weights=Path(options.weights) if options.weights else None,
                            report=report)
    else:
        stored_args = dict(state["model_args"])
        model = build_model(**stored_args, load_pretrained=False)
        model.load_state_dict(state["model"])
    model.to(device)

    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp_model = model

    optimizer = build_optimizer(model, options)
    scaler = torch.amp.GradScaler("cuda", enabled=options.amp and device.type == "cuda")

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

    start_epoch, step, images_seen, ema_loss = 0, 0, 0, None
    best = {"metric": options.select, "value": None, "epoch": None}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, images_seen = state["epoch"], state["step"], state["images"]
        ema_loss = state.get("ema_loss")
        best = state.get("best", best)
    base_lr = options.resolved_lr()

    def set_lr(at_step: int) -> float:
        lr = base_lr * lr_factor(at_step, steps_per_epoch, options)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    main = dist_info.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(run_dir)
    log = _Log(run_dir / "train.log" if main else None, echo=show_progress and main)
    metrics_path = run_dir / "metrics.csv"
    writer = None
    if main:
        if state is not None:
            dropped = runlog.truncate_metrics(metrics_path, step + 1)
            if dropped:
                log(f"resume: dropped {dropped} metrics row(s) after step {step}")
        writer = runlog.MetricsWriter(metrics_path)
        args_doc = {"tool": "lesion", "version": __version__, "command": "train frcnn",
                    "prepared": str(prepared.resolve()),
                    "prepared_config_hash": manifest.get("config_hash"),
                    "options": options.to_json(), "model_args": _jsonable(stored_args),
                    "classes": list(classes.names), "world_size": dist_info.world_size,
                    "device": str(device), "torch": torch.__version__,
                    "torchvision": _tv_version(), "steps_per_epoch": steps_per_epoch,
                    "train_images": len(train_base), "val_images": len(val_set),
                    "train_eval_images": len(train_eval_set), "threads": threads}
        atomic.write_text(run_dir / "args.json", json.dumps(args_doc, indent=2) + "\n")
        if state is None:
            log(f"start: {options.arch} ({options.pretrained}), {len(train_base)} train / "
                f"{len(val_set)} val images, input {size_px} px, {steps_per_epoch} steps/epoch "
                f"x {dist_info.world_size} rank(s), device {device}, {threads} CPU thread(s)",
                echo=True)
        else:
            log(f"resume from {last_path} at epoch {start_epoch}, step {step}", echo=True)
        for line in report:
            log(f"weights: {line}")
        if dist_info.enabled:
            import torch.distributed as dist

            log(f"distributed: {dist.get_backend()} process group, {dist_info.world_size} "
                "rank(s), DistributedDataParallel")
        if len(val_set) == 0:
            log("warning: the val split is empty: no validation metrics, no best.pt")

    from torch.utils.data import DataLoader

    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=options.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=False,
                        prefetch_factor=4 if options.workers > 0 else None)
    eval_bs = options.eval_batch_size or max(1, options.batch_size * 2)
    result = TrainResult(run_dir, start_epoch, best["epoch"], best["value"], options.select,
                         last_path, best_path if best["epoch"] is not None else None,
                         metrics_path, resumed_from_epoch=start_epoch)
    saved_epoch = start_epoch
    try:
        end_epoch = options.epochs if stop_after is None else min(options.epochs, stop_after)
        for epoch in range(start_epoch, end_epoch):
            seed_everything(epoch_seed(options.seed, epoch, dist_info.rank))
            sampler.set_epoch(epoch)
            ddp_model.train()
            sums = dict.fromkeys(("loss",) + LOSS_PARTS, 0.0)
            n_batches = n_images = 0
            wait_s = 0.0
            epoch_start = time.monotonic()
            lr = set_lr(step)
            description = f"epoch {epoch + 1}/{options.epochs}"
            with Progress(epoch_images, description,
                          enabled=show_progress and main) as progress:
                t_ready = time.monotonic()
                for images, targets in loader:
                    wait_s += time.monotonic() - t_ready
                    lr = set_lr(step)
                    inputs, tgts = to_model_input(images, targets, device, non_blocking=True)
                    values = train_step(ddp_model, optimizer, scaler, inputs, tgts,
                                        amp=options.amp, clip_grad=options.clip_grad,
                                        where=f"epoch {epoch + 1}, step {step + 1}",
                                        kept=(f"the last good checkpoint {last_path} (epoch "
                                              f"{saved_epoch}) is kept" if saved_epoch
                                              else "no checkpoint was saved yet"),
                                        dist_info=dist_info)
                    step += 1
                    n_batches += 1
                    n_images += len(images)
                    sums["loss"] += values[0]
                    for k, v in zip(LOSS_PARTS, values[1:]):
                        sums[k] += v
                    ema_loss = values[0] if ema_loss is None else 0.9 * ema_loss + 0.1 * values[0]
                    progress.advance(len(images), info=f"step {step}, loss {values[0]:.4f}, "
                                                       f"lr {lr:.3g}")
                    if main and options.log_every and step % options.log_every == 0:
                        log(f"epoch {epoch + 1} step {step} loss {values[0]:.5f} "
                            f"avg {ema_loss:.5f} lr {lr:.4g}")
                    t_ready = time.monotonic()
            train_seconds = time.monotonic() - epoch_start
            totals = _all_reduce_sum([sums[k] for k in sums] + [n_batches, n_images, wait_s],
                                     device, dist_info)
            n_batches_all, n_images_all = totals[-3], int(totals[-2])
            mean = {k: totals[i] / max(n_batches_all, 1) for i, k in enumerate(sums)}
            images_seen += n_images_all
            wait_share = (totals[-1] / dist_info.world_size) / max(train_seconds, 1e-9)

            eval_start = time.monotonic()
            train_eval = _evaluate(model, train_eval_set, device, eval_bs, options, dist_info)
            val_eval = _evaluate(model, val_set, device, eval_bs, options, dist_info)
            eval_seconds = time.monotonic() - eval_start
            stats = EpochStats(epoch + 1, step, images_seen, mean["loss"],
                               {k: mean[k] for k in LOSS_PARTS}, lr, train_seconds,
                               n_images_all / max(train_seconds, 1e-9), wait_share, train_eval,
                               val_eval, eval_seconds)
            result.history.append(stats)
            improved = False
            key = SELECT_METRICS[options.select]
            value = (val_eval or {}).get(key)
            if value is not None and (best["value"] is None or value > best["value"]):
                best = {"metric": options.select, "value": value, "epoch": epoch + 1}
                improved = True
            if main:
                writer.write(_metrics_row(stats, ema_loss))
                state_out = {
                    "format": ckpt.FORMAT, "tool": "lesion", "version": __version__,
                    "model_args": stored_args, "model": model.state_dict(),
                    "classes": {"names": list(classes.names),
                                "category_ids": list(classes.category_ids)},
                    "options": options.to_json(), "epoch": epoch + 1, "step": step,
                    "images": images_seen, "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "sampler": sampler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                            else []},
                    "best": best, "ema_loss": ema_loss, "threads": threads,
                    "prepared_config_hash": manifest.get("config_hash")}
                ckpt.save(last_path, state_out)
                saved_epoch = epoch + 1
                if improved:
                    ckpt.save(best_path, state_out)
                log(_epoch_line(stats, options, improved), echo=True)
                _draw_curves(metrics_path, run_dir / "curves.png", options.arch, log)
            if dist_info.enabled:
                import torch.distributed as dist

                dist.barrier()
            result.epochs_done = epoch + 1
    finally:
        if writer is not None:
            writer.close()
        log.close()
        if dist_info.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    result.best_epoch, result.best_value = best["epoch"], best["value"]
    result.best_checkpoint = best_path if best["epoch"] is not None else None
    return result


def train_step(model, optimizer, scaler, inputs, targets, *, amp: bool = False,
               clip_grad: float | None = None, where: str = "", kept: str = "",
               dist_info: Dist | None = None) -> list[float]:
    """One optimiser step on a batch (``inputs``/``targets`` as :func:`to_model_input` makes
    them); returns ``[loss, *LOSS_PARTS]`` as floats. A non-finite loss raises
    :class:`TrainError` before any weight changes (``where``/``kept`` go into its message)."""
    device = inputs[0].device
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp):
        loss_dict = model(inputs, targets)
    loss = sum(loss_dict[k] for k in LOSS_PARTS)
    values = [float(loss.detach())] + [float(loss_dict[k].detach()) for k in LOSS_PARTS]
    finite = all(math.isfinite(v) for v in values)
    if dist_info is not None and dist_info.enabled:
        # every rank must stop together, or the others wait forever in the gradient all-reduce
        finite = _all_reduce_sum([0.0 if finite else 1.0], device, dist_info)[0] == 0.0
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


def _evaluate(model, dataset: PreparedSplit, device, batch_size: int, options: TrainOptions,
              dist_info: Dist) -> dict | None:
    """Metrics of ``dataset`` (every rank predicts its share; rank 0 evaluates; all get them)."""
    from deeplesion_cli.evaluation.data import Detections
    from deeplesion_cli.frcnn.predict import infer_raw, to_detections

    if len(dataset) == 0:
        return None
    mine = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    # float32 even with --amp: autocast returns float16/bfloat16 boxes (bfloat16 steps are 2 px
    # at 512 px), which would move IoUs and AP75
    raw = infer_raw(model, dataset, device, batch_size=batch_size, workers=options.workers,
                    amp=False, indices=mine)
    parts = _gather(raw, dist_info)
    metrics = None
    if dist_info.is_main:
        raw_all = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
        gt = dataset.ground_truth()
        # detections in dataset order, as a single process would list them
        order = np.argsort(raw_all[0], kind="stable")
        raw_all = tuple(a[order] for a in raw_all)
        dets = to_detections(raw_all, dataset, gt) if len(raw_all[0]) else Detections.empty()
        metrics = evaluate_detections(gt, dets)
    return _broadcast(metrics, dist_info)


def _draw_curves(metrics_path: Path, png: Path, title: str, log) -> None:
    """curves.png: loss and train/val metrics per epoch, redrawn after every epoch."""
    from deeplesion_cli.report.plots import training_curves

    try:
        training_curves(runlog.read_metrics(metrics_path), png, title=title)
    except Exception as exc:  # a figure must never stop a training run
        log(f"warning: could not draw {png.name}: {exc}")


def _metrics_row(stats: EpochStats, ema_loss) -> dict:
    row = {"step": stats.step, "epoch": float(stats.epoch), "loss": stats.loss,
           "avg_loss": ema_loss, "lr": stats.lr, "images": stats.images,
           "seconds": stats.seconds, "images_per_s": stats.images_per_s,
           "data_wait": stats.data_wait}
    row.update(stats.parts)
    for prefix, block in (("train", stats.train_eval), ("val", stats.val_eval)):
        if block:
            for key, value in block.items():
                row[f"{prefix}_{key}"] = value
    return row


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _epoch_line(stats: EpochStats, options: TrainOptions, improved: bool) -> str:
    val = stats.val_eval or {}
    tr = stats.train_eval or {}
    mark = " (best)" if improved else ""
    return (f"epoch {stats.epoch}/{options.epochs} step {stats.step} loss {stats.loss:.4f} "
            f"lr {stats.lr:.4g} {stats.images_per_s:.1f} img/s data wait "
            f"{100 * stats.data_wait:.1f}% | train mAP50 {_fmt(tr.get('mAP50'))} | val mAP50 "
            f"{_fmt(val.get('mAP50'))} mAP {_fmt(val.get('mAP'))} FROC@4 "
            f"{_fmt(val.get('froc_sens4'))}{mark} | {stats.seconds:.1f} s + eval "
            f"{stats.eval_seconds:.1f} s")


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _tv_version() -> str:
    import torchvision

    return torchvision.__version__
