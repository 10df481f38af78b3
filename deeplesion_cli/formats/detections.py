"""Detection files of every backend, read into
:class:`~deeplesion_cli.formats.groundtruth.Detections`.

Whatever a file holds, what comes back is the evaluator's convention: boxes ``[x, y, w, h]`` in
**0-based continuous pixels** of the ground-truth image (``w = x2 - x1``, COCO's and torchvision's
convention), ``image`` an index into ``GroundTruth.image_ids``, ``category`` a COCO category id of
the ground truth, ``score`` as the detector gave it. Detections keep file order.

Formats (:data:`FORMATS`):

``coco``
    COCO results json, ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``,
    ``bbox`` in 0-based pixels. What ``lesion predict`` writes (:func:`write_coco_results`).
``darknet-json``
    AlexeyAB / hank-ai ``darknet detector test ... -ext_output -dont_show -thresh 0.005
    -out result.json < list.txt`` (docs/darknet.md 8.1): a list of frames
    ``{"frame_id", "filename", "objects": [{"class_id", "name", "relative_coordinates":
    {"center_x", "center_y", "width", "height"}, "confidence"}]}``. Coordinates are the box centre
    and size **relative** to the original image's width and height; they become pixels through the
    ground truth's image size. Frames are matched to images by file name, never by ``frame_id``
    (a list line longer than 255 bytes shifts the ids, docs/darknet.md 15).
``darknet-valid``
    ``darknet detector valid`` per-class files ``comp4_det_test_<class name>.txt``
    (docs/darknet.md 7), lines ``<image id> <score> <x1> <y1> <x2> <y2>``: corners in **1-based**
    pixels of the original image (darknet adds 1), the image id being the image's basename up to
    its first ``.``.
``ultralytics``
    Ultralytics YOLO's ``predictions.json`` (``yolo detect val ... save_json=True``): COCO
    results whose ``image_id`` is the image file's stem (a string, or a number for a numeric
    stem), with ``file_name`` (8.3+) and ``category_id`` = class index + 0 or 1 (the base is
    detected from the file or given); ``bbox`` ``[x, y, w, h]`` in 0-based pixels.

This module reads ``coco`` and dispatches; the two darknet readers are in
:mod:`deeplesion_cli.formats.darknet_results`, the Ultralytics one in
:mod:`deeplesion_cli.formats.ultralytics`.

Bad input raises :class:`~deeplesion_cli.formats.groundtruth.EvalInputError` naming the file, the
entry (``result.json[12]``, ``result.json[3].objects[1]``) or line (``comp4_det_test_liver.txt:7``)
and the reason. Nothing is dropped silently. Scores are only required to be finite: some
detectors emit logits, so scores outside [0, 1] are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deeplesion_cli import atomic
from deeplesion_cli.formats.darknet_results import (DARKNET_JSON_HINT, VALID_PREFIX, VALID_SUFFIX,
                                                    is_valid_path, read_darknet_json,
                                                    read_darknet_valid)
from deeplesion_cli.formats.detection_checks import (INT_TYPES, check_xywh_finite, finite_scores,
                                                     first_bad_type, first_true, read_text,
                                                     result_columns, value_kind, xywh_boxes)
from deeplesion_cli.formats.groundtruth import Detections, EvalInputError, GroundTruth
from deeplesion_cli.formats.ultralytics import looks_like_ultralytics, read_ultralytics

FORMATS = ("coco", "darknet-json", "darknet-valid", "ultralytics")


# --------------------------------------------------------------------------------------------- API

def detect_format(path) -> str:
    """Which of :data:`FORMATS` ``path`` holds.

    A directory, or a file named ``comp4_det_test_*.txt``: ``darknet-valid``. A json list whose
    first element has ``"objects"``: ``darknet-json``. A json list (possibly empty) whose first
    element has ``"image_id"``: ``ultralytics`` when that ``image_id`` is a string or the element
    has ``"file_name"``, else ``coco``. Anything else raises :class:`EvalInputError`.
    """
    path = Path(path)
    if is_valid_path(path):
        return "darknet-valid"
    return _format_of_document(_load_json(path, detecting=True), path)


def read_detections(path, gt: GroundTruth, fmt: str | None = None,
                    names: list[str] | None = None, class_base: int | None = None) -> Detections:
    """Read a detection file (or ``detector valid`` directory) against the ground truth ``gt``.

    ``fmt`` is one of :data:`FORMATS`, or None to detect it. ``names`` (obj.names, class index
    order, see :func:`read_names`) maps darknet-json ``class_id``s to class names; without it the
    objects' ``name`` field is used. Class names must equal a ground-truth category name.
    (darknet-valid files carry the class name in their file name and do not need ``names``.)
    ``ultralytics``: class index ``category_id - class_base`` is ``names[index]`` (without
    ``names``, the ground truth's index-th category); ``class_base`` (0 or 1) None detects it,
    and the detections' ``reading`` says which base was used and why.

    Returns boxes ``[x, y, w, h]`` in 0-based continuous pixels of the ground-truth image.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise EvalInputError(f"{path}: unknown detection format {fmt!r} (known: "
                             f"{', '.join(FORMATS)})")
    if fmt == "darknet-valid" or (fmt is None and is_valid_path(path)):
        return read_darknet_valid(path, gt)
    document = _load_json(path, darknet_hint=(fmt == "darknet-json"), detecting=fmt is None)
    if fmt is None:
        fmt = _format_of_document(document, path)
    if fmt == "coco":
        return _read_coco(document, path, gt)
    if fmt == "darknet-json":
        return read_darknet_json(document, path, gt, names)
    if fmt == "ultralytics":
        return read_ultralytics(document, path, gt, names, class_base)
    raise EvalInputError(f"{path}: format {fmt!r} is not a json format")  # pragma: no cover


def write_coco_results(path, gt: GroundTruth, dets: Detections) -> None:
    """Write ``dets`` as a COCO results json (atomically), the inverse of the ``coco`` reader.

    One ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection, in order;
    ``image_id`` is ``gt.image_ids[dets.image]``, ``bbox`` 0-based continuous pixels. Floats are
    written with Python's shortest round-trip repr, so reading the file back gives equal arrays.
    """
    n = len(dets)
    image = np.asarray(dets.image, dtype=np.int64).reshape(-1)
    box = np.asarray(dets.box_xywh, dtype=np.float64).reshape(-1, 4)
    score = np.asarray(dets.score, dtype=np.float64).reshape(-1)
    category = np.asarray(dets.category, dtype=np.int64).reshape(-1)
    if not (len(image) == len(category) == len(box) == n):
        raise ValueError("detections arrays have different lengths")
    if n and (image.min() < 0 or image.max() >= gt.n_images):
        raise ValueError("detections refer to an image index outside the ground truth")
    if n and not np.isin(category, np.asarray(gt.category_ids, dtype=np.int64)).all():
        raise ValueError("detections hold a category id that is not in the ground truth")
    if not (np.isfinite(box).all() and np.isfinite(score).all()):
        raise ValueError("detections hold NaN or infinite boxes or scores; JSON cannot carry them")
    ids = gt.image_ids[image].tolist()
    cats = category.tolist()
    boxes = box.tolist()
    scores = score.tolist()
    lines = [
        f'{{"image_id": {i}, "category_id": {c}, "bbox": [{b[0]!r}, {b[1]!r}, {b[2]!r}, '
        f'{b[3]!r}], "score": {s!r}}}'
        for i, c, b, s in zip(ids, cats, boxes, scores)]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    atomic.write_text(Path(path), text)


def read_names(path) -> list[str]:
    """obj.names: one class name per line, in class-index order (line 1 is class 0).

    ``\\r\\n`` line ends are accepted and blank lines at the end are ignored; a blank line between
    names would shift every later class index, so it is an error. Names are not otherwise trimmed
    (darknet does not trim them either).
    """
    path = Path(path)
    text = read_text(path)
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise EvalInputError(f"{path}:{number}: blank line in a names file (it would shift "
                                 "the class index of every later name)")
    if not lines:
        raise EvalInputError(f"{path}: no class names")
    return lines


# ---------------------------------------------------------------------------------------- helpers

def _load_json(path: Path, darknet_hint: bool = False, detecting: bool = False):
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise EvalInputError(f"{path}: is a directory, not a detection file") from None
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        message = f"{path}: not valid JSON ({exc})"
        if darknet_hint or b'"objects"' in data or b'"relative_coordinates"' in data:
            message += ("; it looks like darknet's `detector test -out` output: "
                        + DARKNET_JSON_HINT)
        elif detecting:
            message += ("; not a detection file: expected COCO results json, darknet's -out json, "
                        f"or a `detector valid` directory / {VALID_PREFIX}<class>{VALID_SUFFIX} "
                        "file")
        raise EvalInputError(message) from None


def _format_of_document(document, path: Path) -> str:
    if isinstance(document, list):
        if not document:
            return "coco"
        first = document[0]
        if isinstance(first, dict):
            if "objects" in first:
                return "darknet-json"
            if "image_id" in first:
                return "ultralytics" if looks_like_ultralytics(first) else "coco"
            raise EvalInputError(
                f"{path}: unknown detection format: a JSON list whose first element has keys "
                f"{sorted(first)[:8]} (expected 'image_id' for COCO results or Ultralytics' "
                "predictions.json, or 'objects' for darknet's -out JSON)")
        raise EvalInputError(f"{path}: unknown detection format: a JSON list whose first element "
                             f"is {value_kind(first)}, not an object")
    if isinstance(document, dict):
        hint = ""
        if "images" in document and "annotations" in document:
            hint = " (this looks like a COCO ground-truth file, not detections)"
        raise EvalInputError(f"{path}: unknown detection format: a JSON object with keys "
                             f"{sorted(document)[:8]}, not a list of detections{hint}")
    raise EvalInputError(f"{path}: unknown detection format: JSON {value_kind(document)}, not a "
                         "list of detections")


def _as_int64(values: list, where) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        i = next(i for i, v in enumerate(values) if not -2**63 <= v < 2**63)
        raise EvalInputError(f"{where(i)}: {values[i]} is not an id of the ground truth") from None


# ------------------------------------------------------------------------------------------- coco

def _read_coco(document, path: Path, gt: GroundTruth) -> Detections:
    """COCO results: ``bbox`` ``[x, y, w, h]`` 0-based pixels, kept as is."""
    source = str(path)
    image_ids, category_ids, bboxes, scores = result_columns(document, path)
    if not image_ids:
        return Detections.empty(source)

    def where(i: int) -> str:
        return f"{path}[{i}]"

    for name, values in (("image_id", image_ids), ("category_id", category_ids)):
        bad = first_bad_type(values, INT_TYPES)
        if bad is not None:
            hint = ""
            if name == "image_id" and isinstance(values[bad], str):
                hint = (" (an image name as image_id is what Ultralytics' predictions.json "
                        "holds: read it with --pred-format ultralytics, or auto)")
            raise EvalInputError(f"{where(bad)}: {name} is {values[bad]!r}, not an "
                                 f"integer{hint}")
    box = xywh_boxes(bboxes, where)
    score = finite_scores(scores, where)
    ids = _as_int64(image_ids, where)
    cats = _as_int64(category_ids, where)

    image = np.searchsorted(gt.image_ids, ids)
    known = image < len(gt.image_ids)
    known[known] = gt.image_ids[image[known]] == ids[known]
    if not known.all():
        bad = first_true(~known)
        raise EvalInputError(f"{where(bad)}: image_id {image_ids[bad]} is not an image of the "
                             f"ground truth {gt.source}")
    known_cat = np.isin(cats, np.asarray(gt.category_ids, dtype=np.int64))
    if not known_cat.all():
        bad = first_true(~known_cat)
        raise EvalInputError(f"{where(bad)}: category_id {category_ids[bad]} is not a category of "
                             f"the ground truth (ids {gt.category_ids})")
    check_xywh_finite(box, bboxes, where)
    return Detections(source, image.astype(np.int64), cats, box, score)
