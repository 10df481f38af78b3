"""Synthetic DeepLesion, step 3: lesions and decoys (types, sizes, contrast, RECIST points).

A lesion is a :class:`Blob`: an ellipsoid with lobes and a soft edge, whose in-plane section is
largest on its (1-based) slice. :func:`place_lesion` puts a labelled one on a key slice inside
the organ of its coarse type, with RECIST end points and a contrast against a ring just outside
its box as real lesions show (``docs/deeplesion.md`` section 6.3);
:func:`place_decoy` adds unlabelled lesion-like blobs, so FROC curves are non-trivial.
:func:`paint` draws a blob's section into a slice. Sizes are drawn in **mm** and converted with
the series' spacing (mm/px); geometry is in **0-based pixel centres**; intensities are **HU**.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .synth_anatomy import (
    BODY_LABELS,
    L_BONE,
    L_FAT,
    L_KIDNEY,
    L_LIVER,
    L_LUNG,
    L_MUSCLE,
    L_SUBCUT,
    Anatomy,
)
from .synth_plan import REGION_TYPES, KeySlice, SeriesSpec

#: Long-diameter medians in mm (log-normal, ln-sigma 0.68); lung nodules are smaller.
LONG_MEDIAN_MM = {5: 11.0}
DEFAULT_LONG_MEDIAN_MM = 20.0
LONG_LN_SIGMA = 0.68
MIN_LONG_PX = 4.0
MIN_SHORT_PX = 3.0
MAX_LONG_FRACTION = 0.35

#: Width in px of the ring just outside a lesion's box in which visibility is guaranteed.
RING_PX = 3
#: Least |mean HU of a key-slice lesion's core minus the mean of that ring| before noise, by
#: type: the low end of what real lesions show (hypodense liver lesions 30-80 HU below the liver;
#: nodes and masses 30-60 HU in -100 HU fat; cysts 0-20 HU in 150-200 HU cortex), so that in a
#: soft-tissue window (-175, 275) synthetic lesions are as visible as real ones, not more.
MIN_CONTRAST_HU = {4: 40.0}
DEFAULT_MIN_CONTRAST_HU = 100.0

#: Tissue labels each coarse lesion type grows in (its organ).
_HOSTS = {1: (L_BONE,), 2: (L_FAT,), 3: (L_FAT,), 4: (L_LIVER,), 5: (L_LUNG,), 6: (L_KIDNEY,),
          7: (L_SUBCUT, L_MUSCLE), 8: (L_FAT,)}
_NECK_SOFT_TISSUE_HOST = (L_SUBCUT, L_FAT)


@dataclass(frozen=True)
class Blob:
    """A lesion or decoy: an ellipsoid whose in-plane section at its centre slice has the four
    semi-axes below (px), long axis along ``angle_rad``; ``a_neg``/``a_pos`` are the parts of the
    long axis on either side of the RECIST crossing point (so the crossing need not be central)."""

    cx: float                  # crossing point, 0-based px
    cy: float
    a_neg: float
    a_pos: float
    b_neg: float
    b_pos: float
    angle_rad: float
    lobe_k: int
    lobe_amp: float            # relative radius modulation between the axes (0 = ellipse)
    edge_px: float             # width of the soft edge
    hu: float
    z_slice: float             # 1-based slice index of the largest section
    z_half_mm: float           # half-extent along z

    def reach_px(self) -> float:
        return max(self.a_neg, self.a_pos, self.b_neg, self.b_pos) * (1 + self.lobe_amp) \
            + self.edge_px + 1.0

    def scale_at(self, slice_index: int, dz_mm: float) -> float:
        """In-plane scale of the ellipsoid's section at ``slice_index`` (0 where absent)."""
        t = (slice_index - self.z_slice) * dz_mm / self.z_half_mm
        return math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0

    def slices(self, dz_mm: float) -> range:
        """1-based slice indices on which the blob has a non-empty section."""
        reach = self.z_half_mm / dz_mm
        first = math.floor(self.z_slice - reach) + 1
        last = math.ceil(self.z_slice + reach) - 1
        return range(first, last + 1)

    def keep_out_px(self) -> float:
        """Half-side (px) of the square around the centre that no other blob may enter: the
        drawn extent plus the box margin (5 px) and the visibility ring, so the ring of a key-slice
        lesion sees only its background."""
        return self.reach_px() + 5.0 + RING_PX + 1.0


