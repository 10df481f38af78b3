"""Checks shared by the detection-file readers (:mod:`deeplesion_cli.formats.detections`,
:mod:`deeplesion_cli.formats.darknet_results`): reading text, naming a JSON value's kind in a
message, finding the first bad entry of a column, and the ground truth's categories by name.
Each failure is an :class:`~deeplesion_cli.formats.groundtruth.EvalInputError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplesion_cli.formats.groundtruth import EvalInputError, GroundTruth

#: Python types a JSON integer / number may have (bool is neither, though Python says so).
INT_TYPES = frozenset({int})
NUMBER_TYPES = frozenset({int, float})


def read_text(path: Path) -> str:
    """``path`` as UTF-8 text; EvalInputError when unreadable or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def value_kind(value) -> str:
    """A JSON value's kind as a message says it (``a list``, ``null``)."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def first_bad_type(values: list, allowed: frozenset) -> int | None:
    """Index of the first value whose type is not in ``allowed`` (bool is never a number)."""
    if set(map(type, values)) <= allowed:
        return None
    return next(i for i, v in enumerate(values) if type(v) not in allowed)


def first_true(mask: np.ndarray) -> int:
    """Index of the first True of a boolean array that has one."""
    return int(np.flatnonzero(mask)[0])


def category_ids_by_name(gt: GroundTruth) -> tuple[dict[str, int], set[str]]:
    """``({name: first category id}, names that several categories share)``."""
    by_name: dict[str, int] = {}
    duplicated: set[str] = set()
    for cid, name in gt.categories:
        if name in by_name:
            duplicated.add(name)
        by_name.setdefault(name, cid)
    return by_name, duplicated


def category_names_text(gt: GroundTruth) -> str:
    """The ground truth's category names for a message (``'liver', 'lung'``)."""
    return ", ".join(repr(n) for _, n in gt.categories) or "none"

