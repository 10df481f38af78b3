"""Synthetic DeepLesion: a small data set in the release's exact on-disk format.

``synthesize`` writes ``<out>/DL_info.csv`` and ``<out>/Images_png/PPPPPP_SS_EE/KKK.png`` the way
the NIH release does (format facts and the generator spec: ``shared/reference/deeplesion.md``
sections 1, 2, 3 and 6). The pixels are CT-like HU images (body, region anatomy, noise) with
labelled lesions that a detector can learn, and unlabelled decoys, so FROC curves are non-trivial.

Units and conventions at every boundary:

* CSV coordinates (RECIST points, boxes) are **1-based pixels** in the image's native size, as in
  the release. Internally geometry uses **0-based pixel centres** (pixel ``j`` has its centre at
  ``x = j``); a CSV value is the internal value + 1.
* Slice indices are **1-based** (the ``KKK`` of a file name), at most 999.
* Spacing is in **mm per pixel** (in-plane) and **mm between slices** (``dz``); lesion sizes are
  drawn in mm and converted to pixels with the series' spacing.
* Pixel values are **HU**; PNGs store HU + 32768 as uint16 (:mod:`.hu`).

Determinism: every random choice comes from a :class:`numpy.random.SeedSequence` keyed on the seed
and a tag (cohort) or on (seed, tag, patient, study, series) for everything inside one series, so
the output bytes do not depend on ``workers`` or on process scheduling.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from ..progress import Progress
from . import hu
from .schema import LesionRow, format_csv, format_number

CSV_NAME = "DL_info.csv"
IMAGES_DIR = "Images_png"

# SeedSequence spawn-key tags: one stream per purpose, so adding draws to one never shifts another.
_TAG_COHORT = 1
_TAG_PLAN = 2
_TAG_GEOMETRY = 3
_TAG_PIXELS = 4

#: Literature proportions of the 8 coarse types among labelled lesions (reference section 6.2).
TYPE_PROBS = {5: 0.24, 2: 0.22, 3: 0.17, 4: 0.13, 8: 0.09, 7: 0.07, 6: 0.05, 1: 0.03}

#: Lesion types that fit the anatomy of each body region (a series shows one region).
REGION_TYPES = {
    "neck": (7, 1),
    "thorax": (5, 3, 1, 7),
    "abdomen": (4, 6, 2, 1, 7),
    "pelvis": (8, 2, 1, 7),
}
#: Median normalized z (head 0 -> feet 1) of a slice, by the series' first lesion type.
TYPE_Z = {1: None, 2: 0.63, 3: 0.39, 4: 0.61, 5: 0.48, 6: 0.66, 7: None, 8: 0.79}
REGION_Z = {"neck": 0.2, "thorax": 0.44, "abdomen": 0.63, "pelvis": 0.8}

#: Field of view in mm -> spacing = FOV / size; weights favour the common scanner settings.
FOVS_MM = (500.0, 460.0, 480.0, 440.0, 400.0, 380.0, 360.0)
FOV_WEIGHTS = (0.25, 0.15, 0.15, 0.14, 0.12, 0.10, 0.09)
#: Slice interval in mm. Fewer 1-mm series than the real 28 %: each costs ~61 PNGs per key slice.
DZ_MM = (5.0, 2.0, 1.0, 2.5, 3.0)
DZ_WEIGHTS = (0.75, 0.10, 0.10, 0.025, 0.025)
#: Slice_range = key +- ceil(CONTEXT_MM / dz) (reference section 2).
CONTEXT_MM = 30.0
MAX_SLICE_INDEX = 999

LUNG_WINDOW_HU = (-1500.0, 500.0)
SOFT_WINDOW_HU = (-175.0, 275.0)
ALT_SOFT_WINDOW_HU = (-160.0, 240.0)
ODD_WINDOWS_HU = ((-185.0, 335.0), (-182.5, 322.5), (-140.0, 260.0), (-177.5, 307.5),
                  (-185.0, 265.0))

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

OUTSIDE_FOV_HU = -1024.0
AIR_HU = -1000.0

# Tissue labels of the anatomy map, used to put each lesion type in its organ.
L_OUT, L_AIR, L_TABLE, L_SUBCUT, L_MUSCLE, L_FAT, L_LUNG, L_LIVER, L_KIDNEY, L_BONE, L_CORTEX, \
    L_VESSEL, L_ORGAN, L_AIRWAY = range(14)
_BODY_LABELS = (L_SUBCUT, L_MUSCLE, L_FAT, L_LUNG, L_LIVER, L_KIDNEY, L_BONE, L_CORTEX, L_VESSEL,
                L_ORGAN)
_HOSTS = {1: (L_BONE,), 2: (L_FAT,), 3: (L_FAT,), 4: (L_LIVER,), 5: (L_LUNG,), 6: (L_KIDNEY,),
          7: (L_SUBCUT, L_MUSCLE), 8: (L_FAT,)}
_NECK_SOFT_TISSUE_HOST = (L_SUBCUT, L_FAT)


@dataclass
class SynthResult:
    """What :func:`synthesize` wrote."""

    csv_path: Path
    #: exactly the rows written, in file order (parsing the CSV gives rows equal to these)
    rows: list[LesionRow]
    #: number of slice PNGs written
    n_png: int


# ------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _KeySlice:
    slice_index: int                      # 1-based
    types: tuple[int, ...]                # true coarse type (1..8) of each lesion on the slice
    noisy: tuple[int, ...]                # Possibly_noisy of each lesion
    window_hu: tuple[float, float]
    z: float                              # normalized z, already rounded through %g
    slice_range: tuple[int, int]          # merged block holding the key slice, 1-based inclusive


@dataclass(frozen=True)
class _SeriesSpec:
    """Everything about one series that is decided before any pixel exists."""

    patient_index: int
    study_index: int
    series_id: int
    split_code: int
    gender: str
    age_years: float                      # math.nan when missing (the parser's NaN object)
    region: str
    size_px: int
    spacing_mm: float                     # in-plane, mm/px, rounded through %g
    dz_mm: float                          # slice interval, mm
    n_slices: int
    keys: tuple[_KeySlice, ...]           # in CSV order (shuffled, as in the release)
    blocks: tuple[tuple[int, int], ...]   # disjoint, sorted, 1-based inclusive

    @property
    def series_dir(self) -> str:
        return "%06d_%02d_%02d" % (self.patient_index, self.study_index, self.series_id)

    @property
    def n_png(self) -> int:
        return sum(last - first + 1 for first, last in self.blocks)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def _g(value: float) -> float:
    """``value`` as the CSV will read back: rounded through ``%g`` (6 significant digits)."""
    return float(format_number(float(value)))


def _draw_type(rng: np.random.Generator, allowed=None) -> int:
    types = [t for t in TYPE_PROBS if allowed is None or t in allowed]
    weights = np.array([TYPE_PROBS[t] for t in types])
    return int(types[rng.choice(len(types), p=weights / weights.sum())])


def _region_for(lesion_type: int, rng: np.random.Generator) -> str:
    if lesion_type in (5, 3):
        return "thorax"
    if lesion_type in (4, 6, 2):
        return "abdomen"
    if lesion_type == 8:
        return "pelvis"
    if lesion_type == 7:
        return ("neck", "thorax", "abdomen", "pelvis")[rng.choice(4, p=[0.6, 0.15, 0.1, 0.15])]
    return ("thorax", "abdomen", "pelvis")[int(rng.integers(3))]


def merge_blocks(key_slices, dz_mm: float, n_slices: int) -> list[tuple[int, int]]:
    """Slice_range blocks: each key +- ceil(30 mm / dz) clipped to [1, n_slices], merged when two
    overlap or touch. Input and output slice indices are 1-based; blocks are inclusive, sorted."""
    half = math.ceil(CONTEXT_MM / dz_mm)
    spans = sorted((max(1, k - half), min(n_slices, k + half)) for k in key_slices)
    merged: list[list[int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(a, b) for a, b in merged]


def _plan_cohort(patients: int, seed: int, size_px: int) -> list[_SeriesSpec]:
    """Patients, studies, series and key slices; cheap, so it runs in the parent process."""
    rng = _rng(seed, _TAG_COHORT)

    patient_indices = []
    index = 0
    for _ in range(patients):
        index += 1
        if index > 1 and rng.random() < 0.04:  # the release's indices have gaps
            index += int(rng.integers(1, 4))
        patient_indices.append(index)

    n_val = n_test = int(round(0.15 * patients))
    if patients >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    split_codes = [2] * n_val + [3] * n_test + [1] * (patients - n_val - n_test)
    split_codes = [split_codes[i] for i in rng.permutation(patients)]

    # Nested lists [patient][study][series][key][lesion], mutable so guarantees can be forced.
    cohort = []
    for p_index, split_code in zip(patient_indices, split_codes):
        gender = "M" if rng.random() < 0.6 else "F"
        age = float(np.clip(round(rng.normal(55.0, 16.0)), 5, 90))
        studies = []
        for study in range(min(26, int(rng.geometric(1 / 2.4)))):
            if study:
                age = min(90.0, age + float(rng.integers(0, 3)))
            age_or_nan = math.nan if rng.random() < 0.003 else age
            series_list = []
            for _series in range(min(5, int(rng.geometric(1 / 1.4)))):
                first_type = _draw_type(rng)
                region = _region_for(first_type, rng)
                allowed = REGION_TYPES[region]
                keys = []
                for k in range(min(10, int(rng.geometric(1 / 2.2)))):
                    same = k == 0 or rng.random() < 0.6
                    primary = first_type if same else _draw_type(rng, allowed)
                    n_lesions = 1
                    if rng.random() < 0.03:
                        n_lesions = 3 if rng.random() < 0.1 else 2
                    lesions = [[primary, 0]]
                    for _ in range(n_lesions - 1):
                        other = primary if rng.random() < 0.5 else _draw_type(rng, allowed)
                        lesions.append([other, 0])
                    for lesion in lesions:
                        lesion[1] = int(rng.random() < 0.002)
                    keys.append(lesions)
                large = bool(rng.random() < 0.01)
                series_list.append({"region": region, "keys": keys, "large": large})
            studies.append({"age": age_or_nan, "series": series_list})
        cohort.append({"index": p_index, "split": split_code, "gender": gender,
                       "studies": studies})

    all_series = [s for p in cohort for st in p["studies"] for s in st["series"]]
    all_keys = [k for s in all_series for k in s["keys"]]
    all_lesions = [les for k in all_keys for les in k]
    all_studies = [st for p in cohort for st in p["studies"]]
    # Small data sets must still exercise the rare cases (tests and demos rely on them).
    if patients >= 4:
        if not any(s["large"] for s in all_series):
            all_series[int(rng.integers(len(all_series)))]["large"] = True
        if not any(len(k) >= 2 for k in all_keys):
            key = all_keys[int(rng.integers(len(all_keys)))]
            key.append([key[0][0], 0])
            all_lesions = [les for k in all_keys for les in k]
        if not any(les[1] for les in all_lesions):
            all_lesions[int(rng.integers(len(all_lesions)))][1] = 1
    if patients >= 8 and not any(math.isnan(st["age"]) for st in all_studies):
        all_studies[int(rng.integers(len(all_studies)))]["age"] = math.nan

    specs = []
    for patient in cohort:
        for study_index, study in enumerate(patient["studies"], start=1):
            for series_id, series in enumerate(study["series"], start=1):
                specs.append(_plan_series(seed, patient, study_index, study, series_id, series,
                                          size_px))
    return specs


def _plan_series(seed, patient, study_index, study, series_id, series, size_px) -> _SeriesSpec:
    """Geometry of the stack (size, spacing, dz, slices, key slices) from the series' own seed."""
    rng = _rng(seed, _TAG_PLAN, patient["index"], study_index, series_id)
    # 1.5x images: the release's 768 px images; keep the size even.
    size = 2 * int(round(0.75 * size_px)) if series["large"] else size_px
    fov_mm = FOVS_MM[rng.choice(len(FOVS_MM), p=FOV_WEIGHTS)]
    spacing = fov_mm / size
    if rng.random() < 0.05:  # some DICOMs store the spacing with 3 decimals only
        spacing = round(spacing, 3)
    spacing = _g(spacing)
    dz = float(DZ_MM[rng.choice(len(DZ_MM), p=DZ_WEIGHTS)])
    half = math.ceil(CONTEXT_MM / dz)
    n_slices = int(np.clip(round(rng.uniform(250.0, 650.0) / dz), max(30, 2 * half + 1),
                           MAX_SLICE_INDEX))

    n_keys = len(series["keys"])
    first = int(rng.integers(1, n_slices + 1))
    indices = [first]
    tries = 0
    while len(indices) < n_keys:
        tries += 1
        if tries < 200:  # bookmarks cluster within a few cm, so blocks often merge
            cand = first + int(round(rng.normal(0.0, 60.0) / dz))
        else:
            cand = int(rng.integers(1, n_slices + 1))
        cand = int(np.clip(cand, 1, n_slices))
        if cand not in indices:
            indices.append(cand)

    blocks = merge_blocks(indices, dz, n_slices)
    first_type = series["keys"][0][0][0]
    z_centre = TYPE_Z[first_type] if TYPE_Z[first_type] is not None else REGION_Z[series["region"]]
    z_centre += rng.normal(0.0, 0.02)

    keys = []
    for slice_index, lesions in zip(indices, series["keys"]):
        types = tuple(int(t) for t, _ in lesions)
        noisy = tuple(int(n) for _, n in lesions)
        r = rng.random()
        if types[0] == 5:
            window = LUNG_WINDOW_HU
        elif r < 0.05:
            window = ALT_SOFT_WINDOW_HU
        elif r < 0.06:
            window = ODD_WINDOWS_HU[int(rng.integers(len(ODD_WINDOWS_HU)))]
        else:
            window = SOFT_WINDOW_HU
        # a body scan covers ~1.6 m head to feet, so z moves dz/1600 per slice
        z = _g(float(np.clip(z_centre + (slice_index - first) * dz / 1600.0, 0.01, 0.99)))
        block = next(b for b in blocks if b[0] <= slice_index <= b[1])
        keys.append(_KeySlice(slice_index, types, noisy, window, z, block))
    order = rng.permutation(len(keys))
    return _SeriesSpec(
        patient_index=int(patient["index"]), study_index=study_index, series_id=series_id,
        split_code=int(patient["split"]), gender=patient["gender"], age_years=study["age"],
        region=series["region"], size_px=size, spacing_mm=spacing, dz_mm=dz, n_slices=n_slices,
        keys=tuple(keys[i] for i in order), blocks=tuple(blocks))