def _alpha(blob: Blob, scale: float, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Coverage in [0, 1] of the blob's section (in-plane ``scale``) over rows y0:y1, cols x0:x1."""
    ys, xs = np.ogrid[y0:y1, x0:x1]
    dx = (xs - blob.cx).astype(np.float32)
    dy = (ys - blob.cy).astype(np.float32)
    c, s = math.cos(blob.angle_rad), math.sin(blob.angle_rad)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    a = np.where(u >= 0, blob.a_pos, blob.a_neg).astype(np.float32) * scale
    b = np.where(v >= 0, blob.b_pos, blob.b_neg).astype(np.float32) * scale
    un, vn = u / a, v / b
    r = np.sqrt(un * un + vn * vn)
    mod = 1.0
    if blob.lobe_amp:
        # sin(k phi) vanishes on the axes, so the RECIST end points stay on the boundary
        mod = 1.0 + blob.lobe_amp * np.sin(blob.lobe_k * np.arctan2(vn, un))
    dist = np.sqrt(u * u + v * v)
    # signed distance to the boundary along the ray from the centre (negative inside)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(r > 1e-6, dist * (1.0 - mod / r), -np.minimum(a, b) * mod)
    edge = min(blob.edge_px, max(0.5, 0.5 * scale * min(blob.b_neg, blob.b_pos)))
    return np.clip(0.5 - d / edge, 0.0, 1.0).astype(np.float32)


def _window(blob: Blob, scale: float, size: int):
    r = blob.reach_px() * scale + blob.edge_px + 1.0
    x0, x1 = max(0, int(math.floor(blob.cx - r))), min(size, int(math.ceil(blob.cx + r)) + 1)
    y0, y1 = max(0, int(math.floor(blob.cy - r))), min(size, int(math.ceil(blob.cy + r)) + 1)
    return y0, y1, x0, x1


def paint(img: np.ndarray, blob: Blob, scale: float) -> None:
    y0, y1, x0, x1 = _window(blob, scale, img.shape[0])
    if y0 >= y1 or x0 >= x1:
        return
    alpha = _alpha(blob, scale, y0, y1, x0, x1)
    patch = img[y0:y1, x0:x1]
    patch += alpha * (np.float32(blob.hu) - patch)


def _recist_points(blob: Blob, rng: np.random.Generator) -> np.ndarray:
    """RECIST end points (4, 2) in 0-based px: long axis p1, p2 then short axis p3, p4."""
    c, s = math.cos(blob.angle_rad), math.sin(blob.angle_rad)
    ux, uy = c, s
    # annotators draw the short axis a few degrees off perpendicular
    tilt = math.radians(float(np.clip(rng.normal(0.0, 2.0), -6.0, 6.0)))
    vx, vy = -math.sin(blob.angle_rad + tilt), math.cos(blob.angle_rad + tilt)
    p1 = (blob.cx - blob.a_neg * ux, blob.cy - blob.a_neg * uy)
    p2 = (blob.cx + blob.a_pos * ux, blob.cy + blob.a_pos * uy)
    p3 = (blob.cx - blob.b_neg * vx, blob.cy - blob.b_neg * vy)
    p4 = (blob.cx + blob.b_pos * vx, blob.cy + blob.b_pos * vy)
    if rng.random() < 0.5:
        p1, p2 = p2, p1
    if rng.random() < 0.5:
        p3, p4 = p4, p3
    return np.array([p1, p2, p3, p4], dtype=np.float64)


def _nominal_hu(lesion_type: int, tissue: dict, rng: np.random.Generator) -> float:
    """Lesion HU by type, in the ranges real lesions show (deeplesion reference 6.3)."""
    u = rng.uniform
    if lesion_type == 1:
        return u(900.0, 1300.0)        # sclerotic
    if lesion_type == 4:
        return tissue["liver"] - u(40.0, 80.0)   # hypodense metastasis
    if lesion_type == 5:
        return u(30.0, 60.0)           # solid nodule in -850 lung
    if lesion_type == 6:
        return u(0.0, 20.0)            # cyst in enhanced cortex
    return u(30.0, 60.0)               # node or mass in fat (abdomen, mediastinum, pelvis, soft
                                       # tissue)


def _ring_mask(box0, y0, y1, x0, x1) -> np.ndarray:
    """Pixels of the window rows y0:y1, cols x0:x1 in the RING_PX-wide ring just outside
    ``box0`` (x1, y1, x2, y2 in 0-based px)."""
    bx1, by1, bx2, by2 = box0
    ys, xs = np.ogrid[y0:y1, x0:x1]
    outer = (xs >= bx1 - RING_PX) & (xs <= bx2 + RING_PX) & (ys >= by1 - RING_PX) \
        & (ys <= by2 + RING_PX)
    inner = (xs >= bx1) & (xs <= bx2) & (ys >= by1) & (ys <= by2)
    return outer & ~inner


def _overlaps(blob: Blob, placed, dz_mm: float) -> bool:
    """Whether ``blob`` and an already placed blob share a slice and one's drawn extent enters
    the other's keep-out square."""
    mine = blob.slices(dz_mm)
    for other in placed:
        theirs = other.slices(dz_mm)
        if mine.start > theirs.stop - 1 or theirs.start > mine.stop - 1:
            continue
        gap = max(abs(blob.cx - other.cx), abs(blob.cy - other.cy))
        if gap < max(blob.keep_out_px() + other.reach_px(), other.keep_out_px() + blob.reach_px()):
            return True
    return False


def _draw_blob(lesion_type, spec, anat, rng, centre_idx, long_px, ratio, z_slice, hu_value):
    S = anat.labels.shape[0]
    cy, cx = divmod(int(centre_idx), S)
    short_px = max(MIN_SHORT_PX, min(long_px * ratio, long_px * 0.95))
    t_long = float(np.clip(rng.normal(0.5, 0.04), 0.38, 0.62))
    t_short = float(np.clip(rng.normal(0.5, 0.04), 0.38, 0.62))
    a_max = max(t_long, 1 - t_long) * long_px
    lobe_amp = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.02, min(0.07, 2.5 / a_max)))
    short_mm = short_px * spec.spacing_mm
    return Blob(
        cx=cx + float(rng.uniform(-0.5, 0.5)), cy=cy + float(rng.uniform(-0.5, 0.5)),
        a_neg=t_long * long_px, a_pos=(1 - t_long) * long_px,
        b_neg=t_short * short_px, b_pos=(1 - t_short) * short_px,
        angle_rad=float(rng.uniform(0.0, math.pi)), lobe_k=int(rng.choice((4, 8))),
        lobe_amp=lobe_amp, edge_px=float(rng.uniform(1.0, 2.0)), hu=float(hu_value),
        z_slice=float(z_slice), z_half_mm=max(0.5 * short_mm, 0.5 * spec.dz_mm))


