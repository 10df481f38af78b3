"""Synthetic DeepLesion, step 1: the cohort plan (everything decided before any pixel exists).

Patients, studies, series, their geometry (image size in px, spacing in mm/px, slice interval
``dz`` in mm, number of slices) and key slices with the coarse lesion types, Possibly_noisy
flags, DICOM windows (HU), normalized z and Slice_range blocks. Proportions follow the release
(``docs/deeplesion.md`` sections 2 and 6). Slice indices are **1-based**, at most 999.

Determinism: every random choice comes from a :class:`numpy.random.SeedSequence` keyed on the seed
and a tag (:data:`TAG_COHORT`) or on (seed, tag, patient, study, series) for everything inside one
series (:func:`seeded_rng`), so a series' draws do not depend on any other series. The tags of the
later steps (geometry, pixels) live here too, so every stream is named in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .schema import format_number

# SeedSequence spawn-key tags: one stream per purpose, so adding draws to one never shifts another.
TAG_COHORT = 1
TAG_PLAN = 2
TAG_GEOMETRY = 3
TAG_PIXELS = 4

#: Literature proportions of the 8 coarse types among labelled lesions (docs/deeplesion.md 6.2).
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
#: Slice_range = key +- ceil(CONTEXT_MM / dz) (docs/deeplesion.md section 2).
CONTEXT_MM = 30.0
MAX_SLICE_INDEX = 999

LUNG_WINDOW_HU = (-1500.0, 500.0)
SOFT_WINDOW_HU = (-175.0, 275.0)
ALT_SOFT_WINDOW_HU = (-160.0, 240.0)
ODD_WINDOWS_HU = ((-185.0, 335.0), (-182.5, 322.5), (-140.0, 260.0), (-177.5, 307.5),
                  (-185.0, 265.0))


@dataclass(frozen=True)
class KeySlice:
    """One key slice of a series and the lesions annotated on it."""

    slice_index: int                      # 1-based
    types: tuple[int, ...]                # true coarse type (1..8) of each lesion on the slice
    noisy: tuple[int, ...]                # Possibly_noisy of each lesion
    window_hu: tuple[float, float]
    z: float                              # normalized z, already rounded through %g
    slice_range: tuple[int, int]          # merged block holding the key slice, 1-based inclusive


@dataclass(frozen=True)
class SeriesSpec:
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
    keys: tuple[KeySlice, ...]            # in CSV order (shuffled, as in the release)
    blocks: tuple[tuple[int, int], ...]   # disjoint, sorted, 1-based inclusive

    @property
    def series_dir(self) -> str:
        return "%06d_%02d_%02d" % (self.patient_index, self.study_index, self.series_id)

    @property
    def n_png(self) -> int:
        return sum(last - first + 1 for first, last in self.blocks)


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of stream ``(seed, *key)``: ``key`` is a tag, then (for one series)
    patient, study and series indices."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def csv_float(value: float) -> float:
    """``value`` as the CSV will read back: rounded through ``%g`` (6 significant digits)."""
    return float(format_number(float(value)))


def draw_type(rng: np.random.Generator, allowed=None) -> int:
    types = [t for t in TYPE_PROBS if allowed is None or t in allowed]
    weights = np.array([TYPE_PROBS[t] for t in types])
    return int(types[rng.choice(len(types), p=weights / weights.sum())])


def region_for(lesion_type: int, rng: np.random.Generator) -> str:
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


def plan_cohort(patients: int, seed: int, size_px: int) -> list[SeriesSpec]:
    """Patients, studies, series and key slices; cheap, so it runs in the parent process."""
    rng = seeded_rng(seed, TAG_COHORT)

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
                first_type = draw_type(rng)
                region = region_for(first_type, rng)
                allowed = REGION_TYPES[region]
                keys = []
                for k in range(min(10, int(rng.geometric(1 / 2.2)))):
                    same = k == 0 or rng.random() < 0.6
                    primary = first_type if same else draw_type(rng, allowed)
                    n_lesions = 1
                    if rng.random() < 0.03:
                        n_lesions = 3 if rng.random() < 0.1 else 2
                    lesions = [[primary, 0]]
                    for _ in range(n_lesions - 1):
                        other = primary if rng.random() < 0.5 else draw_type(rng, allowed)
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
                specs.append(plan_series(seed, patient, study_index, study, series_id, series,
                                          size_px))
    return specs


def plan_series(seed, patient, study_index, study, series_id, series, size_px) -> SeriesSpec:
    """Geometry of the stack (size, spacing, dz, slices, key slices) from the series' own seed."""
    rng = seeded_rng(seed, TAG_PLAN, patient["index"], study_index, series_id)
    # 1.5x images: the release's 768 px images; keep the size even.
    size = 2 * int(round(0.75 * size_px)) if series["large"] else size_px
    fov_mm = FOVS_MM[rng.choice(len(FOVS_MM), p=FOV_WEIGHTS)]
    spacing = fov_mm / size
    if rng.random() < 0.05:  # some DICOMs store the spacing with 3 decimals only
        spacing = round(spacing, 3)
    spacing = csv_float(spacing)
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
        z = csv_float(float(np.clip(z_centre + (slice_index - first) * dz / 1600.0, 0.01, 0.99)))
        block = next(b for b in blocks if b[0] <= slice_index <= b[1])
        keys.append(KeySlice(slice_index, types, noisy, window, z, block))
    order = rng.permutation(len(keys))
    return SeriesSpec(
        patient_index=int(patient["index"]), study_index=study_index, series_id=series_id,
        split_code=int(patient["split"]), gender=patient["gender"], age_years=study["age"],
        region=series["region"], size_px=size, spacing_mm=spacing, dz_mm=dz, n_slices=n_slices,
        keys=tuple(keys[i] for i in order), blocks=tuple(blocks))