# ------------------------------------------------------------------------------------- anatomy


@dataclass
class _Anatomy:
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


def _blur3(a: np.ndarray) -> np.ndarray:
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


def _build_anatomy(region: str, size_px: int, rng: np.random.Generator) -> _Anatomy:
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
    return _Anatomy(_blur3(base), labels, outside_fov, (cx, cy, A, B), tissue, {})


# ------------------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _Blob:
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


def _alpha(blob: _Blob, scale: float, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
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


def _window(blob: _Blob, scale: float, size: int):
    r = blob.reach_px() * scale + blob.edge_px + 1.0
    x0, x1 = max(0, int(math.floor(blob.cx - r))), min(size, int(math.ceil(blob.cx + r)) + 1)
    y0, y1 = max(0, int(math.floor(blob.cy - r))), min(size, int(math.ceil(blob.cy + r)) + 1)
    return y0, y1, x0, x1


def _paint(img: np.ndarray, blob: _Blob, scale: float) -> None:
    y0, y1, x0, x1 = _window(blob, scale, img.shape[0])
    if y0 >= y1 or x0 >= x1:
        return
    alpha = _alpha(blob, scale, y0, y1, x0, x1)
    patch = img[y0:y1, x0:x1]
    patch += alpha * (np.float32(blob.hu) - patch)


def _recist_points(blob: _Blob, rng: np.random.Generator) -> np.ndarray:
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


def _overlaps(blob: _Blob, placed, dz_mm: float) -> bool:
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
    return _Blob(
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


def _place_lesion(lesion_type, key: _KeySlice, spec: _SeriesSpec, anat: _Anatomy, rng, placed):
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
            core_min, ring_min, hosts = 0.8, 0.0, _BODY_LABELS
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


def _place_decoy(spec: _SeriesSpec, anat: _Anatomy, rng, placed):
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


# ------------------------------------------------------------------------------------- rendering


def _render_series(spec: _SeriesSpec, seed: int, images_dir) -> list[LesionRow]:
    """Place the lesions, write every slice PNG of every block, and return the CSV rows.

    Runs in a worker process; all randomness comes from the series' own seed sequences.
    """
    geo = _rng(seed, _TAG_GEOMETRY, spec.patient_index, spec.study_index, spec.series_id)
    anat = _build_anatomy(spec.region, spec.size_px, geo)
    noise_sd_hu = float(geo.uniform(10.0, 20.0))

    placed: list[_Blob] = []
    lesion_geometry = []  # per key slice: list of RECIST points (4, 2), 0-based px
    for key in spec.keys:
        points_list = []
        for lesion_type in key.types:
            blob, points = _place_lesion(lesion_type, key, spec, anat, geo, placed)
            placed.append(blob)
            points_list.append(points)
        lesion_geometry.append(points_list)
    for _ in range(int(geo.integers(2, 6))):
        decoy = _place_decoy(spec, anat, geo, placed)
        if decoy is not None:
            placed.append(decoy)

    pixels = _rng(seed, _TAG_PIXELS, spec.patient_index, spec.study_index, spec.series_id)
    S = spec.size_px
    # a [1,2,1]/4 blur in 2-D scales white noise by 0.375; pre-scale so the result has noise_sd_hu
    noise_gain = np.float32(noise_sd_hu / 0.375)
    series_dir = Path(images_dir) / spec.series_dir
    series_dir.mkdir(parents=True, exist_ok=True)
    for first, last in spec.blocks:
        for k in range(first, last + 1):
            img = anat.base_hu.copy()
            for blob in placed:
                scale = blob.scale_at(k, spec.dz_mm)
                if scale > 0.0:
                    _paint(img, blob, scale)
            noise = _blur3(pixels.standard_normal((S, S), dtype=np.float32))
            noise *= noise_gain
            img += noise
            img[anat.outside_fov] = OUTSIDE_FOV_HU
            stored = hu.hu_to_png_u16(img)
            atomic.write_with(series_dir / f"{k:03d}.png",
                              lambda path, arr=stored: hu.write_png_u16(path, arr))

    return _rows_for(spec, anat, lesion_geometry)


def _rows_for(spec: _SeriesSpec, anat: _Anatomy, lesion_geometry) -> list[LesionRow]:
    """CSV rows with every float pre-rounded through %g, derived fields from rounded points."""
    body_cx, body_cy, body_a, body_b = anat.body_xyab_px
    rows = []
    for key, points_list in zip(spec.keys, lesion_geometry):
        file_name = "%06d_%02d_%02d_%03d.png" % (spec.patient_index, spec.study_index,
                                                 spec.series_id, key.slice_index)
        for lesion_type, noisy, points0 in zip(key.types, key.noisy, points_list):
            pts = [(_g(x + 1.0), _g(y + 1.0)) for x, y in points0]  # CSV is 1-based
            long_px = math.dist(pts[0], pts[1])
            short_px = math.dist(pts[2], pts[3])
            if short_px > long_px:  # cannot happen with ratio <= 0.95; kept as a safety net
                pts = [pts[2], pts[3], pts[0], pts[1]]
                long_px, short_px = short_px, long_px
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            box = (_g(min(xs) - 5), _g(min(ys) - 5), _g(max(xs) + 5), _g(max(ys) + 5))
            centre_x0 = (box[0] + box[2]) / 2 - 1.0
            centre_y0 = (box[1] + box[3]) / 2 - 1.0
            loc_x = float(np.clip((centre_x0 - (body_cx - body_a)) / (2 * body_a), 0.001, 0.999))
            loc_y = float(np.clip((centre_y0 - (body_cy - body_b)) / (2 * body_b), 0.001, 0.999))
            rows.append(LesionRow(
                file_name=file_name,
                patient_index=spec.patient_index,
                study_index=spec.study_index,
                series_id=spec.series_id,
                key_slice_index=key.slice_index,
                measurement_xy_px=tuple(v for p in pts for v in p),
                box_xyxy_px=box,
                diameters_px=(_g(long_px), _g(short_px)),
                location_xyz=(_g(loc_x), _g(loc_y), key.z),
                lesion_type=lesion_type if spec.split_code != 1 else -1,
                possibly_noisy=noisy,
                slice_range=key.slice_range,
                spacing_mm=(spec.spacing_mm, spec.spacing_mm, _g(spec.dz_mm)),
                image_size_px=(spec.size_px, spec.size_px),
                dicom_window_hu=(_g(key.window_hu[0]), _g(key.window_hu[1])),
                gender=spec.gender,
                age_years=spec.age_years,
                split_code=spec.split_code,
            ))
    return rows


def _pool_context():
    # forkserver: forking a parent that already runs threads (torch, rich) can deadlock
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context()


def _remove_stale_slices(images_dir: Path, specs) -> None:
    """Delete slice PNGs an earlier synth into the same folder left that this plan does not hold,
    so the tree always matches its DL_info.csv."""
    planned = {f"{spec.series_dir}/{k:03d}.png" for spec in specs
               for first, last in spec.blocks for k in range(first, last + 1)}
    for path in images_dir.glob("*/*.png"):
        if f"{path.parent.name}/{path.name}" not in planned:
            path.unlink()
    for folder in images_dir.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def synthesize(out_dir, patients: int = 24, seed: int = 0, size_px: int = 512,
               newline: str = "\r\n", workers: int | None = None,
               show_progress: bool = True) -> SynthResult:
    """Write a synthetic DeepLesion tree under ``out_dir`` and return what was written.

    ``out_dir/DL_info.csv`` (18 columns, byte-exact format, lines ended by ``newline``: ``"\\r\\n"``
    or ``"\\n"``) and ``out_dir/Images_png/PPPPPP_SS_EE/KKK.png`` (16-bit, HU + 32768) for every
    1-based slice of every Slice_range block. ``patients``: number of patients (>= 1; >= 3 puts a
    patient in each split, >= 4 adds a 1.5x-size image, a 2-lesion slice and a Possibly_noisy row,
    >= 8 a NaN age). ``size_px``: side of most images in pixels (>= 64; about 1 % of series are
    1.5x). ``workers``: processes (default ``os.cpu_count()``); the bytes written do not depend on
    it. Files are written atomically; existing files of the same names are replaced, others left.

    With ``workers > 1`` the worker processes come from a forkserver (where available), so a
    script that calls this must guard its entry point with ``if __name__ == "__main__":``.
    """
    if newline not in ("\r\n", "\n"):
        raise ValueError(f"newline must be '\\r\\n' (crlf) or '\\n' (lf), not {newline!r}")
    if int(patients) < 1:
        raise ValueError(f"patients must be at least 1, not {patients}")
    if int(size_px) < 64:
        raise ValueError(f"size_px must be at least 64 pixels, not {size_px}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed}")
    patients, size_px, seed = int(patients), int(size_px), int(seed)
    out = Path(out_dir)
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)

    specs = _plan_cohort(patients, seed, size_px)
    total = sum(spec.n_png for spec in specs)
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    n_workers = max(1, min(n_workers, len(specs)))

    results: list[list[LesionRow] | None] = [None] * len(specs)
    with Progress(total=total, description="synth", unit="slices",
                  enabled=show_progress) as progress:
        if n_workers == 1:
            for i, spec in enumerate(specs):
                results[i] = _render_series(spec, seed, images_dir)
                progress.advance(spec.n_png)
        else:
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context()) as pool:
                # largest series first, so one long 1-mm series does not finish last alone
                order = sorted(range(len(specs)), key=lambda i: -specs[i].n_png)
                futures = {pool.submit(_render_series, specs[i], seed, str(images_dir)): i
                           for i in order}
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    progress.advance(specs[i].n_png)

    # Number rows as the parser does: data row i (1-based) sits on line i + 1.
    rows = [dataclasses.replace(row, row=i, line=i + 1) for i, row in
            enumerate((row for series_rows in results for row in series_rows), 1)]
    _remove_stale_slices(images_dir, specs)
    csv_path = out / CSV_NAME
    atomic.write_bytes(csv_path, format_csv(rows, newline))
    return SynthResult(csv_path=csv_path, rows=rows, n_png=total)
