"""Checks shared by the detection-file readers (:mod:`deeplesion_cli.formats.detections`,
:mod:`deeplesion_cli.formats.darknet_results`): reading text, naming a JSON value's kind in a
message, finding the first bad entry of a column, and the ground truth's categories by name.
Each failure is an :class:`~deeplesion_cli.formats.groundtruth.EvalInputError` naming the file.
"""

from __future__ import annotations

from itertools import chain
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



def result_columns(document, path: Path, what: str = "COCO results") -> tuple[list, list, list,
                                                                             list]:
    """``(image_ids, category_ids, bboxes, scores)`` of a COCO-results-like list of objects,
    each value as written; an entry that is not an object or lacks a key is an error naming it
    (``pred.json[3]: no 'score'``). Extra keys are ignored."""
    if not isinstance(document, list):
        raise EvalInputError(f"{path}: {what} must be a JSON list, found {value_kind(document)}")
    keys = ("image_id", "category_id", "bbox", "score")
    try:
        return ([d["image_id"] for d in document], [d["category_id"] for d in document],
                [d["bbox"] for d in document], [d["score"] for d in document])
    except (KeyError, TypeError):
        for i, d in enumerate(document):
            if not isinstance(d, dict):
                raise EvalInputError(f"{path}[{i}]: {value_kind(d)}, not a detection "
                                     "object") from None
            for key in keys:
                if key not in d:
                    raise EvalInputError(f"{path}[{i}]: no {key!r}") from None
        raise  # pragma: no cover


def xywh_boxes(bboxes: list, where) -> np.ndarray:
    """``bbox`` values ``[x, y, w, h]`` (top-left corner and size in pixels) as an (n, 4) float
    array; a value that is not a list of 4 numbers is an error naming its entry (``where(i)``)."""
    n = len(bboxes)
    bad = first_bad_type(bboxes, frozenset({list}))
    if bad is not None:
        raise EvalInputError(f"{where(bad)}: bbox is {bboxes[bad]!r}, not a list [x, y, w, h]")
    lengths = np.fromiter(map(len, bboxes), np.int64, n)
    if (lengths != 4).any():
        bad = first_true(lengths != 4)
        raise EvalInputError(f"{where(bad)}: bbox has {lengths[bad]} values, not 4 [x, y, w, h]")
    flat = list(chain.from_iterable(bboxes))
    bad = first_bad_type(flat, NUMBER_TYPES)
    if bad is not None:
        raise EvalInputError(f"{where(bad // 4)}: bbox value {flat[bad]!r} is not a number")
    return np.asarray(flat, dtype=np.float64).reshape(n, 4)


def check_xywh_finite(box: np.ndarray, bboxes: list, where) -> None:
    """Every box finite, with a width and height >= 0 (else an error naming the entry)."""
    finite = np.isfinite(box).all(axis=1)
    if not finite.all():
        bad = first_true(~finite)
        raise EvalInputError(f"{where(bad)}: bbox {bboxes[bad]} is not finite")
    negative = (box[:, 2] < 0) | (box[:, 3] < 0)
    if negative.any():
        bad = first_true(negative)
        raise EvalInputError(f"{where(bad)}: bbox {bboxes[bad]} has a negative width or height "
                             "(expected [x, y, w, h], not corners)")


def finite_scores(scores: list, where) -> np.ndarray:
    """``score`` values as a float array: numbers (any range) and finite, else an error naming
    the entry."""
    bad = first_bad_type(scores, NUMBER_TYPES)
    if bad is not None:
        raise EvalInputError(f"{where(bad)}: score is {scores[bad]!r}, not a number")
    score = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(score)
    if not finite.all():
        bad = first_true(~finite)
        raise EvalInputError(f"{where(bad)}: score is {scores[bad]!r}")
    return score
