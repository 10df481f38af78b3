"""Detection overlays: a prepared slice with its ground truth and a run's predictions drawn on it.

Rules (``lesion report``):

* **Kept predictions.** Detections with score >= the evaluation's ``--score`` (metrics.json
  ``options.score``, default 0.25): the operating point of the ``at_score`` metrics, so an
  overlay shows exactly the boxes counted in the precision / recall / F1 table. At most
  :data:`MAX_BOXES` per image are drawn (highest scores first).
* **Matching.** As ``at_score`` (docs/metrics.md section 5): class-aware greedy matching in score
  order at the evaluation's ``--iou``; a kept prediction is a true positive when matched, else a
  false positive; an unmatched lesion is a false negative.
* **Per-image quality.** F1 = 2 TP / (2 TP + FP + FN) of the image (1.0 for an image with no
  lesion and no kept prediction). Images are ranked by F1, then by the mean IoU of their true
  positives (0 without any), then by fewer false positives, then by file name. **Best** = the
  first ``n`` of that ranking, **worst** = the last ``n`` (worst first), never repeating an image
  of the best list (with fewer than ``2 n`` images the ranking is split in halves).
* **Drawing.** Grey slices become RGB, enlarged by a whole factor (nearest neighbour) to at least
  :data:`MIN_SIDE` pixels per side, so a box edge at pixel ``x`` lands at ``x * factor``.
  Prediction boxes first (true positives :data:`TP_COLOR`, false positives :data:`FP_COLOR`),
  then the ground truth (:data:`GT_COLOR`) over them, all 2 px wide and inward from the box's
  outer edge; then each prediction's score on a small label above its box (below it at the top
  of the image), over everything, and with several classes the class names. A caption band
  below the image names the run, the image and its counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplesion_cli import atomic
from deeplesion_cli.evaluation.matching import greedy_match, score_order
from deeplesion_cli.formats.groundtruth import Detections, GroundTruth

GT_COLOR = (0, 255, 0)
TP_COLOR = (255, 165, 0)
FP_COLOR = (255, 0, 0)
MIN_SIDE = 512
MAX_BOXES = 20
LINE_WIDTH = 2
CAPTION_BG = (0, 0, 0)
CAPTION_FG = (255, 255, 255)


@dataclass
class ImageScore:
    """One image's counts at the score threshold (``index`` into the ground truth's images)."""

    index: int
    name: str
    tp: int
    fp: int
    fn: int
    mean_iou: float | None

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator


def match_at(gt: GroundTruth, dets: Detections, score: float, iou: float):
    """``(kept, det_gt, det_iou)`` per detection: kept = score >= ``score``; the matching of
    ``at_score`` (class-aware greedy, VOC rule)."""
    det_gt, det_iou = greedy_match(gt, dets, iou, class_aware=True)
    kept = np.asarray(dets.score, dtype=np.float64) >= score
    return kept, det_gt, det_iou


def image_scores(gt: GroundTruth, dets: Detections, score: float, iou: float) -> list[ImageScore]:
    """Per-image TP / FP / FN and mean IoU of true positives at ``score`` and ``iou``."""
    kept, det_gt, det_iou = match_at(gt, dets, score, iou)
    n = gt.n_images
    image = np.asarray(dets.image, dtype=np.int64)
    tp_mask = kept & (det_gt >= 0)
    tp = np.bincount(image[tp_mask], minlength=n)
    fp = np.bincount(image[kept & (det_gt < 0)], minlength=n)
    n_gt = np.bincount(np.asarray(gt.image, dtype=np.int64), minlength=n)
    iou_sum = np.bincount(image[tp_mask], weights=det_iou[tp_mask], minlength=n)
    return [ImageScore(i, gt.image_names[i], int(tp[i]), int(fp[i]), int(n_gt[i] - tp[i]),
                       float(iou_sum[i] / tp[i]) if tp[i] else None) for i in range(n)]


def ranked(scores: list[ImageScore]) -> list[ImageScore]:
    """Best first: F1, then mean IoU of TPs, then fewer FPs (descending), then file name."""
    return sorted(scores, key=lambda s: (-s.f1, -(s.mean_iou or 0.0), s.fp, s.name))


def best_and_worst(scores: list[ImageScore], n: int) -> tuple[list[ImageScore],
                                                              list[ImageScore]]:
    """The ``n`` best and ``n`` worst images (worst first), disjoint (module docstring)."""
    order = ranked(scores)
    if n <= 0 or not order:
        return [], []
    n_best = min(n, math.ceil(len(order) / 2))
    best = order[:n_best]
    rest = order[n_best:]
    worst = list(reversed(rest))[:min(n, len(rest))]
    return best, worst


def scale_factor(width: int, height: int, min_side: int = MIN_SIDE) -> int:
    """The whole enlargement factor that brings the image's larger side to ``min_side``."""
    return max(1, math.ceil(min_side / max(width, height, 1)))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


