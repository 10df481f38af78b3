"""``lesion anchors``: k-means anchor boxes (distance 1 - IoU) from a prepared folder's boxes.

Input: ``OUT/coco/<split>.json`` (default ``train``). Each annotation's ``bbox`` ``[x, y, w, h]``
(prepared pixels) becomes one point ``(w / W_img, h / H_img)``, the width and height relative to
its own image, exactly what the darknet label ``.txt`` beside the image holds. Positions are
ignored.

Algorithm (:func:`kmeans_iou`)
------------------------------
* IoU of two boxes compared as if they shared a centre (or a corner; same thing):
  ``IoU = min(w1, w2) * min(h1, h2) / (w1*h1 + w2*h2 - min(w1, w2) * min(h1, h2))``;
  distance ``d = 1 - IoU``.
* Initialisation: k-means++ with that distance. The first centre is a box drawn uniformly; each next
  centre is a box drawn with probability proportional to ``D(x)**2``, ``D`` being the box's
  distance to the nearest centre chosen so far (so a box equal to a chosen centre is never drawn
  again, and the k centres are k distinct boxes).
* Iteration: assign every box to the centre of highest IoU (lowest index on ties); move every centre
  to the **arithmetic mean of the widths and the mean of the heights** of its members (like
  darknet); repeat until no assignment changes (or ``max_iter`` = 1000 updates, darknet's limit).
  A centre left without members is re-seeded with the box farthest (largest 1 - IoU) from the
  updated centre of its own cluster, lowest box index on ties, one empty centre at a time in
  centre order (a chosen box counts as distance 0 for the next one).
* ``restarts`` independent runs; run ``r`` draws from its own stream,
  ``default_rng(SeedSequence(seed).spawn(restarts)[r])``, so adding restarts keeps the earlier
  runs and can only raise the result's mean IoU. The run with the highest mean IoU wins (the first
  one on ties). Same seed, same input: same anchors, bit for bit. ``iterations`` is the number of
  updates of the winning run.
* Centres are sorted by area ``w*h`` ascending (width breaks ties), as darknet prints them.
* Units: everything runs on relative sizes; anchors in pixels are ``rel * (net_w, net_h)`` at the
  end, as darknet's ``calc_anchors`` multiplies relative label sizes by ``-width``/``-height``. The
  aligned-box IoU is unchanged when all widths are multiplied by one factor and all heights by
  another, and so are the member means, so k-means in relative or in network pixels gives the
  same clusters and the same IoUs.
* Quality: ``mean_iou`` is the mean over boxes of the IoU with their best anchor (darknet's
  ``avg IoU``, as a fraction, not a percentage); ``recall_at_05`` is the share of boxes whose
  best-anchor IoU is **>= 0.5**.
* Speed: the result is exactly plain Lloyd's (a test checks this bit for bit), but boxes that
  provably keep their centre are skipped: 1 - IoU of aligned boxes is a metric (the Jaccard
  distance of two rectangles), so Hamerly-style distance bounds apply (see ``_single_run``).
  30,000 boxes, k = 9, 10 restarts take 0.45-0.8 s on the 2-core development machine (plain
  Lloyd, vectorised: about 3 s).

Comparison with darknet's ``detector calc_anchors`` (AlexeyAB; hank-ai ``calcanchors``)
----------------------------------------------------------------------------------------------
darknet runs the same Lloyd loop: the same 1 - IoU distance, the same mean update, the same stop
(no assignment changes, at most 1000 updates), and reports the same mean best-anchor IoU
(``avg IoU``, in %). Started from the same centres, ``lesion anchors`` reaches darknet's anchors
in the same number of iterations (checked against a Python transcription of darknet's code in
``tests/test_anchors.py``). The differences are the start and the number of runs: darknet starts
once from **k distinct random boxes** (a Fisher-Yates sample seeded with ``time(0)``, not k-means++
despite its ``calculating k-means++`` message; an empty centre keeps its old value), so its result
changes from run to run; ``lesion anchors`` starts from k-means++ and keeps the best of
``restarts`` (10) seeded runs, so the same ``--seed`` gives the same anchors.

On the same boxes, the best of our 10 restarts has a mean IoU at least that of darknet's average
and median run, but not always that of darknet's luckiest run: the loop has many local optima
within about 0.002 IoU of each other, and a single random start sometimes lands in a better one.
Measured (k = 9 and 6 at 416x416; darknet: 10 seeds of the transcription; ours: seeds 0, 1)::

    boxes                k  darknet min / median / mean / max   ours seed 0 / 1   darknet > ours
    851 real DeepLesion  9  0.8270 / 0.8339 / 0.8329 / 0.8349   0.8342 / 0.8342   3 of 10
    851 real DeepLesion  6  0.7914 / 0.7928 / 0.7932 / 0.7957   0.7963 / 0.7957   0 of 10
    1000 log-normal      9  0.7638 / 0.7728 / 0.7724 / 0.7743   0.7745 / 0.7744   0 of 10
    1000 log-normal      6  0.7332 / 0.7368 / 0.7360 / 0.7383   0.7383 / 0.7368   0 of 10
    800 uniform          9  0.6666 / 0.6742 / 0.6730 / 0.6767   0.6750 / 0.6760   4 of 10
    800 uniform          6  0.6186 / 0.6241 / 0.6226 / 0.6242   0.6242 / 0.6242   0 of 10

("darknet > ours": darknet seeds whose mean IoU beats our seed 0.)

k-means++ itself buys nothing here: over 200 single runs its mean IoU is no better than a random
start's (0.8306 vs 0.8322 on the real boxes, k = 9); the restarts make the difference.

Outputs
-------
* :func:`darknet_anchor_line`: ``anchors = 10,13, 16,30, ...`` -- pixel anchors at the network
  size, sorted by area, each value formatted like AlexeyAB's ``%3.0f`` (C ``printf`` rounding: to
  nearest, exact halves to even, same as Python's ``format(x, ".0f")``) but without the width-3
  padding; a value that rounds to 0 is written as 1 (a zero anchor is degenerate in darknet). When
  the network width is at most 32 AlexeyAB prints ``%2.4f`` instead, and so does this function
  (``%.4f``). hank-ai truncates (``(int)w``) instead of rounding, so its line can be 1 px smaller.
* :func:`to_json` / :func:`write_anchors_json`: ``anchors.json`` (read by ``lesion cfg --anchors``
  and ``lesion train frcnn --anchors``). :func:`anchors_for_size` reads its pixel anchors for
  another network size: widths scaled by the ratio of the widths, heights by that of the
  heights (k-means on relative box sizes scales exactly so).
* torchvision ``AnchorGenerator(sizes, aspect_ratios)`` forms in that json:

  - ``"torchvision"`` (one feature level, e.g. a C4 backbone): ``sizes = ((s_1, ..., s_k),)`` with
    ``s_i = sqrt(w_i * h_i)`` (pixels at the network size) and
    ``aspect_ratios = ((r_1, ..., r_k),)``
    with ``r_i = h_i / w_i``, anchors in area order (sizes rounded to 0.001 px, ratios to 1e-4).
    torchvision builds an anchor of width ``s / sqrt(r)`` and height ``s * sqrt(r)`` for each
    (size, ratio) pair (then rounds its corners to whole pixels), which gives back ``(w_i, h_i)``
    for the pair ``(s_i, r_i)``. Note that it takes **every** combination of a level's sizes and
    ratios, so this level has ``k * k`` anchors per location: the k k-means anchors plus the
    ``k * (k - 1)`` cross combinations.
  - ``"torchvision_fpn"`` (5 levels, as torchvision's ``fasterrcnn_resnet50_fpn``: P2..P6 finest
    first): the area-sorted anchors are cut into 5 consecutive runs as equal as possible, the
    first (finest) levels taking the extra anchors (``numpy.array_split``; k = 9 gives 2, 2, 2, 2,
    1). A level shorter than the longest is padded by repeating its own largest anchor, because
    torchvision's ``RPNHead`` needs the same number of anchors per location (``m * m`` with ``m =
    ceil(k / 5)``) at every level; the repeats only duplicate that anchor. With k < 5 the levels
    reuse anchors: level ``l`` (0-based) gets sorted anchor ``floor(l * k / 5)``. Sizes and ratios
    per level are ``sqrt(w * h)`` and ``h / w`` as above, and again every size of a level meets
    every ratio of that level (k = 9: 4 anchors per location and level, the 2 k-means anchors
    and their 2 cross combinations; the last level 4 copies of anchor 9).

  Torchvision's detectors resize images in ``GeneralizedRCNNTransform`` (``min_size``/
  ``max_size``); pass that resized input size as the network size so the pixel values match.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplesion_cli import __version__, atomic
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.prepared import Prepared

#: IoU at and above which a box counts as covered by an anchor (``recall_at_05``).
RECALL_IOU = 0.5
#: Number of FPN levels in torchvision's ``fasterrcnn_resnet50_fpn`` anchor generator (P2..P6).
FPN_LEVELS = 5


@dataclass
class AnchorResult:
    anchors_px: np.ndarray         # (k, 2) w, h in pixels at the network size, area ascending
    network_size: tuple[int, int]  # (width, height)
    mean_iou: float                # mean over boxes of the IoU with their best anchor
    recall_at_05: float            # share of boxes whose best-anchor IoU >= 0.5
    n_boxes: int
    seed: int
    restarts: int
    iterations: int                # update steps of the best restart

    @property
    def clusters(self) -> int:
        return int(self.anchors_px.shape[0])


# ---------------------------------------------------------------- input

class AnchorsInputError(LesionInputError):
    """A prepared split whose boxes cannot be clustered; the message names the file."""


def load_boxes(prepared_dir, split: str = "train") -> np.ndarray:
    """``(n, 2)`` box width and height relative to their image, from ``coco/<split>.json``.

    Raises :class:`AnchorsInputError` naming the file when it is missing or unreadable, when an annotation refers
    to an unknown image or has a non-positive size, or when there is no box at all.
    """
    path = Prepared(prepared_dir).coco_path(split)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnchorsInputError(f"{path}: not found; PREPARED must be a folder written by lesion prepare"
                         f" (split {split!r})") from None
    except (OSError, ValueError) as exc:
        raise AnchorsInputError(f"{path}: cannot read COCO json ({exc})") from None
    try:
        sizes = {}
        for image in document["images"]:
            width, height = float(image["width"]), float(image["height"])
            if not (width > 0 and height > 0):
                raise ValueError(f"image id {image.get('id')!r} has size {width:g}x{height:g}")
            sizes[image["id"]] = (width, height)
        wh = []
        for ann in document["annotations"]:
            if ann["image_id"] not in sizes:
                raise ValueError(f"annotation id {ann.get('id')!r}: unknown image_id "
                                 f"{ann['image_id']!r}")
            w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
            if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
                raise ValueError(f"annotation id {ann.get('id')!r}: bbox width/height "
                                 f"{w:g}x{h:g} not positive")
            width, height = sizes[ann["image_id"]]
            wh.append((w / width, h / height))
    except KeyError as exc:
        raise AnchorsInputError(f"{path}: not a COCO instances file (missing key {exc})") from None
    except (TypeError, IndexError) as exc:
        raise AnchorsInputError(f"{path}: not a COCO instances file ({exc})") from None
    except ValueError as exc:
        raise AnchorsInputError(f"{path}: {exc}") from None
    if not wh:
        raise AnchorsInputError(f"{path}: no boxes to cluster (split {split!r} has no annotations)")
    return np.asarray(wh, dtype=np.float64).reshape(-1, 2)


def parse_size(text) -> tuple[int, int]:
    """``"416"`` -> ``(416, 416)``; ``"608x416"`` -> ``(608, 416)`` (width x height).

    Raises ValueError for anything else (including zero or negative sizes).
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if not match:
        raise ValueError(f"size {text!r}: expected N or WxH (e.g. 416 or 608x416)")
    width = int(match.group(1))
    height = int(match.group(2)) if match.group(2) is not None else width
    if width <= 0 or height <= 0:
        raise ValueError(f"size {text!r}: width and height must be positive")
    return width, height


