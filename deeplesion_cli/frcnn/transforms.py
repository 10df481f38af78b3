"""Training-time augmentation for the Faster R-CNN dataset.

A transform is a callable ``(image, target) -> (image, target)`` that keeps the structure the
dataset yields:

* ``image``: ``torch.uint8`` tensor of shape ``(C, H, W)``, ``C`` = 1 (grey) or 3 (RGB).
* ``target``: a dict with

  - ``"boxes"``: ``float32`` tensor ``(N, 4)``, ``[x1, y1, x2, y2]`` (XYXY) in 0-based continuous
    pixel coordinates of *this* image: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``, so a
    box has width ``x2 - x1`` and the whole image is ``[0, W] x [0, H]``;
  - ``"labels"``: ``int64`` tensor ``(N,)``, class ids ``1..num_classes``;
  - ``"image_id"`` and any other key: passed through unchanged.

On return the image is still ``uint8`` ``(C, H', W')``, ``"boxes"`` are in the frame of the new
image and ``"labels"`` are filtered in step with them (a box the augmentation pushed off the image
goes away together with its label). Per-box keys other than ``"labels"`` are **not** filtered, so
a target that carries such keys (``"area"``, ``"iscrowd"``) must not be augmented here.

Augmentations (:data:`AUGMENTS`, chosen with :func:`build_augment`)
--------------------------------------------------------------------
``"none"``
    The identity: returns its arguments unchanged (same objects).
``"seed"``
    :class:`SeedAugment`, the pipeline of the seed study: edge pad, random rotation, random crop
    of each side, resize to a square. Built from ``torchvision.transforms.v2`` on
    ``tv_tensors.Image`` / ``tv_tensors.BoundingBoxes`` so that every geometric step is applied to
    the image and to the boxes by the same torchvision code.

Randomness comes from torch's global RNG (as in every v2 transform), so ``torch.manual_seed`` and
the DataLoader's per-worker seeding govern it: the same global seed gives the same output.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["AUGMENTS", "EdgePad", "NoAugment", "RandomSideCrop", "SeedAugment", "build_augment"]

AUGMENTS = ("none", "seed")

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class NoAugment:
    """The ``"none"`` augmentation: returns ``(image, target)``, the very same objects."""

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomSideCrop(v2.Transform):
    """Crop an independent uniform integer number of pixels, ``0..max_crop_px`` inclusive, from each
    of the four sides (``top``, ``bottom``, ``left``, ``right``).

    Unlike ``v2.RandomCrop`` there is no fixed output size: the result is ``H - top - bottom`` by
    ``W - left - right`` pixels. Boxes are shifted by ``(-left, -top)`` and
    clamped to the new canvas by torchvision's ``crop`` kernel. On an image too small for the full
    range, each side is limited to ``(size - 1) // 2`` so that at least one pixel row and column
    survive.

    Args:
        max_crop_px: largest number of pixels cut from any one side (``>= 0``).
    """

    def __init__(self, max_crop_px: int) -> None:
        super().__init__()
        if int(max_crop_px) != max_crop_px or max_crop_px < 0:
            raise ValueError(f"max_crop_px must be an integer >= 0, got {max_crop_px!r}")
        self.max_crop_px = int(max_crop_px)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        max_y = min(self.max_crop_px, (height - 1) // 2)
        max_x = min(self.max_crop_px, (width - 1) // 2)
        # Four draws from the global RNG, so torch.manual_seed / worker seeding reproduce the crop.
        top, bottom = torch.randint(0, max_y + 1, (2,)).tolist()
        left, right = torch.randint(0, max_x + 1, (2,)).tolist()
        return dict(top=top, left=left, height=height - top - bottom, width=width - left - right)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class EdgePad(v2.Transform):
    """Pad ``pad_px`` pixels on every side, the image by replicating its edge pixels
    (``padding_mode="edge"``), the boxes by the matching shift ``(+pad_px, +pad_px)`` on a canvas
    ``2 * pad_px`` larger in each dimension.

    ``v2.Pad(padding_mode="edge")`` raises on bounding boxes (torchvision 0.29's
    ``pad_bounding_boxes`` accepts only ``"constant"``). The geometry of edge and constant padding is the same shift, so boxes go through the constant-mode
    kernel while the image is replicated.

    Args:
        pad_px: pixels added on each side (``>= 0``).
    """

    def __init__(self, pad_px: int) -> None:
        super().__init__()
        if int(pad_px) != pad_px or pad_px < 0:
            raise ValueError(f"pad_px must be an integer >= 0, got {pad_px!r}")
        self.pad_px = int(pad_px)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        mode = "constant" if isinstance(inpt, tv_tensors.BoundingBoxes) else "edge"
        return self._call_kernel(F.pad, inpt, padding=[self.pad_px], padding_mode=mode)


class SeedAugment:
    """The seed study's training augmentation, applied to image and boxes together.

    Steps, in order (``H x W`` is the input size):

    1. **Pad** ``pad_px`` pixels on every side by replicating the edge pixels
       (``padding_mode="edge"``, :class:`EdgePad`); boxes shift by ``(+pad_px, +pad_px)``. Canvas
       ``(H + 2 pad_px) x (W + 2 pad_px)``.
    2. **Rotate** by an angle drawn uniformly from ``[-max_rotation_deg, +max_rotation_deg]``
       (positive = counter-clockwise on screen) about the canvas centre ``(W'/2, H'/2)``;
       bilinear, no expand (the canvas keeps its size, corners fill with 0, the darkest value).
    3. **Crop** an independent uniform integer ``0..max_crop_px`` pixels from each of the four
       sides (:class:`RandomSideCrop`).
    4. **Resize** to ``out_size_px x out_size_px`` (bilinear, antialiased); the aspect ratio is not
       kept, boxes scale by ``out_size_px / W''`` in x and ``out_size_px / H''`` in y.
    5. **Clamp** boxes to ``[0, out_size_px]`` in x and y, then **drop** boxes whose width or height
       is below 1 px, together with their labels.

    There is deliberately no horizontal (or vertical) flip: in CT the patient's left and right
    are anatomy (the liver is on one side, the spleen on the other), and a flipped slice is an
    image the detector never sees at test time.

    How a rotated box is computed (measured on torchvision 0.29): v2 rotates the box's four corners
    about the canvas centre and takes the **axis-aligned box enclosing them**, then clamps it to
    the canvas. A ``w x h`` box rotated by ``theta`` becomes ``w|cos| + h|sin|`` wide and
    ``h|cos| + w|sin|`` tall: a square grows by ``cos + sin`` per side, x1.366 (+37 %) at 30 degrees
    and x1.414 (+41 %) at 45 degrees; an elongated box grows more along its short side (a 2:1 box
    at 30 degrees gets x1.87 taller). Since a lesion is roughly an ellipse inscribed in its box, the
    rotated box is looser around the lesion than a box drawn on the rotated image would be; it
    always contains the lesion, and its centre is the rotated centre of the original box, i.e. on
    the lesion.

    Args:
        pad_px: pixels of edge padding on each side (``>= 0``).
        max_rotation_deg: largest absolute rotation in degrees (``0..180``); 0 disables rotation.
        max_crop_px: largest crop from any one side in pixels (``>= 0``); 0 disables cropping.
        out_size_px: side of the square output in pixels (``>= 1``).

    Call:
        ``image``: ``uint8`` ``(C, H, W)``, ``C`` in ``{1, 3}``; ``target["boxes"]``: ``(N, 4)``
        XYXY 0-based continuous pixels (``N`` may be 0); ``target["labels"]``: ``int64 (N,)``.
        Returns ``image`` ``uint8`` ``(C, out_size_px, out_size_px)`` and a new dict with
        ``"boxes"`` ``float32 (M, 4)`` in the output frame, ``"labels"`` ``int64 (M,)``,
        ``M <= N``, every other key of ``target`` unchanged. The input tensors are not modified.
    """

    def __init__(self, pad_px: int = 50, max_rotation_deg: float = 30.0, max_crop_px: int = 64,
                 out_size_px: int = 240) -> None:
        if not 0.0 <= float(max_rotation_deg) <= 180.0:
            raise ValueError(f"max_rotation_deg must lie in [0, 180], got {max_rotation_deg!r}")
        if int(out_size_px) != out_size_px or out_size_px < 1:
            raise ValueError(f"out_size_px must be an integer >= 1, got {out_size_px!r}")
        pad = EdgePad(pad_px)  # validates pad_px
        crop = RandomSideCrop(max_crop_px)  # validates max_crop_px
        self.pad_px = pad.pad_px
        self.max_rotation_deg = float(max_rotation_deg)
        self.max_crop_px = crop.max_crop_px
        self.out_size_px = int(out_size_px)
        self.pipeline = v2.Compose([
            # Replicate, not reflect: reflecting would mirror a lesion near the border into the
            # pad, an unlabelled copy the detector would be taught to call background. Replicating
            # only smears the outermost pixel row, which in CT is air or table.
            pad,
            v2.RandomRotation(self.max_rotation_deg, interpolation=v2.InterpolationMode.BILINEAR,
                              expand=False, fill=0),
            crop,
            v2.Resize((self.out_size_px, self.out_size_px),
                      interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.ClampBoundingBoxes(),
            # min_size=1: drops boxes with w < 1 or h < 1 px (and, via "labels", their labels).
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter="default"),
        ])

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 \
                or image.shape[0] not in (1, 3):
            got = f"{getattr(image, 'dtype', type(image))} {tuple(getattr(image, 'shape', ()))}"
            raise ValueError(f"image must be a uint8 tensor of shape (C, H, W) with C in {{1, 3}}, "
                             f"got {got}")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"target has {len(boxes)} boxes but {len(labels)} labels")
        height, width = image.shape[-2:]
        out_image, out = self.pipeline(
            tv_tensors.Image(image),
            {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
             "labels": labels})
        new_target = dict(target)
        new_target["boxes"] = out["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        new_target["labels"] = out["labels"]
        return out_image.as_subclass(torch.Tensor), new_target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(pad_px={self.pad_px}, "
                f"max_rotation_deg={self.max_rotation_deg}, max_crop_px={self.max_crop_px}, "
                f"out_size_px={self.out_size_px})")


def build_augment(name: str, *, out_size_px: int = 240) -> Transform:
    """The augmentation called ``name`` (one of :data:`AUGMENTS`).

    ``"none"`` gives :class:`NoAugment` (identity; ``out_size_px`` is ignored, the image keeps its
    size); ``"seed"`` gives ``SeedAugment(out_size_px=out_size_px)`` with the study's other
    defaults.
    """
    if name == "none":
        return NoAugment()
    if name == "seed":
        return SeedAugment(out_size_px=out_size_px)
    raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTS)}")
