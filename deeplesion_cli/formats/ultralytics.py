"""Ultralytics YOLO's ``predictions.json`` read into
:class:`~deeplesion_cli.formats.groundtruth.Detections` (format ``ultralytics`` of
:mod:`deeplesion_cli.formats.detections`).

``yolo detect val data=PREPARED/data.yaml model=best.pt save_json=True`` writes
``runs/detect/val*/predictions.json`` (ultralytics/models/yolo/detect/val.py ``pred_to_json``), a
list of::

    {"image_id": <the image file's stem: a number when the stem is numeric, else the string>,
     "file_name": "<stem>.png",         (Ultralytics 8.3 and later)
     "category_id": <class index + base>,
     "bbox": [x, y, w, h],              top-left corner and size, pixels of the original image
     "score": <confidence>}

Boxes are 0-based continuous pixels, COCO's and the evaluator's convention, and are kept as they
are. Extra keys are ignored.

Images are matched by ``file_name`` when the entry has one (full name, basename or stem, as for
darknet's JSON), else by ``image_id`` as a stem; a numeric ``image_id`` without ``file_name``
matches the image whose stem is that number (Ultralytics turns the stem ``"0012"`` into ``12``).
An entry whose ``image_id`` contradicts its ``file_name`` (neither that name's stem nor the
ground-truth id of that image) is an error, as is any name that matches no image or several.

Classes: Ultralytics' class index ``k`` is the ``k``-th name of data.yaml, which ``lesion
prepare`` writes in the order of obj.names; so ``k`` is ``names[k]`` when obj.names is given (the
prepared folder's by default), else the ``k``-th category of the ground truth in file order.
``category_id`` is ``k + base``: Ultralytics 8.4 writes ``k + 1`` for data sets other than COCO
(base 1), releases before it wrote ``k`` (base 0). The base is taken from the file and the
number of classes ``K`` (:func:`class_base_of`) or given (``--class-base``); a file where it
cannot be told (every id in ``1..K-1``, possible only with several classes) is refused rather
than shifting every detection onto the neighbouring class.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from deeplesion_cli.formats.detection_checks import (INT_TYPES, category_ids_by_name,
                                                     category_names_text, check_xywh_finite,
                                                     finite_scores, first_bad_type,
                                                     result_columns, value_kind, xywh_boxes)
from deeplesion_cli.formats.groundtruth import Detections, EvalInputError, GroundTruth

FORMAT = "ultralytics"
#: The class-id bases a file may use: 0 (``category_id`` = class index) or 1 (index + 1).
CLASS_BASES = (0, 1)
#: The option that sets the base (named in messages).
CLASS_BASE_OPTION = "--class-base"


def looks_like_ultralytics(entry: dict) -> bool:
    """A COCO-results-like entry written by Ultralytics: a string ``image_id`` (a file stem) or a
    ``file_name`` key. (A file of numeric stems without ``file_name``, from Ultralytics before
    8.3, looks like COCO results: name the format to read it so.)"""
    return isinstance(entry.get("image_id"), str) or "file_name" in entry


def class_base_of(category_ids: np.ndarray, n_classes: int, given: int | None, where,
                  source: str = "detections") -> tuple[int | None, str]:
    """``(base, reason)``: the base of ``category_ids`` (class index + base) among ``n_classes``
    classes; ``where(i)`` names entry ``i`` in messages.

    ``given`` (0 or 1) is checked, not overridden. Otherwise: an id ``0`` means base 0, an id
    ``n_classes`` means base 1, both is an error, and neither (every id in ``1..n_classes - 1``)
    is an error saying to give the base. No ids: ``(given, reason)``, the base being moot.
    """
    ids = np.asarray(category_ids, dtype=np.int64)
    k = int(n_classes)
    if given is not None and given not in CLASS_BASES:
        raise EvalInputError(f"{CLASS_BASE_OPTION} {given!r}: must be 0 or 1")
    if ids.size == 0:
        return given, "no detections"
    if given is not None:
        outside = (ids < given) | (ids > k - 1 + given)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise EvalInputError(
                f"{where(i)}: category_id {ids[i]} is outside {given}..{k - 1 + given}, the ids "
                f"of {k} classes {given}-based ({CLASS_BASE_OPTION} {given})")
        return given, f"set by {CLASS_BASE_OPTION} {given}"
    outside = (ids < 0) | (ids > k)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise EvalInputError(f"{where(i)}: category_id {ids[i]} is outside 0..{k}: with {k} "
                             f"class{'es' if k != 1 else ''}, ids are 0..{k - 1} (0-based) or "
                             f"1..{k} (1-based); is this file for another data set?")
    zero, top = ids == 0, ids == k
    if zero.any() and top.any():
        i, j = int(np.flatnonzero(zero)[0]), int(np.flatnonzero(top)[0])
        raise EvalInputError(
            f"{where(i)}: category_id 0, and {where(j)}: category_id {k}: with {k} classes, ids "
            f"are 0..{k - 1} (0-based) or 1..{k} (1-based), never both; is this file for another "
            "data set?")
    if zero.any():
        return 0, "detected: category_id 0 occurs"
    if top.any():
        return 1, f"detected: category_id {k} (the number of classes) occurs, 0 never"
    seen = ", ".join(str(v) for v in np.unique(ids)[:12])
    raise EvalInputError(
        f"{source}: every category_id lies in 1..{k - 1} (seen: {seen}), so "
        f"the file does not tell whether its class ids are 0-based (Ultralytics before 8.4: "
        f"category_id = class index) or 1-based (8.4: class index + 1), and a wrong guess "
        f"would give every detection the neighbouring class; give {CLASS_BASE_OPTION} 0 or "
        f"{CLASS_BASE_OPTION} 1")


def describe_reading(reading: dict) -> str:
    """One line saying how a file was read (``Detections.reading``), e.g. ``read as Ultralytics
    predictions; class ids 1-based (detected: ...)``; empty for other formats."""
    if reading.get("detections_format") != FORMAT:
        return ""
    base = reading.get("class_base")
    classes = (f"class ids {base}-based" if base is not None else "class ids' base moot")
    return (f"read as Ultralytics predictions; {classes} "
            f"({reading.get('class_base_reason', '')})")


def read_ultralytics(document, path: Path, gt: GroundTruth, names: list[str] | None = None,
                     class_base: int | None = None) -> Detections:
    """Ultralytics predictions.json against ``gt``: boxes ``[x, y, w, h]`` 0-based pixels kept
    as they are, images by ``file_name`` / stem, ``category_id - base`` as a class index into
    ``names`` (obj.names order) or, without ``names``, into the ground truth's categories.

    The returned detections' ``reading`` holds ``{"detections_format": "ultralytics",
    "class_base": 0 | 1 | None, "class_base_reason": str}``.
    """
    source = str(path)
    image_ids, category_ids, bboxes, scores = result_columns(document, path,
                                                             "Ultralytics predictions")

    def where(i: int) -> str:
        return f"{path}[{i}]"

    n_classes = len(names) if names is not None else len(gt.categories)
    if not image_ids:
        base, reason = class_base_of(np.zeros(0, np.int64), n_classes, class_base, where, source)
        dets = Detections.empty(source)
        dets.reading = _reading(base, reason)
        return dets

    bad = first_bad_type(category_ids, INT_TYPES)
    if bad is not None:
        raise EvalInputError(f"{where(bad)}: category_id is {category_ids[bad]!r}, not an "
                             "integer class id")
    image = _images(document, image_ids, gt, where)
    box = xywh_boxes(bboxes, where)
    score = finite_scores(scores, where)
    cats = np.asarray(category_ids, dtype=np.int64) if all(
        -2**63 <= c < 2**63 for c in category_ids) else _too_large(category_ids, where)
    base, reason = class_base_of(cats, n_classes, class_base, where, source)
    category = _categories(cats - base, names, gt, where)
    check_xywh_finite(box, bboxes, where)
    dets = Detections(source, image, category, box, score)
    dets.reading = _reading(base, reason)
    return dets


# ---------------------------------------------------------------------------------------- helpers

def _reading(base: int | None, reason: str) -> dict:
    return {"detections_format": FORMAT, "class_base": base, "class_base_reason": reason}


def _too_large(values: list, where):
    i = next(i for i, v in enumerate(values) if not -2**63 <= v < 2**63)
    raise EvalInputError(f"{where(i)}: category_id {values[i]} is not a class id")


def _stem_id(stem: str) -> int | str:
    """Ultralytics' ``image_id`` of a file stem: the number when the stem is numeric."""
    if stem.isnumeric():
        try:
            return int(stem)
        except ValueError:  # numeric in Unicode's sense, not int()'s ('²')
            return stem
    return stem