def _lesion_size(lesion_type, spec, rng):
    median = LONG_MEDIAN_MM.get(lesion_type, DEFAULT_LONG_MEDIAN_MM)
    long_mm = float(rng.lognormal(math.log(median), LONG_LN_SIGMA))
    long_px = float(np.clip(long_mm / spec.spacing_mm, MIN_LONG_PX,
                            MAX_LONG_FRACTION * spec.size_px))
    ratio = float(np.clip(rng.normal(0.74, 0.165), 0.3, 0.95))
    return long_px, ratio


def _host_for(lesion_type, region):
    if lesion_type == 7 and region == "neck":
        return _NECK_SOFT_TISSUE_HOST
    return _HOSTS[lesion_type]


def place_lesion(lesion_type, key: KeySlice, spec: SeriesSpec, anat: Anatomy, rng, placed):
    """A labelled lesion on ``key``'s slice, inside its organ, visible against its ring.

    Returns the blob and its RECIST points (4, 2) in 0-based px. Big lesions that do not fit are
    shrunk; after the strict tries the organ constraint is relaxed, then any body tissue is used.
    """
    S = spec.size_px
    long_px, ratio = _lesion_size(lesion_type, spec, rng)
    nominal = _nominal_hu(lesion_type, anat.tissue_hu, rng)
    host = _host_for(lesion_type, spec.region)
    labels = anat.labels
    for attempt in range(400):
        if attempt and attempt % 20 == 0:
            long_px = max(MIN_LONG_PX, long_px * 0.8)
        # Strict first (organ all around, for a clean look), then only the lesion itself in its
        # organ (small organs cannot hold the ring), then mostly, then any body tissue.
        if attempt < 20:
            core_min, ring_min, hosts = 0.95, 0.5, host
        elif attempt < 200:
            core_min, ring_min, hosts = 0.95, 0.0, host
        elif attempt < 300:
            core_min, ring_min, hosts = 0.8, 0.0, host
        else:
            core_min, ring_min, hosts = 0.8, 0.0, BODY_LABELS
        candidates = anat.host_pixels(hosts)
        if candidates.size == 0:
            continue
        blob = _draw_blob(lesion_type, spec, anat, rng, candidates[rng.integers(candidates.size)],
                          long_px, ratio, key.slice_index, nominal)
        points = _recist_points(blob, rng)
        box0 = (points[:, 0].min() - 5, points[:, 1].min() - 5,
                points[:, 0].max() + 5, points[:, 1].max() + 5)
        # the ring must fit in the image, so the CSV box is inside [1, S] with room to spare
        if box0[0] - RING_PX < 0.01 or box0[1] - RING_PX < 0.01 \
                or box0[2] + RING_PX > S - 1.01 or box0[3] + RING_PX > S - 1.01:
            continue
        ends = np.rint(points).astype(int)
        if attempt < 200 and not np.isin(labels[ends[:, 1], ends[:, 0]], hosts).all():
            continue  # cheap early rejection before computing coverage
        if _overlaps(blob, placed, spec.dz_mm):
            continue
        wy0, wy1, wx0, wx1 = _window(blob, 1.0, S)
        wy0 = min(wy0, int(math.floor(box0[1] - RING_PX)))
        wx0 = min(wx0, int(math.floor(box0[0] - RING_PX)))
        wy1 = max(wy1, int(math.ceil(box0[3] + RING_PX)) + 1)
        wx1 = max(wx1, int(math.ceil(box0[2] + RING_PX)) + 1)
        wy0, wx0, wy1, wx1 = max(0, wy0), max(0, wx0), min(S, wy1), min(S, wx1)
        alpha = _alpha(blob, 1.0, wy0, wy1, wx0, wx1)
        win_labels = labels[wy0:wy1, wx0:wx1]
        core = alpha >= 0.5
        if not core.any() or np.isin(win_labels[core], hosts).mean() < core_min:
            continue
        ring = _ring_mask(box0, wy0, wy1, wx0, wx1)
        if np.isin(win_labels[ring], hosts).mean() < ring_min:
            continue
        ring_alpha = alpha[ring]
        spill = float(ring_alpha.mean())
        if spill > 0.5:
            continue
        background = float(((1.0 - ring_alpha) * anat.base_hu[wy0:wy1, wx0:wx1][ring]).mean())
        # mean(core) - mean(ring) for a lesion of HU L is (1 - spill) * L - background
        contrast = (1.0 - spill) * nominal - background
        hu_value = nominal
        least = MIN_CONTRAST_HU.get(lesion_type, DEFAULT_MIN_CONTRAST_HU)
        if abs(contrast) < least:
            sign = 1.0 if contrast > 20 else -1.0 if contrast < -20 else \
                (-1.0 if lesion_type in (4, 6) else 1.0)
            hu_value = (sign * least + background) / (1.0 - spill)
            if not -1000.0 <= hu_value <= 3000.0:
                continue
        return dataclasses.replace(blob, hu=float(hu_value)), points
    raise RuntimeError(
        f"synth: could not place a type-{lesion_type} lesion on slice {key.slice_index} of series "
        f"{spec.series_dir} ({S} px); the image is too small for its lesions")