# ---------------------------------------------------------------- IoU k-means

def iou_wh(boxes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n, k)`` IoU of each box ``(w, h)`` with each centroid ``(w, h)``, boxes aligned."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2)
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    inter = (np.minimum(boxes[:, 0:1], centroids[:, 0])
             * np.minimum(boxes[:, 1:2], centroids[:, 1]))
    union = (boxes[:, 0:1] * boxes[:, 1:2]) + (centroids[:, 0] * centroids[:, 1]) - inter
    return inter / union


def iou_distance(box, centroid) -> float:
    """``1 - IoU`` of two (w, h) boxes compared as if centred: the k-means distance."""
    return float(1.0 - iou_wh(np.asarray(box), np.asarray(centroid))[0, 0])


def anchor_quality(wh: np.ndarray, anchors: np.ndarray) -> tuple[float, float]:
    """(mean over boxes of the best-anchor IoU, share of boxes whose best IoU >= 0.5).

    ``wh`` and ``anchors`` must be in the same units (both relative or both pixels).
    """
    best = iou_wh(wh, anchors).max(axis=1)
    return float(best.mean()), float(np.mean(best >= RECALL_IOU))


def _check_wh(wh) -> np.ndarray:
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2 or wh.shape[0] == 0:
        raise ValueError(f"boxes must be an (n, 2) array of widths and heights, n >= 1; "
                         f"got shape {wh.shape}")
    if not (np.all(np.isfinite(wh)) and np.all(wh > 0)):
        raise ValueError("box widths and heights must be positive and finite")
    return wh