@dataclass
class Box:
    """A box to draw: ``xywh`` in the original image's pixels; ``label`` written on it."""

    xywh: tuple[float, float, float, float]
    color: tuple[int, int, int]
    label: str = ""


def _rect(box: Box, k: int, width: int, height: int) -> list[int]:
    x, y, w, h = box.xywh
    x1 = int(round(x * k))
    y1 = int(round(y * k))
    x2 = int(round((x + w) * k)) - 1
    y2 = int(round((y + h) * k)) - 1
    x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
    y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
    return [x1, y1, max(x1, x2), max(y1, y2)]


def draw_overlay(image_path: Path, out_path: Path, gt_boxes: list[Box], pred_boxes: list[Box],
                 caption: list[str], pdf: bool = False) -> list[Path]:
    """Draw ``pred_boxes``, ``gt_boxes``, then the labels on the enlarged image, add the caption
    band, write a PNG (and a PDF beside it); return the paths written. The box at original pixel
    ``(x, y, w, h)`` has its outer edge at columns ``round(x * k)`` and
    ``round((x + w) * k) - 1`` (``k`` = :func:`scale_factor`)."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
        base = im.convert("RGB")
    k = scale_factor(*base.size)
    width, height = base.size[0] * k, base.size[1] * k
    base = base.resize((width, height), Image.NEAREST)
    font = _font(max(11, min(18, width // 40)))
    draw = ImageDraw.Draw(base)
    labels = []
    for box in pred_boxes:
        rect = _rect(box, k, width, height)
        draw.rectangle(rect, outline=box.color, width=LINE_WIDTH)
        if box.label:
            labels.append((rect, box))
    for box in gt_boxes:
        draw.rectangle(_rect(box, k, width, height), outline=box.color, width=LINE_WIDTH)
    for rect, box in labels:  # labels over the boxes, so that every score stays readable
        tw, th = _text_size(draw, box.label, font)
        ty = rect[1] - th - 4 if rect[1] - th - 4 >= 0 else rect[3] + 2
        tx = min(rect[0], max(0, width - tw - 4))
        draw.rectangle([tx, ty, tx + tw + 3, ty + th + 3], fill=box.color)
        draw.text((tx + 2, ty + 1), box.label, fill=(0, 0, 0), font=font)
    for box in gt_boxes:
        if box.label:
            rect = _rect(box, k, width, height)
            draw.text((rect[0] + 3, rect[3] - 2), box.label, fill=box.color, font=font,
                      anchor="lb")
    line_h = _text_size(draw, "Ag", font)[1] + 6
    band = line_h * len(caption) + 8
    canvas = Image.new("RGB", (width, height + band), CAPTION_BG)
    canvas.paste(base, (0, 0))
    cdraw = ImageDraw.Draw(canvas)
    for i, line in enumerate(caption):
        cdraw.text((6, height + 4 + i * line_h), line, fill=CAPTION_FG, font=font)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(out_path, lambda p: canvas.save(p, format="PNG"))
    written = [out_path]
    if pdf:
        pdf_path = out_path.with_suffix(".pdf")
        atomic.write_with(pdf_path, lambda p: canvas.save(p, format="PDF", resolution=100.0))
        written.append(pdf_path)
    return written


def boxes_of_image(gt: GroundTruth, dets: Detections | None, index: int, score: float,
                   iou: float, matched=None) -> tuple[list[Box], list[Box]]:
    """Ground-truth boxes and kept predictions (at most :data:`MAX_BOXES`, by score) of image
    ``index``. ``matched``: a :func:`match_at` result to reuse."""
    names = dict(gt.categories)
    several = len(gt.categories) > 1
    g = np.flatnonzero(np.asarray(gt.image) == index)
    gt_boxes = [Box(tuple(float(v) for v in gt.box_xywh[i]), GT_COLOR,
                    names.get(int(gt.category[i]), "") if several else "") for i in g]
    preds: list[Box] = []
    if dets is not None and len(dets):
        kept, det_gt, _ = matched if matched is not None else match_at(gt, dets, score, iou)
        order = score_order(dets)
        order = order[(np.asarray(dets.image)[order] == index) & kept[order]]
        mine = order[:MAX_BOXES].tolist()
        for i in mine:
            s = float(dets.score[i])
            label = f"{s:.2f}"
            if several:
                label = f"{names.get(int(dets.category[i]), dets.category[i])} {label}"
            preds.append(Box(tuple(float(v) for v in dets.box_xywh[i]),
                             TP_COLOR if det_gt[i] >= 0 else FP_COLOR, label))
    return gt_boxes, preds


LEGEND = "green: ground truth, orange: true positive, red: false positive (score on the label)"


# ----------------------------------------------------------------------- lesion predict --draw

#: Score at or above which ``lesion predict --draw`` draws a prediction (the evaluation's
#: default ``--score``, so that the pictures show the boxes ``lesion eval`` counts at it).
DRAW_SCORE = 0.25
#: The IoU at which ``--draw`` colours a kept prediction as a true positive.
DRAW_IOU = 0.5


def draw_dir(out_json) -> Path:
    """Where ``lesion predict ... -o OUT.json --draw N`` writes its pictures:
    ``OUT_draw/`` beside the detections."""
    out_json = Path(out_json)
    return out_json.with_name(f"{out_json.stem}_draw")


def spread(n_items: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_items)`` (all of them when ``n >= n_items``),
    first and last included: pictures from the whole split, not its first patient only."""
    if n <= 0 or n_items <= 0:
        return []
    if n >= n_items:
        return list(range(n_items))
    if n == 1:
        return [0]
    return sorted({round(k * (n_items - 1) / (n - 1)) for k in range(n)})


