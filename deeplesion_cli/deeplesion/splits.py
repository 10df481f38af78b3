"""Train/val/test splits at patient level: DeepLesion's official one, or a seeded stratified one."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from deeplesion_cli.deeplesion.schema import LesionRow

from deeplesion_cli.prepared import SPLITS  # noqa: E402  (the folder layout owns the names)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (0.7, 0.15, 0.15), normalised to sum 1; raises ValueError."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"--ratios {text!r}: expected three numbers like 0.7,0.15,0.15") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--ratios {text!r}: expected three non-negative numbers like 0.7,0.15,0.15")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def official_split(rows: list[LesionRow]) -> dict[int, str]:
    """Patient -> split from the CSV's Train_Val_Test column (1 train, 2 val, 3 test).

    Raises ValueError if a patient has rows in two splits (never so in the real file).
    """
    split_of: dict[int, str] = {}
    for row in rows:
        seen = split_of.setdefault(row.patient_index, row.split)
        if seen != row.split:
            raise ValueError(f"row {row.row}: patient {row.patient_index} is in both {seen} and "
                             f"{row.split} in Train_Val_Test; the official split is patient-level")
    return split_of


def patient_split(rows: list[LesionRow], ratios=(0.7, 0.15, 0.15), seed: int = 0) -> dict[int, str]:
    """Patient -> split, patient-level and stratified by lesion type, reproducible from ``seed``.

    Each patient is put in the stratum of its most frequent lesion type (ties: smallest code).
    Within a stratum patients are shuffled, laid end to end by lesion count, and each goes to the
    split whose share of the stratum's lesions (cumulative ``ratios``) holds the patient's midpoint,
    so every type is divided in about the given proportions by lesions, not only by patients.
    """
    lesions_per_patient: dict[int, Counter] = defaultdict(Counter)
    for row in rows:
        lesions_per_patient[row.patient_index][row.lesion_type] += 1
    strata: dict[int, list[int]] = defaultdict(list)
    for patient in sorted(lesions_per_patient):
        counts = lesions_per_patient[patient]
        dominant = min(counts, key=lambda t: (-counts[t], t))
        strata[dominant].append(patient)
    bounds = np.cumsum(np.asarray(ratios, dtype=np.float64))
    bounds[-1] = np.inf  # midpoints equal to 1.0 must land in the last split
    rng = np.random.default_rng(seed)
    split_of: dict[int, str] = {}
    for stratum in sorted(strata):
        patients = np.asarray(strata[stratum])
        patients = patients[rng.permutation(len(patients))]
        sizes = np.asarray([sum(lesions_per_patient[p].values()) for p in patients], float)
        midpoints = (np.cumsum(sizes) - sizes / 2.0) / sizes.sum()
        for patient, index in zip(patients, np.searchsorted(bounds, midpoints, side="right")):
            split_of[int(patient)] = SPLITS[min(int(index), 2)]
    return split_of