def _kmeanspp(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = wh.shape[0]
    chosen = np.empty(k, dtype=np.intp)
    chosen[0] = rng.integers(n)
    d_min = 1.0 - iou_wh(wh, wh[chosen[0]])[:, 0]
    for j in range(1, k):
        weights = d_min * d_min
        cumulative = np.cumsum(weights)
        total = cumulative[-1]
        if not total > 0:  # guarded by the distinct-box check; kept as a safety net
            raise ValueError(f"cannot seed {k} clusters: fewer than {k} distinct boxes")
        # side="right" never lands on a zero-weight box (its cumulative equals its predecessor's)
        pick = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
        chosen[j] = min(pick, n - 1)
        d_min = np.minimum(d_min, 1.0 - iou_wh(wh, wh[chosen[j]])[:, 0])
    return wh[chosen].copy()


def _update(w: np.ndarray, h: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """Mean width and mean height of each cluster; an empty cluster is re-seeded (docstring)."""
    counts = np.bincount(assign, minlength=k)
    sums_w = np.bincount(assign, weights=w, minlength=k)
    sums_h = np.bincount(assign, weights=h, minlength=k)
    empty = counts == 0
    safe = np.where(empty, 1, counts)
    centroids = np.stack([sums_w / safe, sums_h / safe], axis=1)
    if empty.any():
        # each box's distance to the updated centre of its own cluster
        own_w, own_h = centroids[:, 0].take(assign), centroids[:, 1].take(assign)
        inter = np.minimum(w, own_w) * np.minimum(h, own_h)
        distance = 1.0 - inter / (w * h + own_w * own_h - inter)
        for j in np.flatnonzero(empty):
            far = int(np.argmax(distance))
            centroids[j] = (w[far], h[far])
            distance[far] = 0.0
    return centroids


def _assign(w: np.ndarray, h: np.ndarray, area: np.ndarray, centroids: np.ndarray):
    """For boxes ``(w, h)`` against all centres, in (k, m) layout: the index of the highest-IoU
    centre (lowest index on ties) and that IoU, the index and IoU of the runner-up, and the
    highest IoU among the remaining centres (-inf where there is none)."""
    m, k = w.shape[0], centroids.shape[0]
    cw, ch = centroids[:, 0:1], centroids[:, 1:2]
    iou = np.minimum(w, cw)
    iou *= np.minimum(h, ch)
    union = area + cw * ch
    union -= iou
    iou /= union
    cols = np.arange(m)
    first = iou.argmax(axis=0)
    best = iou[first, cols]
    if k == 1:
        none = np.full(m, -np.inf)
        return first, best, first, none, none
    iou[first, cols] = -np.inf
    runner = iou.argmax(axis=0)
    second = iou[runner, cols]
    if k == 2:
        return first, best, runner, second, np.full(m, -np.inf)
    iou[runner, cols] = -np.inf
    return first, best, runner, second, iou.max(axis=0)


def _own_distance(w, h, area, cw, ch):
    """1 - IoU of boxes with one centre each (all arrays of the same length)."""
    inter = np.minimum(w, cw)
    inter *= np.minimum(h, ch)
    return 1.0 - inter / (area + cw * ch - inter)


#: Safety margin on the distance bounds (absorbs floating-point rounding of the bounds).
_BOUND_EPS = 1e-9


def _single_run(wh: np.ndarray, k: int, rng: np.random.Generator, max_iter: int,
                init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int, float]:
    """One k-means run (k-means++ start, Lloyd iterations to a fixed assignment).

    The result is the plain Lloyd result: after every update each box goes to the centre of
    highest IoU among all k (lowest index on ties), until no box changes. Most of that work is
    skipped with distance bounds (in the spirit of Hamerly's acceleration), valid because
    1 - IoU of aligned boxes is the Jaccard distance of two rectangles, a metric: a box's distance
    to a centre changes by at most the distance the centre moved, and no centre moves more than
    ``m``, the largest move of that update. ``G`` sums those ``m``. For each box it keeps its
    centre ``a``, its runner-up ``b``, a lower bound on the distance to every centre but ``a``
    and ``b`` and a ``key`` = (lower bound on the distance to any centre but ``a``) - (distance to
    ``a``) + 2 G, all as of the box's last exact evaluation. A box is in doubt when ``key <= 2 G``
    (plus a margin); only then are its exact distances to ``a`` and ``b`` recomputed, and if the
    box is still in doubt, its IoU with all k centres.

    ``init`` replaces the k-means++ start with given centres (tests use it to start from
    darknet's centres).
    """
    n = wh.shape[0]
    w, h = np.ascontiguousarray(wh[:, 0]), np.ascontiguousarray(wh[:, 1])
    area = w * h
    centroids = _kmeanspp(wh, k, rng) if init is None else np.array(init, dtype=np.float64)
    assign, best, runner, second, third = _assign(w, h, area, centroids)
    drift = 0.0                       # G
    rest_at = 1.0 - third             # lower bound (centres other than a, b) = rest_at - G
    key = best - second               # (1 - second) - (1 - best) + 2 G, G = 0
    mask = np.empty(n, dtype=bool)    # work buffer: n-sized arrays are reused, not reallocated
    iterations = 0
    while iterations < max_iter:
        new_centroids = _update(w, h, assign, k)
        iterations += 1
        if k == 1:
            centroids = new_centroids
            break
        drift += float(np.max(_own_distance(centroids[:, 0], centroids[:, 1],
                                             centroids[:, 0] * centroids[:, 1],
                                             new_centroids[:, 0], new_centroids[:, 1])))
        centroids = new_centroids
        np.less_equal(key, 2.0 * drift + _BOUND_EPS, out=mask)
        doubt = np.flatnonzero(mask)
        if doubt.size:
            dw, dh, da = w.take(doubt), h.take(doubt), area.take(doubt)
            own, alt = assign.take(doubt), runner.take(doubt)
            cw, ch = centroids[:, 0], centroids[:, 1]
            d_own = _own_distance(dw, dh, da, cw.take(own), ch.take(own))
            low = _own_distance(dw, dh, da, cw.take(alt), ch.take(alt))
            np.minimum(low, rest_at.take(doubt) - drift, out=low)
            key[doubt] = low - d_own + 2.0 * drift
            doubt = doubt[d_own + _BOUND_EPS >= low]
        changed = False
        if doubt.size:
            new_assign, new_best, new_runner, new_second, new_third = _assign(
                w.take(doubt), h.take(doubt), area.take(doubt), centroids)
            changed = not np.array_equal(new_assign, assign.take(doubt))
            assign[doubt] = new_assign
            runner[doubt] = new_runner
            rest_at[doubt] = (1.0 - new_third) + drift
            key[doubt] = (new_best - new_second) + 2.0 * drift
        if not changed:
            break
    best = 1.0 - _own_distance(w, h, area, centroids[:, 0].take(assign),
                               centroids[:, 1].take(assign))
    return centroids, assign, iterations, float(best.mean())


def kmeans_iou(wh_rel: np.ndarray, k: int = 9, seed: int = 0, restarts: int = 10,
               max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means of box sizes with distance 1 - IoU; see the module docstring for the algorithm.

    Returns ``(centroids (k, 2) sorted by area ascending, assignment (n,) indexing those sorted
    centroids, iterations of the best restart)``. Raises ValueError when ``k`` exceeds the number of
    distinct boxes, or for bad arguments.
    """
    wh = _check_wh(wh_rel)
    k, restarts, max_iter = int(k), int(restarts), int(max_iter)
    if k < 1:
        raise ValueError(f"clusters must be at least 1, not {k}")
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, not {restarts}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, not {max_iter}")
    distinct = np.unique(wh, axis=0).shape[0]
    if k > distinct:
        raise ValueError(f"{k} clusters requested but the boxes have only {distinct} distinct "
                         f"sizes ({wh.shape[0]} boxes); use --clusters {distinct} or fewer")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    # restart r draws from its own child of SeedSequence(seed): its result does not depend on
    # how many restarts run, so more restarts can only raise the mean IoU.
    generators = [np.random.default_rng(child)
                  for child in np.random.SeedSequence(int(seed)).spawn(restarts)]
    runs = [_single_run(wh, k, g, max_iter) for g in generators]
    best_run = runs[0]
    for run in runs[1:]:
        if run[3] > best_run[3]:
            best_run = run
    centroids, assign, iterations, _ = best_run
    order = np.lexsort((centroids[:, 0], centroids[:, 0] * centroids[:, 1]))
    rank = np.empty(k, dtype=np.intp)
    rank[order] = np.arange(k)
    return centroids[order], rank[assign], iterations


def compute_anchors(prepared_dir, clusters: int = 9, size=(416, 416), seed: int = 0,
                    restarts: int = 10, split: str = "train") -> AnchorResult:
    """Anchors for the boxes of ``prepared_dir/coco/<split>.json`` at network ``size`` (w, h)."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    net_w, net_h = (int(v) for v in size)
    if net_w <= 0 or net_h <= 0:
        raise ValueError(f"network size must be positive, not {net_w}x{net_h}")
    wh = load_boxes(prepared_dir, split)
    centroids, _, iterations = kmeans_iou(wh, k=clusters, seed=seed, restarts=restarts)
    mean_iou, recall = anchor_quality(wh, centroids)
    return AnchorResult(anchors_px=centroids * np.array([net_w, net_h], dtype=np.float64),
                        network_size=(net_w, net_h), mean_iou=mean_iou, recall_at_05=recall,
                        n_boxes=int(wh.shape[0]), seed=int(seed), restarts=int(restarts),
                        iterations=int(iterations))


# ---------------------------------------------------------------- outputs

def _darknet_value(v: float, integer: bool) -> str:
    if not integer:
        return f"{v:.4f}"
    text = f"{v:.0f}"
    return "1" if text in ("0", "-0") else text


def darknet_anchor_line(result: AnchorResult) -> str:
    """``anchors = w1,h1, w2,h2, ...`` for a darknet cfg (rounding: see the module docstring)."""
    integer = result.network_size[0] > 32
    pairs = (f"{_darknet_value(w, integer)},{_darknet_value(h, integer)}"
             for w, h in np.asarray(result.anchors_px, dtype=np.float64))
    return "anchors = " + ", ".join(pairs)


def _tv_level(anchors_px: np.ndarray) -> tuple[list[float], list[float]]:
    sizes = [round(float(math.sqrt(w * h)), 3) for w, h in anchors_px]
    ratios = [round(float(h / w), 4) for w, h in anchors_px]
    return sizes, ratios


def torchvision_anchors(result: AnchorResult) -> dict:
    """Single-level ``AnchorGenerator`` arguments (see the module docstring):
    ``{"sizes": [[s_1, ..., s_k]], "aspect_ratios": [[r_1, ..., r_k]]}``."""
    sizes, ratios = _tv_level(np.asarray(result.anchors_px, dtype=np.float64))
    return {"sizes": [sizes], "aspect_ratios": [ratios]}


def fpn_levels(k: int, levels: int = FPN_LEVELS) -> list[list[int]]:
    """Indices (into the area-sorted anchors) used at each FPN level, finest level first.

    Consecutive runs as equal as possible (the first levels take the extra anchors), each padded
    by repeating its last index up to the longest run's length; with ``k < levels`` level ``l``
    gets anchor ``floor(l * k / levels)``.
    """
    if k < levels:
        return [[l * k // levels] for l in range(levels)]
    runs = [list(map(int, r)) for r in np.array_split(np.arange(k), levels)]
    m = max(len(r) for r in runs)
    return [r + [r[-1]] * (m - len(r)) for r in runs]


def torchvision_fpn_anchors(result: AnchorResult, levels: int = FPN_LEVELS) -> dict:
    """5-level ``AnchorGenerator`` arguments (see the module docstring for the split)."""
    anchors = np.asarray(result.anchors_px, dtype=np.float64)
    sizes, ratios = [], []
    for idx in fpn_levels(anchors.shape[0], levels):
        s, r = _tv_level(anchors[idx])
        sizes.append(s)
        ratios.append(r)
    return {"sizes": sizes, "aspect_ratios": ratios}


def to_json(result: AnchorResult) -> dict:
    """The content of ``anchors.json``."""
    anchors = [[round(float(w), 4), round(float(h), 4)]
               for w, h in np.asarray(result.anchors_px, dtype=np.float64)]
    return {
        "tool": "lesion",
        "version": __version__,
        "anchors": anchors,
        "network_size": [int(result.network_size[0]), int(result.network_size[1])],
        "clusters": result.clusters,
        "mean_iou": float(result.mean_iou),
        "recall_at_0.5": float(result.recall_at_05),
        "n_boxes": int(result.n_boxes),
        "seed": int(result.seed),
        "restarts": int(result.restarts),
        "iterations": int(result.iterations),
        "darknet": darknet_anchor_line(result),
        "torchvision": torchvision_anchors(result),
        "torchvision_fpn": torchvision_fpn_anchors(result),
    }


def write_anchors_json(path, result: AnchorResult) -> None:
    """Write :func:`to_json` to ``path`` atomically (2-space indent, trailing newline)."""
    atomic.write_text(Path(path), json.dumps(to_json(result), indent=2) + "\n")


# ---------------------------------------------------------------- reading anchors.json

@dataclass
class SizedAnchors:
    """Pixel anchors of an anchors.json fitted to a network size (:func:`anchors_for_size`)."""

    anchors_px: list[list[float]]   # [[w, h], ...] at ``size``
    size: tuple[int, int]           # the network size they are for (width, height)
    source_size: tuple[int, int] | None   # the json's network_size; None when it has none
    note: str                       # how they were fitted, for the command's output line
    warnings: list[str]


def anchors_for_size(doc, size, source: str = "anchors.json") -> SizedAnchors:
    """The ``anchors`` of an anchors.json document ``doc`` (pixels at its ``network_size``)
    rescaled to the network ``size`` (width, height): each width times ``W / w0``, each height
    times ``H / h0``, rounded to 0.0001 px as the json stores them. A document without
    ``network_size`` gives its anchors as they are, with a warning. :class:`AnchorsInputError`
    names ``source`` and the bad field."""
    width, height = (int(v) for v in size)
    anchors = doc.get("anchors") if isinstance(doc, dict) else None
    if (not isinstance(anchors, list) or not anchors
            or not all(isinstance(a, (list, tuple)) and len(a) == 2
                       and all(_positive(v) for v in a) for a in anchors)):
        raise AnchorsInputError(f"{source}: 'anchors' must be a list of [width, height] pairs "
                                f"of positive pixels (as `lesion anchors` writes), not "
                                f"{str(anchors)[:80]}")
    net = doc.get("network_size")
    if net is None:
        return SizedAnchors([[float(w), float(h)] for w, h in anchors], (width, height), None,
                            f"anchors from {source} as they are (it records no network_size)",
                            [f"{source} has no network_size (the size `lesion anchors` computed "
                             f"its pixels for): its anchors are used unscaled at {width}x{height}; "
                             "write it again with `lesion anchors --size` to be sure"])
    if not (isinstance(net, (list, tuple)) and len(net) == 2 and all(_positive(v) for v in net)):
        raise AnchorsInputError(f"{source}: 'network_size' must be [width, height] in pixels, "
                                f"not {net!r}")
    w0, h0 = float(net[0]), float(net[1])
    sx, sy = width / w0, height / h0
    scaled = [[round(float(w) * sx, 4), round(float(h) * sy, 4)] for w, h in anchors]
    was = f"{_size_text(net)}"
    if sx == 1 and sy == 1:
        note = f"anchors from {source} (computed for {was})"
    else:
        note = (f"anchors from {source} rescaled from {was} to {width}x{height} "
                f"(widths x {sx:.4g}, heights x {sy:.4g})")
    return SizedAnchors(scaled, (width, height), (int(w0), int(h0)), note, [])


def _positive(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _size_text(net) -> str:
    return "x".join(f"{float(v):g}" for v in net)