def _basename(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _numeric_stems(gt: GroundTruth) -> tuple[dict[int, int], set[int]]:
    """``({number: image index}, numbers several images share)`` for numeric stems."""
    found: dict[int, int] = {}
    shared: set[int] = set()
    for k, name in enumerate(gt.image_names):
        key = _stem_id(PurePosixPath(_basename(name)).stem)
        if isinstance(key, int):
            if key in found:
                shared.add(key)
            found.setdefault(key, k)
    return found, shared


def _images(document: list, image_ids: list, gt: GroundTruth, where) -> np.ndarray:
    """The ground-truth image index of every entry (see the module doc for the matching); each
    distinct (file_name, image_id) is matched once."""
    numeric: tuple[dict[int, int], set[int]] | None = None
    keys = [(d.get("file_name"), i, type(i)) for d, i in zip(document, image_ids)]
    lookup: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        if key in lookup:
            continue
        file_name, image_id, kind = key
        if kind not in (int, str):
            raise EvalInputError(f"{where(i)}: image_id is {image_id!r}, not a file stem "
                                 "(a string, or a number for a numeric stem)")
        if file_name is not None:
            lookup[key] = _by_file_name(file_name, image_id, gt, where(i))
        elif kind is str:
            lookup[key] = _by_name(image_id, gt, f"{where(i)}: image_id {image_id!r}")
        else:
            if numeric is None:
                numeric = _numeric_stems(gt)
            lookup[key] = _by_number(image_id, numeric, gt, where(i))
    return np.fromiter(map(lookup.__getitem__, keys), np.int64, len(keys))


def _by_name(name: str, gt: GroundTruth, what: str) -> int:
    """A file name (path, basename or stem) -> image index, or an error naming ``what``."""
    index = gt.image_index_of_name
    base = _basename(name)
    for key in (name, base, PurePosixPath(base).stem if base else None):
        if key is not None and key in index:
            return index[key]
    hint = ""
    if {name, base, PurePosixPath(base).stem} & gt.ambiguous_names:
        hint = " (several ground-truth images share this name; give unique file names)"
    raise EvalInputError(f"{what} matches no image of the ground truth {gt.source} (by path, "
                         f"basename or stem){hint}")


def _by_file_name(file_name, image_id, gt: GroundTruth, where: str) -> int:
    if not isinstance(file_name, str):
        raise EvalInputError(f"{where}: file_name is {value_kind(file_name)}, not a string")
    found = _by_name(file_name, gt, f"{where}: file_name {file_name!r}")
    stem = PurePosixPath(_basename(file_name)).stem
    if image_id == stem or (isinstance(image_id, int)
                            and image_id in (_stem_id(stem), int(gt.image_ids[found]))):
        return found
    raise EvalInputError(f"{where}: image_id {image_id!r} contradicts file_name {file_name!r} "
                         f"(Ultralytics writes the file name's stem, {_stem_id(stem)!r}; the "
                         f"ground truth's id of that image is {int(gt.image_ids[found])})")


def _by_number(image_id: int, numeric: tuple[dict[int, int], set[int]], gt: GroundTruth,
               where: str) -> int:
    found, shared = numeric
    if image_id in found and image_id not in shared:
        return found[image_id]
    if image_id in shared:
        reason = "several ground-truth images have a numeric stem of that value"
    else:
        reason = "no ground-truth image has a file name whose stem is that number"
    raise EvalInputError(
        f"{where}: image_id {image_id} (without file_name, read as a numeric file stem): "
        f"{reason} ({gt.source}); if these are the ground truth's COCO image ids, read the file "
        "with --pred-format coco")


def _categories(index: np.ndarray, names: list[str] | None, gt: GroundTruth,
                where) -> np.ndarray:
    """COCO category id of every class index (0-based; already checked to be in range)."""
    if names is None:
        table = np.asarray(gt.category_ids, dtype=np.int64)
        return table[index]
    by_name, duplicated = category_ids_by_name(gt)
    lookup = np.zeros(len(names), np.int64)
    for k in np.unique(index).tolist():
        name = names[k]
        if name not in by_name or name in duplicated:
            i = int(np.flatnonzero(index == k)[0])
            reason = ("names several categories of the ground truth" if name in duplicated else
                      "is not a category of the ground truth")
            raise EvalInputError(f"{where(i)}: class {k} (obj.names: {name!r}) {reason} "
                                 f"(categories: {category_names_text(gt)})")
        lookup[k] = by_name[name]
    return lookup[index]