def place_decoy(spec: SeriesSpec, anat: Anatomy, rng, placed):
    """An unlabelled lesion-like blob on some slice of a block, away from labelled lesions."""
    first, last = spec.blocks[int(rng.integers(len(spec.blocks)))]
    z_slice = int(rng.integers(first, last + 1))
    lesion_type = int(rng.choice(REGION_TYPES[spec.region]))
    host = _host_for(lesion_type, spec.region)
    candidates = anat.host_pixels(host)
    if candidates.size == 0:
        return None
    for _ in range(30):
        long_px, ratio = _lesion_size(lesion_type, spec, rng)
        long_px = max(MIN_LONG_PX, 0.6 * long_px)  # decoys skew small, like the missed lesions
        blob = _draw_blob(lesion_type, spec, anat, rng, candidates[rng.integers(candidates.size)],
                          long_px, ratio, z_slice, _nominal_hu(lesion_type, anat.tissue_hu, rng))
        wy0, wy1, wx0, wx1 = _window(blob, 1.0, spec.size_px)
        if wy0 == 0 or wx0 == 0 or wy1 == spec.size_px or wx1 == spec.size_px:
            continue
        if _overlaps(blob, placed, spec.dz_mm):
            continue
        core = _alpha(blob, 1.0, wy0, wy1, wx0, wx1) >= 0.5
        if core.any() and np.isin(anat.labels[wy0:wy1, wx0:wx1][core], host).mean() >= 0.9:
            return blob
    return None

