"""Train/val/test splits at patient level: DeepLesion's official one, or a seeded stratified one."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from deeplesion_cli.deeplesion.schema import LesionRow

from deeplesion_cli.prepared import SPLITS  # noqa: E402  (the folder layout owns the names)


#: How far the three ``--ratios`` may sum from 1 (``0.33,0.33,0.33`` passes; ``7,1.5,1.5`` not).
RATIOS_TOLERANCE = 0.01


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (0.7, 0.15, 0.15), normalised to sum exactly 1; raises ValueError
    unless there are three non-negative numbers summing to 1 within :data:`RATIOS_TOLERANCE`.

    A share of 0 leaves its split empty on purpose (``1,0,0``: every patient in train); a share
    above 0 that gets no patient is refused by ``lesion prepare`` (:func:`empty_splits`).
    """
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"--ratios {text!r}: expected three numbers like 0.7,0.15,0.15") from None
    if len(parts) != 3 or any(not 0 <= p < float("inf") for p in parts):
        raise ValueError(f"--ratios {text!r}: expected three non-negative numbers like "
                         "0.7,0.15,0.15")
    total = sum(parts)
    if abs(total - 1.0) > RATIOS_TOLERANCE + 1e-9:
        raise ValueError(f"--ratios {text!r}: the train, val and test shares sum to {total:g}; "
                         f"they must sum to 1 (within {RATIOS_TOLERANCE:g}), e.g. 0.7,0.15,0.15")
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def empty_splits(split_of: dict[int, str], ratios) -> list[str]:
    """Splits given a share above 0 by ``ratios`` that got no patient in ``split_of``."""
    used = set(split_of.values())
    return [s for s, share in zip(SPLITS, ratios) if share > 0 and s not in used]


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

    On tiny data sets that can leave a split with a share above 0 empty (a stratum of one patient
    always goes to the split holding the midpoint 0.5); then the patient with the fewest lesions
    of the largest split moves to it, while that split keeps one (:func:`_fill_empty_splits`).
    Only with fewer patients than such splits does one stay empty (:func:`empty_splits`).
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
    _fill_empty_splits(split_of, ratios,
                       {p: sum(c.values()) for p, c in lesions_per_patient.items()})
    return split_of


def _fill_empty_splits(split_of: dict[int, str], ratios, lesions: dict[int, int]) -> None:
    """Give each split with a share above 0 and no patient the patient with the fewest lesions
    (then the lowest index) of the split with the most patients (ties: train, val, test), as
    long as that split keeps at least one."""
    for split, share in zip(SPLITS, ratios):
        members = Counter(split_of.values())
        if share <= 0 or members[split]:
            continue
        donors = [s for s in SPLITS if members[s] > 1]
        if not donors:
            return
        donor = max(donors, key=lambda s: (members[s], -SPLITS.index(s)))
        patient = min((p for p, s in split_of.items() if s == donor),
                      key=lambda p: (lesions[p], p))
        split_of[patient] = split
