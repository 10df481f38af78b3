"""Synthetic DeepLesion, step 2: the anatomy phantom of one series (static CT-like HU image).

:func:`build_anatomy` paints a body (subcutaneous fat, muscle, inner fat, the table), the organs
of one region (neck, thorax, abdomen, pelvis) and bones into an (S, S) image in **HU**, with a
tissue-label map (``L_*``) that puts each lesion type in its organ (:mod:`.synth_lesions`).
Geometry is in **0-based pixel centres** (pixel ``j`` has its centre at ``x = j``), sized
relative to the image side S (px); beyond the circular field of view the image is -1024 HU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OUTSIDE_FOV_HU = -1024.0
AIR_HU = -1000.0

# Tissue labels of the anatomy map, used to put each lesion type in its organ.
L_OUT, L_AIR, L_TABLE, L_SUBCUT, L_MUSCLE, L_FAT, L_LUNG, L_LIVER, L_KIDNEY, L_BONE, L_CORTEX, \
    L_VESSEL, L_ORGAN, L_AIRWAY = range(14)
#: Every tissue of the body (not air, table or outside the field of view).
BODY_LABELS = (L_SUBCUT, L_MUSCLE, L_FAT, L_LUNG, L_LIVER, L_KIDNEY, L_BONE, L_CORTEX, L_VESSEL,
               L_ORGAN)


@dataclass
class Anatomy:
    """The static anatomy of one series: what every slice shows before lesions and noise."""

    base_hu: np.ndarray        # (S, S) float32, blurred static anatomy of the series
    labels: np.ndarray         # (S, S) uint8 tissue labels (L_*)
    outside_fov: np.ndarray    # (S, S) bool, beyond the circular reconstruction field
    body_xyab_px: tuple[float, float, float, float]   # centre x, y (0-based px), semi-axes A, B
    tissue_hu: dict
    _host_cache: dict

    def host_pixels(self, labels_tuple) -> np.ndarray:
        """Flat indices of the pixels whose label is in ``labels_tuple``."""
        if labels_tuple not in self._host_cache:
            self._host_cache[labels_tuple] = np.flatnonzero(np.isin(self.labels, labels_tuple))
        return self._host_cache[labels_tuple]


def _ellipse(shape, cx, cy, a, b, angle=0.0):
    """Slices of the bounding window and the mask of pixel centres (0-based px) inside the ellipse
    centred at (cx, cy) with semi-axes a (along ``angle``, rad) and b, all in px."""
    h, w = shape
    c, s = math.cos(angle), math.sin(angle)
    ex = math.hypot(a * c, b * s) + 1.0
    ey = math.hypot(a * s, b * c) + 1.0
    x0, x1 = max(0, int(math.floor(cx - ex))), min(w, int(math.ceil(cx + ex)) + 1)
    y0, y1 = max(0, int(math.floor(cy - ey))), min(h, int(math.ceil(cy + ey)) + 1)
    if x0 >= x1 or y0 >= y1:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    ys, xs = np.ogrid[y0:y1, x0:x1]
    dx, dy = xs - cx, ys - cy
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return (slice(y0, y1), slice(x0, x1)), (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _fill(base, labels, ell_args, hu_value, label, only=None):
    """Paint an ellipse with one HU and label; ``only``: restrict to pixels with these labels."""
    sl, mask = _ellipse(base.shape, *ell_args)
    if only is not None:
        mask = mask & np.isin(labels[sl], only)
    base[sl][mask] = hu_value
    labels[sl][mask] = label


def _bone(base, labels, cx, cy, a, b, angle, cancellous_hu, cortex_hu, cortex_px):
    _fill(base, labels, (cx, cy, a, b, angle), cortex_hu, L_CORTEX)
    _fill(base, labels, (cx, cy, max(0.5, a - cortex_px), max(0.5, b - cortex_px), angle),
          cancellous_hu, L_BONE)


def blur3(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (Gaussian sigma ~0.7 px), edges replicated; float32 in/out."""
    out = a * np.float32(0.5)
    out[1:] += np.float32(0.25) * a[:-1]
    out[:-1] += np.float32(0.25) * a[1:]
    out[0] += np.float32(0.25) * a[0]
    out[-1] += np.float32(0.25) * a[-1]
    res = out * np.float32(0.5)
    res[:, 1:] += np.float32(0.25) * out[:, :-1]
    res[:, :-1] += np.float32(0.25) * out[:, 1:]
    res[:, 0] += np.float32(0.25) * out[:, 0]
    res[:, -1] += np.float32(0.25) * out[:, -1]
    return res


