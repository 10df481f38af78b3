"""Batched Faster R-CNN inference over a prepared split, and ``lesion predict frcnn``.

:func:`infer` runs a model over a :class:`~deeplesion_cli.frcnn.data.PreparedSplit` (no
augmentation) and returns :class:`~deeplesion_cli.formats.groundtruth.Detections`: boxes
``[x, y, w, h]`` in 0-based continuous pixels of the **prepared image** (torchvision's
``GeneralizedRCNNTransform`` resizes to the model's input size and maps its boxes back to the
input image's frame in ``postprocess``), categories as the prepared COCO ``category_id``, so the
result evaluates against ``coco/<split>.json`` directly. The trainer's per-epoch evaluation and
``lesion predict frcnn`` both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deeplesion_cli.formats.groundtruth import Detections, GroundTruth
from deeplesion_cli.frcnn.data import (RENDER_OPTIONS, DataError, PreparedSplit, collate,
                                       render_of, to_model_input)
from deeplesion_cli.prepared import Prepared
from deeplesion_cli.progress import Progress


def _autocast(device: torch.device, amp: bool):
    # bfloat16 on CPU: float16 autocast is not supported for most CPU kernels.
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp)


@torch.inference_mode()
def infer_raw(model, dataset: PreparedSplit, device: torch.device, *, batch_size: int = 8,
              workers: int = 0, amp: bool = False, indices=None, progress: Progress | None = None,
              stop=None):
    """Raw detections of ``dataset[i]`` for i in ``indices`` (default all), as numpy arrays:
    ``(index (n,), label (n,) 1-based model label, box_xyxy_px (n, 4), score (n,))``.
    ``stop`` (a :class:`~deeplesion_cli.frcnn.interrupt.StopRequest`, in training) is looked at
    between batches: :class:`~deeplesion_cli.frcnn.interrupt.Interrupted` when it was asked.

    ``amp`` means float16 autocast on CUDA and is ignored on CPU, where autocast would mean
    bfloat16 boxes (coordinates rounded to 2 px at 512 px)."""
    from torch.utils.data import DataLoader, Subset

    was_training = model.training
    model.eval()
    subset = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    out_index, out_label, out_box, out_score = [], [], [], []
    try:
        for images, targets in loader:
            if stop is not None and stop.requested:
                from deeplesion_cli.frcnn.interrupt import Interrupted

                raise Interrupted("while evaluating", stop.signum)
            inputs, _ = to_model_input(images, device=device, non_blocking=True)
            with _autocast(device, amp and device.type == "cuda"):
                outputs = model(inputs)
            for target, output in zip(targets, outputs):
                n = len(output["scores"])
                out_index.append(np.full(n, target["index"], dtype=np.int64))
                out_label.append(output["labels"].cpu().numpy().astype(np.int64))
                out_box.append(output["boxes"].float().cpu().numpy().astype(np.float64))
                out_score.append(output["scores"].float().cpu().numpy().astype(np.float64))
            if progress is not None:
                progress.advance(len(images))
    finally:
        model.train(was_training)
    if not out_index:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    return (np.concatenate(out_index), np.concatenate(out_label),
            np.concatenate(out_box).reshape(-1, 4), np.concatenate(out_score))


def to_detections(raw, dataset: PreparedSplit, gt: GroundTruth, source: str = "") -> Detections:
    """:func:`infer_raw` output as evaluator :class:`Detections` against ``gt`` (the dataset's
    :meth:`~PreparedSplit.ground_truth`): xyxy -> xywh, model label -> COCO category id."""
    index, label, box_xyxy, score = raw
    image_ids = np.asarray([dataset.images[i]["id"] for i in index.tolist()], dtype=np.int64)
    image = np.asarray([gt.image_index_of_id[int(i)] for i in image_ids], dtype=np.int64)
    category_of_label = np.asarray((0,) + dataset.classes.category_ids, dtype=np.int64)
    box_xywh = np.concatenate([box_xyxy[:, :2], box_xyxy[:, 2:] - box_xyxy[:, :2]], axis=1)
    return Detections(source, image, category_of_label[label], box_xywh, score)


@dataclass
class PredictResult:
    out_json: Path
    n_images: int
    n_detections: int
    seconds: float
    checkpoint: Path                # exactly the file the detections come from
    split: str
    epoch: int | None = None        # the checkpoint's epoch
    warnings: list[str] = field(default_factory=list)


def resolve_checkpoint(run_or_checkpoint: Path) -> Path:
    """The checkpoint ``lesion predict frcnn`` uses: a file is taken as it is; a run folder means
    its ``best.pt`` when the run recorded a best (``last.pt``'s record; the file must then exist:
    :class:`DataError` naming it otherwise, never a silent fallback), else its ``last.pt`` (a run
    without validation, or before its first improvement)."""
    from deeplesion_cli.frcnn import checkpoint as ckpt

    path = Path(run_or_checkpoint)
    if path.is_dir():
        last, best = path / "last.pt", path / "best.pt"
        if not last.is_file():
            if best.is_file():
                return best
            raise DataError(f"{path}: no best.pt or last.pt; is it a `lesion train frcnn` run "
                            "folder?")
        record = ckpt.peek(last).get("best") or {}
        if record.get("epoch") is None:
            return last
        if not best.is_file():
            raise DataError(f"{best} is missing, though {last} records the run's best "
                            f"{record.get('metric')} at epoch {record['epoch']}; predict with "
                            f"{last} (the last epoch) explicitly, or resume the run to select "
                            "a best again")
        return best
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint or run folder")
    return path


def check_same_pixels(state: dict, path: Path, prepared: Path, manifest: dict,
                      allow_other_render: bool = False) -> str | None:
    """Refuse (:class:`DataError`) a prepared folder whose images are made otherwise than those
    of the folder the checkpoint was trained on: same ``config_hash``, or the same
    :data:`~deeplesion_cli.frcnn.data.RENDER_OPTIONS` (window, context, spacing: the same pixels
    for the same slice, whatever the task, split or rows). ``allow_other_render`` turns the
    refusal into the returned warning."""
    trained_hash = state.get("prepared_config_hash")
    here_hash = manifest.get("config_hash")
    if trained_hash is None or trained_hash == here_hash:
        return None
    trained, here = state.get("prepared_render"), render_of(manifest)
    if trained is not None and trained == here:
        return None
    if trained is None:
        differs = ("the checkpoint does not record how its folder made its pixels, and the "
                   f"folders differ (config_hash {str(trained_hash)[:12]} at training, "
                   f"{str(here_hash)[:12]} here)")
    else:
        diffs = [f"{k} {here.get(k) if here else None!r} here, {trained.get(k)!r} at training"
                 for k in RENDER_OPTIONS if (here or {}).get(k) != trained.get(k)]
        differs = "its images are made otherwise: " + "; ".join(diffs)
    message = (f"{prepared} is not a prepared folder like the one {path} was trained on: "
               f"{differs}. The model would see pixels it never saw in training")
    if allow_other_render:
        return message + " (--allow-other-render)"
    raise DataError(message + "; prepare the data with the same --window, --context and "
                    "--spacing, or pass --allow-other-render to predict anyway")


def predict(run_or_checkpoint: Path, prepared: Path, out_json: Path, *, split: str = "test",
            batch_size: int = 8, workers: int = 0, device: str = "auto", amp: bool = False,
            score_thresh: float = 0.001, detections_per_img: int = 100,
            nms_iou: float | None = None, allow_other_render: bool = False,
            show_progress: bool = True) -> PredictResult:
    """Write COCO results json of a trained model over ``prepared``'s ``split``.

    Boxes are 0-based ``[x, y, w, h]`` pixels of the prepared images, ``category_id`` the prepared
    COCO ids; the checkpoint's classes must equal the prepared folder's, and its images must be
    made as the training folder's were (:func:`check_same_pixels`), else :class:`DataError`.
    ``nms_iou``: the box NMS IoU (default: the one the run was trained with). The result names
    the checkpoint used (:func:`resolve_checkpoint`) and its epoch.
    """
    import time

    from deeplesion_cli.formats.detections import write_coco_results
    from deeplesion_cli.frcnn import checkpoint as ckpt
    from deeplesion_cli.frcnn.data import read_manifest
    from deeplesion_cli.spec.core import OptionError
    from deeplesion_cli.spec.frcnn import parse_device

    start = time.monotonic()
    try:
        many = len(parse_device(device)[1]) > 1
    except ValueError as exc:
        raise OptionError(f"--device {exc}", "device") from None
    if many:
        raise OptionError(f"--device {device}: `lesion predict frcnn` runs on one device; give "
                          "one (e.g. 0)", "device")
    dev = ckpt.pick_device(device)
    manifest = read_manifest(prepared)
    path = resolve_checkpoint(run_or_checkpoint)
    state = ckpt.load_for_predict(path)  # best.pt or last.pt: the weights, not the optimiser
    warnings = []
    other = check_same_pixels(state, path, Path(prepared), manifest, allow_other_render)
    if other:
        warnings.append(other)
    model = ckpt.model_from_checkpoint(state, score_thresh=score_thresh,
                                       detections_per_img=detections_per_img,
                                       nms_iou=nms_iou).to(dev)
    dataset = PreparedSplit(prepared, split, manifest=manifest)
    trained = tuple(state["classes"]["names"])
    if trained != dataset.classes.names:
        raise DataError(f"{path} was trained on classes {list(trained)} but "
                        f"{Prepared(prepared).manifest_path} has {list(dataset.classes.names)}")
    gt = dataset.ground_truth()
    with Progress(len(dataset), f"predict {split}", enabled=show_progress) as progress:
        raw = infer_raw(model, dataset, dev, batch_size=batch_size, workers=workers, amp=amp,
                        progress=progress)
    dets = to_detections(raw, dataset, gt, str(path))
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_coco_results(out_json, gt, dets)
    return PredictResult(out_json, len(dataset), len(dets), time.monotonic() - start, path, split,
                         state.get("epoch"), warnings)
