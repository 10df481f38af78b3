"""One split of a prepared folder as a torch ``Dataset`` for torchvision's detection models.

The prepared folder's ``coco/<split>.json`` and ``<split>/<file_name>`` images are the only input
(docs/formats.md, section 3). Class indices follow ``manifest.json``'s ``classes``: a COCO
``category_id`` becomes the model label ``class_index + 1`` (0 is torchvision's background), and
back again when detections are written.

Item ``i`` is ``(image, target)``:

* ``image``: ``torch.uint8`` tensor ``(C, H, W)``, C = 1 (grey) or 3 (RGB), exactly the prepared
  PNG's pixels. It stays 8-bit through augmentation and the DataLoader (a quarter of the bytes of
  float32 through the worker pipes and the host-to-device copy); :func:`to_model_input` turns a
  batch into the float ``[0, 1]`` 3-channel tensors the model takes, on the device.
* ``target``: ``boxes`` float32 ``(N, 4)`` xyxy in 0-based continuous pixels of that image
  (COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``), ``labels`` int64 ``(N,)`` in
  ``1..num_classes``, ``image_id`` int (the COCO image id), ``index`` int (``i``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.formats.groundtruth import GroundTruth, ground_truth_from_dict
from deeplesion_cli.prepared import SPLITS, Prepared, PreparedError

__all__ = ["SPLITS", "DataError", "read_manifest", "render_of", "RENDER_OPTIONS", "ClassMap",
           "PreparedSplit", "collate", "to_model_input"]

#: The manifest options that decide a prepared image's pixels (``lesion prepare``'s
#: ``PrepareOptions.render_json`` less the PNG compression level, which changes bytes, not
#: pixels). Two prepared folders with equal values hold the same pixels for the same CT slice,
#: whatever their task, split, ratios or rows: a model trained on one may predict the other.
RENDER_OPTIONS = ("windows_hu", "context", "spacing_mm")


class DataError(LesionInputError):
    """A prepared folder (or run folder) that cannot be used; the message names the file and the
    reason."""


def read_manifest(prepared: Path) -> dict:
    """``manifest.json`` of ``prepared`` (:class:`~deeplesion_cli.prepared.Prepared` reads it);
    :class:`DataError` naming the file when it is missing or not JSON."""
    try:
        return Prepared(prepared).manifest
    except PreparedError as exc:
        # one error class for everything wrong with the data of `lesion train/predict frcnn`
        raise DataError(str(exc)) from None


def render_of(manifest: dict) -> dict | None:
    """The :data:`RENDER_OPTIONS` of a manifest (None when it records no options)."""
    options = manifest.get("options")
    if not isinstance(options, dict):
        return None
    return {k: options.get(k) for k in RENDER_OPTIONS}


@dataclass(frozen=True)
class ClassMap:
    """Prepared classes in class-index order: ``category_ids[k]`` and ``names[k]`` belong to model
    label ``k + 1``."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_manifest(cls, manifest: dict, source: str = "manifest.json") -> "ClassMap":
        classes = manifest.get("classes")
        if not isinstance(classes, list) or not classes:
            raise DataError(f"{source}: no 'classes' list")
        try:
            ordered = sorted(classes, key=lambda c: int(c["class_index"]))
            return cls(tuple(int(c["category_id"]) for c in ordered),
                       tuple(str(c["name"]) for c in ordered))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{source}: 'classes' entries need class_index, category_id, name")

    @property
    def num_classes(self) -> int:
        """Model classes including background."""
        return len(self.category_ids) + 1

    def label_of_category(self) -> dict[int, int]:
        return {c: k + 1 for k, c in enumerate(self.category_ids)}