def draw_predictions(prepared, split: str, detections_path, n: int, *,
                     score: float = DRAW_SCORE, iou: float = DRAW_IOU) -> list[Path]:
    """``lesion predict ... --draw N``: draw ``n`` images of ``split`` of the prepared folder
    with the predictions of ``detections_path`` at or above ``score`` (orange when they match a
    lesion at ``iou``, red when not, score on the label) and the ground truth (green), into
    :func:`draw_dir`; the images are spread over the split in file-name order
    (:func:`spread`). PNGs a previous ``--draw`` left there are replaced. Returns the paths
    written (fewer than ``n`` when the split has fewer images)."""
    from deeplesion_cli.formats.detections import read_detections, read_names
    from deeplesion_cli.formats.groundtruth import load_ground_truth
    from deeplesion_cli.prepared import Prepared

    folder = Prepared(prepared)
    gt = load_ground_truth(folder.coco_path(split))
    names = read_names(folder.names_path) if folder.names_path.is_file() else None
    dets = read_detections(detections_path, gt, names=names)
    out_dir = draw_dir(detections_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    matched = match_at(gt, dets, score, iou)
    per_image = {s.index: s for s in image_scores(gt, dets, score, iou)}
    kept = matched[0]
    image = np.asarray(dets.image, dtype=np.int64)
    by_name = sorted(range(gt.n_images), key=lambda i: gt.image_names[i])
    written: list[Path] = []
    for i in (by_name[k] for k in spread(len(by_name), n)):
        name = gt.image_names[i]
        gt_boxes, preds = boxes_of_image(gt, dets, i, score, iou, matched)
        s = per_image[i]
        n_kept = int(np.count_nonzero(kept & (image == i)))
        n_all = int(np.count_nonzero(image == i))
        caption = [f"{Path(detections_path).name}  |  {split}  |  {name}",
                   f"{n_kept} detection{'' if n_kept == 1 else 's'} at score >= {score:g} "
                   f"({n_all} in all): TP {s.tp}, "
                   f"FP {s.fp}, FN {s.fn} at IoU {iou:g}"
                   + ("  -  no detections" if n_all == 0 else ""),
                   LEGEND]
        out = out_dir / f"{Path(name).stem}.png"
        written += draw_overlay(folder.image_dir(split) / name, out, gt_boxes, preds, caption)
    return written
