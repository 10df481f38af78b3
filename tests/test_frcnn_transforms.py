"""Training augmentations: SeedAugment keeps boxes on their lesions (property test on synthetic
lesions), reproducibility under torch.manual_seed, the exact pad + resize geometry, edge padding,
label filtering, pass-through of other keys, zero-box images, and the "none" identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deeplesion_cli.frcnn.transforms import AUGMENTS, NoAugment, SeedAugment, build_augment

BACKGROUND = 20
LESION_VALUES = (150, 200, 250)  # lesion k of an image has value LESION_VALUES[k] and label k + 1


def render(shape_hw, lesions):
    """uint8 (H, W) masks, one per lesion (255 inside), and their exact XYXY bounding boxes.

    ``lesions``: (kind, x1, y1, w, h) with kind "rect" or "ellipse"; an ellipse is the set of
    pixels whose centres lie inside the ellipse inscribed in that rectangle."""
    height, width = shape_hw
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    masks, boxes = [], []
    for kind, x1, y1, w, h in lesions:
        if kind == "rect":
            inside = (xs > x1) & (xs < x1 + w) & (ys > y1) & (ys < y1 + h)
        else:
            inside = ((xs - x1 - w / 2) / (w / 2)) ** 2 + ((ys - y1 - h / 2) / (h / 2)) ** 2 <= 1
        rows, cols = np.nonzero(inside)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        masks.append(np.where(inside, 255, 0).astype(np.uint8))
    return masks, np.asarray(boxes, np.float32)


@st.composite
def scenes(draw):
    """An image 96..200 px, grey or RGB, with 1-3 lesions in disjoint vertical strips, at least
    1 px from the image border (edge padding would otherwise smear a lesion into the pad)."""
    height = draw(st.integers(96, 200))
    width = draw(st.integers(96, 200))
    n = draw(st.integers(1, 3))
    strip = width // n
    lesions = []
    for k in range(n):
        w = draw(st.integers(8, min(60, strip - 2)))
        h = draw(st.integers(8, 60))
        x1 = draw(st.integers(k * strip + 1, (k + 1) * strip - 1 - w))
        y1 = draw(st.integers(1, height - 1 - h))
        lesions.append((draw(st.sampled_from(["rect", "ellipse"])), x1, y1, w, h))
    channels = draw(st.sampled_from([1, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    return (height, width), lesions, channels, seed


def augment_with_seed(aug, seed, image, target):
    torch.manual_seed(seed)
    return aug(image, target)


@settings(max_examples=30, deadline=None)
@given(scenes())
@example(((96, 157), [("rect", 1, 1, 8, 8)], 1, 0))   # clipped at the corner (found by a run)
def test_seed_augment_keeps_boxes_on_lesions(scene):
    shape_hw, lesions, channels, seed = scene
    masks, boxes = render(shape_hw, lesions)
    grey = np.full(shape_hw, BACKGROUND, np.uint8)
    for k, m in enumerate(masks):
        grey[m > 0] = LESION_VALUES[k]
    image = torch.from_numpy(grey).expand(channels, *shape_hw).clone()
    labels = torch.arange(1, len(lesions) + 1)
    target = {"boxes": torch.from_numpy(boxes), "labels": labels, "image_id": 3}
    aug = SeedAugment(out_size_px=160)

    out_image, out = augment_with_seed(aug, seed, image, target)
    assert out_image.dtype == torch.uint8 and out_image.shape == (channels, 160, 160)
    assert out["image_id"] == 3
    assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    assert out["boxes"].shape == (len(out["labels"]), 4)
    b = out["boxes"]
    assert (b >= 0).all() and (b <= 160).all()
    assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()

    # The same seed replays the same geometry on each lesion's mask alone: where lesion k went.
    moved = []
    for m in masks:
        mask_out, _ = augment_with_seed(aug, seed, torch.from_numpy(m)[None], {
            "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
        moved.append(mask_out[0].numpy())

    kept = {int(lab): box for lab, box in zip(out["labels"], out["boxes"].tolist())}
    for k, mask in enumerate(moved):
        on = mask > 127
        rows, cols = np.nonzero(on)
        # the image moved with the masks: lesion k's interior has lesion k's value
        interior = torch.from_numpy(mask == 255)
        if interior.any():
            assert (out_image[:, interior].int() - LESION_VALUES[k]).abs().max() <= 1
        fully_visible = on.sum() >= 4 and not (on[0].any() or on[-1].any() or on[:, 0].any()
                                               or on[:, -1].any())
        if fully_visible:
            assert k + 1 in kept, f"lesion {k + 1} inside the crop was dropped"
        if k + 1 not in kept or on.sum() < 4:
            continue
        x1, y1, x2, y2 = kept[k + 1]
        cx, cy = cols + 0.5, rows + 0.5
        # a pixel is in the box when it overlaps it: a rim pixel that the resize made
        # half-bright has its centre up to half a pixel out (an 8 px lesion clipped at a corner
        # to 4 x 8 px has a whole row of them; its box ended 0.0005 px before their centres)
        inside = (cx >= x1 - 0.5) & (cx <= x2 + 0.5) & (cy >= y1 - 0.5) & (cy <= y2 + 0.5)
        assert inside.mean() >= 0.95, f"only {inside.mean():.2f} of lesion {k + 1} in its box"
        # interpolation at the rim may put a half-bright pixel just outside, never far outside
        near = (cx >= x1 - 1.5) & (cx <= x2 + 1.5) & (cy >= y1 - 1.5) & (cy <= y2 + 1.5)
        assert near.all()
        if fully_visible:
            # an unclipped rotated box is centred on the rotated centre of the lesion
            dist = np.hypot(cx - (x1 + x2) / 2, cy - (y1 + y2) / 2).min()
            assert dist <= 2.0, f"box centre {dist:.1f} px from lesion {k + 1}"
            # It encloses the rotated lesion box: for a rectangle or an inscribed ellipse that is
            # at most sqrt(2) times the lesion's own extent along each axis (Cauchy-Schwarz on
            # w|cos| + h|sin|); +2 px for the rim of the thresholded mask.
            assert x2 - x1 <= 2 ** 0.5 * (np.ptp(cx) + 1) + 2
            assert y2 - y1 <= 2 ** 0.5 * (np.ptp(cy) + 1) + 2


def test_same_seed_same_output_and_seeds_differ():
    image = torch.zeros(3, 120, 100, dtype=torch.uint8)
    image[:, 40:70, 30:60] = 200
    target = {"boxes": torch.tensor([[30.0, 40.0, 60.0, 70.0]]), "labels": torch.tensor([2]),
              "image_id": 0}
    aug = SeedAugment()
    a_img, a = augment_with_seed(aug, 11, image, target)
    b_img, b = augment_with_seed(aug, 11, image, target)
    assert torch.equal(a_img, b_img) and torch.equal(a["boxes"], b["boxes"])
    c_img, c = augment_with_seed(aug, 12, image, target)
    assert not torch.equal(a["boxes"], c["boxes"]) and not torch.equal(a_img, c_img)


def test_pad_and_resize_only_is_an_exact_affine_map():
    # rotation 0 and crop 0 leave pad (+50) then resize from (120 + 100) x (100 + 100) to 240.
    image = torch.zeros(1, 120, 100, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 20.0, 30.5, 60.0], [0.0, 0.0, 100.0, 120.0]])
    aug = SeedAugment(pad_px=50, max_rotation_deg=0.0, max_crop_px=0, out_size_px=240)
    out_image, out = aug(image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "image_id": 5})
    sx, sy = 240 / 200, 240 / 220
    expected = torch.tensor([[(10 + 50) * sx, (20 + 50) * sy, (30.5 + 50) * sx, (60 + 50) * sy],
                             [50 * sx, 50 * sy, 150 * sx, 170 * sy]])
    torch.testing.assert_close(out["boxes"], expected, rtol=0, atol=1e-4)
    assert out["labels"].tolist() == [1, 2] and out_image.shape == (1, 240, 240)


def test_edge_padding_replicates_the_border():
    # square input and out_size = padded size: rotation 0 and resize are exact identities here
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    image[:, :, 0] = 200  # left column bright
    image[:, 39, 1:] = 90  # bottom row grey (its left end stays bright)
    aug = SeedAugment(pad_px=5, max_rotation_deg=0.0, max_crop_px=0, out_size_px=50)
    out_image, out = aug(image, {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]),
                                 "labels": torch.tensor([1])})
    assert out_image.shape == (3, 50, 50)
    assert torch.equal(out_image[:, 5:45, 5:45], image)
    assert (out_image[:, :, :6] == 200).all()  # left pad continues the bright column
    assert (out_image[:, 44:, 6:] == 90).all()  # bottom pad continues the grey row
    assert (out_image[:, :44, 6:] == 0).all()
    assert out["boxes"].tolist() == [[6.0, 6.0, 10.0, 10.0]]


def test_drops_thin_boxes_with_their_labels_and_passes_other_keys():
    image = torch.zeros(1, 80, 80, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0],   # kept
                          [40.0, 40.0, 40.5, 60.0],   # 0.5 px wide: dropped
                          [50.0, 10.0, 70.0, 11.0],   # exactly 1 px tall: kept
                          [60.0, 60.0, 70.0, 60.9]])  # 0.9 px tall: dropped
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3, 4]), "image_id": 42,
              "file_name": "000001_01_01_100.png", "spacing_mm": torch.tensor([0.7, 0.7, 5.0])}
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
    image_before = image.clone()
    aug = SeedAugment(pad_px=0, max_rotation_deg=0.0, max_crop_px=0, out_size_px=80)
    out_image, out = aug(image, target)
    assert out["labels"].tolist() == [1, 3]
    assert out["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0], [50.0, 10.0, 70.0, 11.0]]
    assert out["image_id"] == 42 and out["file_name"] == "000001_01_01_100.png"
    assert out["spacing_mm"] is target["spacing_mm"]
    assert set(out) == set(target)
    # the caller's target and image are not modified
    assert torch.equal(target["boxes"], before["boxes"])
    assert target["labels"].tolist() == [1, 2, 3, 4]
    assert torch.equal(image, image_before)


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_boxes(channels):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (channels, 150, 130), dtype=torch.uint8)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "image_id": 1}
    out_image, out = SeedAugment()(image, target)
    assert out_image.shape == (channels, 240, 240) and out_image.dtype == torch.uint8
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == torch.float32
    assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64


def test_build_augment():
    assert AUGMENTS == ("none", "seed")
    none = build_augment("none")
    assert isinstance(none, NoAugment)
    image = torch.zeros(1, 10, 10, dtype=torch.uint8)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out_image, out = none(image, target)
    assert out_image is image and out is target
    seed = build_augment("seed", out_size_px=96)
    assert isinstance(seed, SeedAugment)
    params = (seed.pad_px, seed.max_rotation_deg, seed.max_crop_px, seed.out_size_px)
    assert params == (50, 30.0, 64, 96)
    assert seed(image, target)[0].shape == (1, 96, 96)
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment("flip")


@pytest.mark.parametrize("image", [torch.zeros(2, 10, 10, dtype=torch.uint8),
                                   torch.zeros(1, 10, 10, dtype=torch.float32),
                                   torch.zeros(10, 10, dtype=torch.uint8)])
def test_rejects_bad_images(image):
    with pytest.raises(ValueError, match="uint8"):
        SeedAugment()(image, {"boxes": torch.zeros(0, 4),
                              "labels": torch.zeros(0, dtype=torch.int64)})


@pytest.mark.parametrize("kwargs", [dict(pad_px=-1), dict(pad_px=1.5), dict(max_crop_px=-2),
                                    dict(max_rotation_deg=200.0), dict(out_size_px=0)])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        SeedAugment(**kwargs)