class PreparedSplit(Dataset):
    """Images and boxes of one split of a prepared folder (module docstring for the items).

    ``indices`` restricts the split to those images (in that order), e.g. the fixed sample of the
    training set that is evaluated every epoch; ``transform`` is a ``(image, target) -> (image,
    target)`` callable (``frcnn.transforms``) applied after decoding.
    """

    def __init__(self, prepared: Path, split: str, *, transform=None, indices=None,
                 manifest: dict | None = None):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
        self.prepared = Path(prepared)
        self.split = split
        self.manifest = manifest if manifest is not None else read_manifest(self.prepared)
        folder = Prepared(self.prepared)
        self.classes = ClassMap.from_manifest(self.manifest, str(folder.manifest_path))
        self.image_dir = folder.image_dir(split)
        self.coco_path = folder.coco_path(split)
        try:
            document = json.loads(self.coco_path.read_text())
        except OSError as exc:
            raise DataError(f"{self.coco_path}: cannot read: {exc.strerror or exc}")
        except ValueError as exc:
            raise DataError(f"{self.coco_path}: not valid JSON ({exc})")
        images = sorted(document.get("images", []), key=lambda im: im["id"])
        if indices is not None:
            images = [images[i] for i in indices]
        self.coco = document
        self.images = images
        label_of = self.classes.label_of_category()
        by_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
        for ann in document.get("annotations", []):
            if ann["image_id"] in by_image:
                by_image[ann["image_id"]].append(ann)
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for im in images:
            anns = by_image[im["id"]]
            xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            try:
                labels = np.asarray([label_of[a["category_id"]] for a in anns], dtype=np.int64)
            except KeyError as exc:
                raise DataError(f"{self.coco_path}: category_id {exc.args[0]} is not in the "
                                "manifest's classes")
            self._boxes.append(xyxy)
            self._labels.append(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.images[i]["file_name"]

    def image_classes(self) -> list[list[int]]:
        """Per image, the sorted class indices (0-based, = label - 1) of its lesions."""
        return [sorted({int(v) - 1 for v in labels}) for labels in self._labels]

    def ground_truth(self) -> GroundTruth:
        """This split's (or sample's) ground truth for ``deeplesion_cli.evaluation``."""
        ids = {im["id"] for im in self.images}
        document = dict(self.coco)
        document["images"] = self.images
        document["annotations"] = [a for a in self.coco.get("annotations", [])
                                   if a["image_id"] in ids]
        return ground_truth_from_dict(document, str(self.coco_path))

    def read_image(self, i: int) -> torch.Tensor:
        """The prepared PNG as uint8 ``(C, H, W)``."""
        from PIL import Image

        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "RGB"):  # lesion prepare writes only these two
                    raise DataError(f"{path}: image mode {im.mode}, expected 8-bit L or RGB; "
                                    "re-run lesion prepare")
                array = np.asarray(im)
        except OSError as exc:
            raise DataError(f"{path}: cannot read the prepared image ({exc}); re-run lesion "
                            "prepare") from None
        if array.ndim == 2:
            return torch.from_numpy(array.copy()).unsqueeze(0)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def __getitem__(self, i: int):
        image = self.read_image(i)
        target = {"boxes": torch.from_numpy(self._boxes[i].copy()),
                  "labels": torch.from_numpy(self._labels[i].copy()),
                  "image_id": int(self.images[i]["id"]), "index": int(i)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


def collate(batch):
    """``[(image, target), ...]`` -> ``(list of images, list of targets)``, torchvision's
    detection batch form (images of different sizes stay separate tensors)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def to_model_input(images, targets=None, device=None, non_blocking: bool = False):
    """A batch from the loader as model input on ``device``.

    ``images``: uint8 ``(C, H, W)`` tensors -> float32 ``(3, H, W)`` in ``[0, 1]`` (grey repeated
    to 3 channels, which ImageNet/COCO-pretrained backbones need); torchvision's transform then
    normalises with the ImageNet mean/std. ``targets``: ``boxes`` and ``labels`` moved to the
    device; other keys dropped (the model rejects none, but they need not travel).
    """
    out = []
    for image in images:
        image = image.to(device, non_blocking=non_blocking)
        image = image.float().div_(255.0)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        out.append(image)
    if targets is None:
        return out, None
    moved = [{"boxes": t["boxes"].to(device, non_blocking=non_blocking),
              "labels": t["labels"].to(device, non_blocking=non_blocking)} for t in targets]
    return out, moved
