"""Per-epoch evaluation during ``lesion train frcnn``: a fixed sample of the training set and the
validation split, scored by the toolkit's own evaluator (:mod:`deeplesion_cli.evaluation`).

Every rank predicts its share of the images; rank 0 puts the detections back in dataset order,
scores them, and every rank gets the metrics (so all ranks agree on the best epoch).
"""

from __future__ import annotations

import math
import time

import numpy as np

from deeplesion_cli.frcnn.data import PreparedSplit
from deeplesion_cli.frcnn.distributed import Dist, broadcast, gather


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


def train_sample_indices(n: int, k: int, seed: int) -> list[int]:
    """The fixed sample of ``k`` of the ``n`` training images evaluated every epoch (sorted
    indices; the same for a given ``seed``, whatever the epoch or rank)."""
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng([int(seed) % (2 ** 32), 2 ** 20 + 7])
    return sorted(rng.choice(n, size=k, replace=False).tolist())


def evaluate_split(model, dataset: PreparedSplit, device, batch_size: int, workers: int,
                   dist_info: Dist, stop=None) -> dict | None:
    """Metrics of ``dataset`` (:func:`evaluate_detections`; ``None`` for an empty one): every
    rank predicts its share, rank 0 evaluates, all get them. ``stop``: see
    :func:`~deeplesion_cli.frcnn.predict.infer_raw`."""
    from deeplesion_cli.formats.groundtruth import Detections
    from deeplesion_cli.frcnn.predict import infer_raw, to_detections

    if len(dataset) == 0:
        return None
    mine = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    # float32 even with --amp: autocast returns float16/bfloat16 boxes (bfloat16 steps are 2 px
    # at 512 px), which would move IoUs and AP75
    raw = infer_raw(model, dataset, device, batch_size=batch_size, workers=workers,
                    amp=False, indices=mine, stop=stop)
    parts = gather(raw, dist_info)
    metrics = None
    if dist_info.is_main:
        raw_all = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
        gt = dataset.ground_truth()
        # detections in dataset order, as a single process would list them
        order = np.argsort(raw_all[0], kind="stable")
        raw_all = tuple(a[order] for a in raw_all)
        dets = to_detections(raw_all, dataset, gt) if len(raw_all[0]) else Detections.empty()
        metrics = evaluate_detections(gt, dets)
    return broadcast(metrics, dist_info)


def evaluate_epoch(model, train_sample: PreparedSplit, val: PreparedSplit, device,
                   batch_size: int, workers: int, dist_info: Dist,
                   stop=None) -> tuple[dict | None, dict | None, float]:
    """``(train sample metrics, val metrics, seconds both took)`` after an epoch."""
    start = time.monotonic()
    train_eval = evaluate_split(model, train_sample, device, batch_size, workers, dist_info, stop)
    val_eval = evaluate_split(model, val, device, batch_size, workers, dist_info, stop)
    return train_eval, val_eval, time.monotonic() - start