def build_anatomy(region: str, size_px: int, rng: np.random.Generator) -> Anatomy:
    """Static CT-like anatomy of one series in HU, sized relative to the image (px)."""
    S = size_px
    u = rng.uniform
    base = np.full((S, S), AIR_HU, np.float32)
    labels = np.full((S, S), L_AIR, np.uint8)
    c = (S - 1) / 2.0
    yy, xx = np.ogrid[0:S, 0:S]
    outside_fov = (xx - c) ** 2 + (yy - c) ** 2 > (S / 2.0) ** 2

    if region == "neck":
        A, B = u(0.42, 0.55) * S / 2, u(0.36, 0.46) * S / 2
    else:
        A, B = u(0.70, 0.90) * S / 2, u(0.55, 0.75) * S / 2
    cx = c + u(-0.02, 0.02) * S
    cy = c - u(0.0, 0.05) * S  # room below the body for the table

    tissue = {
        "fat": u(-110.0, -90.0), "muscle": u(40.0, 60.0), "lung": u(-870.0, -830.0),
        "liver": u(100.0, 130.0), "kidney": u(150.0, 200.0), "spleen": u(100.0, 125.0),
        "blood": u(150.0, 250.0), "bone": u(220.0, 320.0), "cortex": u(700.0, 1100.0),
    }

    # Table: a thin bright line under the patient, inside the field of view.
    table_y = int(round(cy + B + u(0.02, 0.04) * S))
    thick = max(1, int(round(0.006 * S)))
    half_w = 0.42 * S
    if table_y + thick < S:
        rows = slice(table_y, table_y + thick)
        cols = np.abs(np.arange(S) - cx) <= half_w
        band = np.zeros((thick, S), bool)
        band[:, cols] = True
        band &= ~outside_fov[rows]
        base[rows][band] = u(150.0, 250.0)
        labels[rows][band] = L_TABLE

    fat_px = u(0.04, 0.10) * A if region != "neck" else u(0.06, 0.12) * A
    muscle_px = u(0.04, 0.07) * B
    _fill(base, labels, (cx, cy, A, B), tissue["fat"], L_SUBCUT)
    _fill(base, labels, (cx, cy, A - fat_px, B - fat_px), tissue["muscle"], L_MUSCLE)
    Ai, Bi = A - fat_px - muscle_px, B - fat_px - muscle_px
    _fill(base, labels, (cx, cy, Ai, Bi), tissue["fat"], L_FAT)
    cortex_px = max(1.0, 0.006 * S)

    if region == "thorax":
        for side in (-1, 1):
            _fill(base, labels, (cx + side * 0.54 * Ai, cy - 0.02 * Bi, 0.36 * Ai, 0.82 * Bi,
                                 side * u(0.0, 0.1)), tissue["lung"], L_LUNG, only=(L_FAT,))
        _fill(base, labels, (cx + 0.08 * Ai, cy - 0.3 * Bi, 0.3 * Ai, 0.28 * Bi, 0.4),
              tissue["blood"], L_VESSEL)
        _fill(base, labels, (cx + 0.1 * Ai, cy + 0.38 * Bi, 0.075 * Ai, 0.075 * Ai),
              tissue["blood"], L_VESSEL)
        _fill(base, labels, (cx - 0.03 * Ai, cy + 0.15 * Bi, 0.06 * Ai, 0.06 * Ai), AIR_HU,
              L_AIRWAY)
        _fill(base, labels, (cx + 0.0, cy + 0.3 * Bi, 0.03 * Ai, 0.03 * Ai), 40.0, L_ORGAN)
        rv = 0.12 * Ai
        _bone(base, labels, cx, cy + 0.78 * Bi, rv, rv, 0.0, tissue["bone"], tissue["cortex"],
              cortex_px)
        _fill(base, labels, (cx, cy + 0.78 * Bi + 1.3 * rv, 0.6 * rv, 0.5 * rv),
              tissue["cortex"], L_CORTEX)
        # ribs along the chest wall, none over the sternum
        for theta in np.linspace(-0.25 * math.pi, 1.25 * math.pi, 10):
            rx = cx + (A - fat_px - 0.5 * muscle_px) * math.cos(theta)
            ry = cy + (B - fat_px - 0.5 * muscle_px) * math.sin(theta)
            if ry < cy - 0.5 * B:
                continue
            _fill(base, labels, (rx, ry, max(1.0, 0.02 * A), max(1.0, 0.012 * A), theta),
                  tissue["cortex"], L_CORTEX)
        # pulmonary vessels: small bright dots that detectors must learn to ignore
        lung_idx = np.flatnonzero(labels == L_LUNG)
        for i in rng.choice(lung_idx, size=min(40, lung_idx.size), replace=False):
            r = max(0.6, u(0.6, 2.0) * S / 512)
            _fill(base, labels, (float(i % S), float(i // S), r, r), u(-500.0, 40.0), L_VESSEL,
                  only=(L_LUNG,))
    elif region == "abdomen":
        _fill(base, labels, (cx - 0.42 * Ai, cy - 0.1 * Bi, 0.55 * Ai, 0.72 * Bi, u(-0.2, 0.2)),
              tissue["liver"], L_LIVER, only=(L_FAT,))
        _fill(base, labels, (cx + 0.62 * Ai, cy + 0.25 * Bi, 0.2 * Ai, 0.32 * Bi, 0.5),
              tissue["spleen"], L_ORGAN, only=(L_FAT,))
        _fill(base, labels, (cx + 0.35 * Ai, cy - 0.45 * Bi, 0.25 * Ai, 0.2 * Bi, 0.3),
              u(10.0, 40.0), L_ORGAN, only=(L_FAT,))
        for side in (-1, 1):
            kx, ky = cx + side * 0.42 * Ai, cy + 0.42 * Bi
            angle = side * u(0.3, 0.7)
            _fill(base, labels, (kx, ky, 0.15 * Ai, 0.2 * Bi, angle), tissue["kidney"], L_KIDNEY)
            _fill(base, labels, (kx - side * 0.05 * Ai, ky, 0.05 * Ai, 0.07 * Bi, angle), -60.0,
                  L_FAT)
            _fill(base, labels, (cx + side * 0.22 * Ai, cy + 0.72 * Bi, 0.09 * Ai, 0.12 * Bi),
                  tissue["muscle"], L_MUSCLE)
        _fill(base, labels, (cx + 0.06 * Ai, cy + 0.5 * Bi, 0.06 * Ai, 0.06 * Ai),
              tissue["blood"], L_VESSEL)
        _fill(base, labels, (cx - 0.12 * Ai, cy + 0.45 * Bi, 0.08 * Ai, 0.05 * Ai),
              tissue["blood"] - 40.0, L_VESSEL)
        rv = 0.13 * Ai
        _bone(base, labels, cx, cy + 0.8 * Bi, rv, rv, 0.0, tissue["bone"], tissue["cortex"],
              cortex_px)
        for _ in range(int(rng.integers(6, 11))):  # bowel loops, some with gas
            bx, by = cx + u(-0.1, 0.6) * Ai, cy + u(-0.5, 0.3) * Bi
            ra = u(0.05, 0.1) * Ai
            _fill(base, labels, (bx, by, ra, ra * u(0.6, 1.0), u(0, math.pi)), u(10.0, 40.0),
                  L_ORGAN, only=(L_FAT,))
            if rng.random() < 0.4:
                _fill(base, labels, (bx, by, 0.4 * ra, 0.3 * ra), -900.0, L_ORGAN,
                      only=(L_ORGAN,))
    elif region == "pelvis":
        _fill(base, labels, (cx, cy - 0.25 * Bi, 0.28 * Ai, 0.3 * Bi), u(0.0, 20.0), L_ORGAN,
              only=(L_FAT,))
        for side in (-1, 1):
            _bone(base, labels, cx + side * 0.62 * Ai, cy + 0.15 * Bi, 0.14 * Ai, 0.42 * Bi,
                  side * 0.45, tissue["bone"], tissue["cortex"], cortex_px)
            _fill(base, labels, (cx + side * 0.35 * Ai, cy + 0.05 * Bi, 0.035 * Ai, 0.035 * Ai),
                  tissue["blood"], L_VESSEL, only=(L_FAT,))
            _fill(base, labels, (cx + side * 0.28 * Ai, cy + 0.18 * Bi, 0.035 * Ai, 0.035 * Ai),
                  tissue["blood"] - 40.0, L_VESSEL, only=(L_FAT,))
        _bone(base, labels, cx, cy + 0.72 * Bi, 0.26 * Ai, 0.14 * Bi, 0.0, tissue["bone"],
              tissue["cortex"], cortex_px)
        _fill(base, labels, (cx, cy + 0.45 * Bi, 0.09 * Ai, 0.09 * Ai), u(20.0, 40.0), L_ORGAN,
              only=(L_FAT,))
        _fill(base, labels, (cx, cy + 0.45 * Bi, 0.035 * Ai, 0.03 * Ai), -900.0, L_ORGAN,
              only=(L_ORGAN,))
        for _ in range(int(rng.integers(2, 5))):
            bx, by = cx + u(-0.5, 0.5) * Ai, cy + u(-0.75, -0.45) * Bi
            ra = u(0.05, 0.09) * Ai
            _fill(base, labels, (bx, by, ra, ra * u(0.6, 1.0), u(0, math.pi)), u(10.0, 40.0),
                  L_ORGAN, only=(L_FAT,))
    else:  # neck
        _fill(base, labels, (cx, cy - 0.35 * Bi, 0.16 * Ai, 0.16 * Ai), AIR_HU, L_AIRWAY)
        for side in (-1, 1):
            _fill(base, labels, (cx + side * 0.3 * Ai, cy - 0.3 * Bi, 0.12 * Ai, 0.2 * Bi),
                  u(90.0, 120.0), L_ORGAN, only=(L_FAT,))
            _fill(base, labels, (cx + side * 0.5 * Ai, cy - 0.08 * Bi, 0.07 * Ai, 0.07 * Ai),
                  tissue["blood"] + 50.0, L_VESSEL)
            _fill(base, labels, (cx + side * 0.63 * Ai, cy - 0.16 * Bi, 0.09 * Ai, 0.08 * Ai),
                  tissue["blood"], L_VESSEL)
            _fill(base, labels, (cx + side * 0.72 * Ai, cy - 0.05 * Bi, 0.12 * Ai, 0.3 * Bi,
                                 side * 0.6), tissue["muscle"], L_MUSCLE, only=(L_FAT,))
        _fill(base, labels, (cx - 0.05 * Ai, cy - 0.1 * Bi, 0.07 * Ai, 0.07 * Ai), 40.0, L_ORGAN)
        _fill(base, labels, (cx, cy + 0.65 * Bi, 0.6 * Ai, 0.3 * Bi), tissue["muscle"], L_MUSCLE,
              only=(L_FAT,))
        rv = 0.2 * Ai
        _bone(base, labels, cx, cy + 0.25 * Bi, rv, rv, 0.0, tissue["bone"], tissue["cortex"],
              cortex_px)

    base[outside_fov] = OUTSIDE_FOV_HU
    labels[outside_fov] = L_OUT
    return Anatomy(blur3(base), labels, outside_fov, (cx, cy, A, B), tissue, {})

