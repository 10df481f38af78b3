"""Detection files of every backend, read into :class:`~deeplesion_cli.evaluation.data.Detections`.

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
    -out result.json < list.txt`` (darknet.md 8.1): a list of frames
    ``{"frame_id", "filename", "objects": [{"class_id", "name", "relative_coordinates":
    {"center_x", "center_y", "width", "height"}, "confidence"}]}``. Coordinates are the box centre
    and size **relative** to the original image's width and height; they become pixels through the
    ground truth's image size. Frames are matched to images by file name, never by ``frame_id``
    (a list line longer than 255 bytes shifts the ids, darknet.md 15).
``darknet-valid``
    ``darknet detector valid`` per-class files ``comp4_det_test_<class name>.txt`` (darknet.md 7),
    lines ``<image id> <score> <x1> <y1> <x2> <y2>``: corners in **1-based** pixels of the original
    image (darknet adds 1), the image id being the image's basename up to its first ``.``.

Bad input raises :class:`~deeplesion_cli.evaluation.data.EvalInputError` naming the file, the
entry (``result.json[12]``, ``result.json[3].objects[1]``) or line (``comp4_det_test_liver.txt:7``)
and the reason. Nothing is dropped silently. Scores are only required to be finite: some
detectors emit logits, so scores outside [0, 1] are kept.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path, PurePosixPath

import numpy as np

from deeplesion_cli import atomic
from deeplesion_cli.evaluation.data import Detections, EvalInputError, GroundTruth

FORMATS = ("coco", "darknet-json", "darknet-valid")

#: ``detector valid``'s default output prefix (``-out PREFIX``; darknet.md 7).
VALID_PREFIX = "comp4_det_test_"
VALID_SUFFIX = ".txt"

_INT = frozenset({int})
_NUMBER = frozenset({int, float})

_DARKNET_JSON_HINT = (
    "darknet writes file names and class names into this JSON without escaping, so a '\"' or '\\' "
    "in an image path or class name makes it unparsable, and a run that stopped early leaves it "
    "without its closing ']' (darknet.md 8.1, 15); keep paths and class names free of quotes and "
    "backslashes and re-run `darknet detector test`")


# --------------------------------------------------------------------------------------------- API

def detect_format(path) -> str:
    """Which of :data:`FORMATS` ``path`` holds.

    A directory, or a file named ``comp4_det_test_*.txt``: ``darknet-valid``. A json list whose
    first element has ``"objects"``: ``darknet-json``. A json list (possibly empty) whose first
    element has ``"image_id"``: ``coco``. Anything else raises :class:`EvalInputError`.
    """
    path = Path(path)
    if _is_valid_path(path):
        return "darknet-valid"
    return _format_of_document(_load_json(path, detecting=True), path)


def read_detections(path, gt: GroundTruth, fmt: str | None = None,
                    names: list[str] | None = None) -> Detections:
    """Read a detection file (or ``detector valid`` directory) against the ground truth ``gt``.

    ``fmt`` is one of :data:`FORMATS`, or None to detect it. ``names`` (obj.names, class index
    order, see :func:`read_names`) maps darknet-json ``class_id``s to class names; without it the
    objects' ``name`` field is used. Class names must equal a ground-truth category name.
    (darknet-valid files carry the class name in their file name and do not need ``names``.)

    Returns boxes ``[x, y, w, h]`` in 0-based continuous pixels of the ground-truth image.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise EvalInputError(f"{path}: unknown detection format {fmt!r} (known: "
                             f"{', '.join(FORMATS)})")
    if fmt == "darknet-valid" or (fmt is None and _is_valid_path(path)):
        return _read_darknet_valid(path, gt)
    document = _load_json(path, darknet_hint=(fmt == "darknet-json"), detecting=fmt is None)
    if fmt is None:
        fmt = _format_of_document(document, path)
    if fmt == "coco":
        return _read_coco(document, path, gt)
    if fmt == "darknet-json":
        return _read_darknet_json(document, path, gt, names)
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
    text = _read_text(path)
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

def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


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
                        + _DARKNET_JSON_HINT)
        elif detecting:
            message += ("; not a detection file: expected COCO results json, darknet's -out json, "
                        f"or a `detector valid` directory / {VALID_PREFIX}<class>{VALID_SUFFIX} "
                        "file")
        raise EvalInputError(message) from None


def _is_valid_path(path: Path) -> bool:
    name = path.name
    return path.is_dir() or (name.startswith(VALID_PREFIX) and name.endswith(VALID_SUFFIX))


def _format_of_document(document, path: Path) -> str:
    if isinstance(document, list):
        if not document:
            return "coco"
        first = document[0]
        if isinstance(first, dict):
            if "objects" in first:
                return "darknet-json"
            if "image_id" in first:
                return "coco"
            raise EvalInputError(
                f"{path}: unknown detection format: a JSON list whose first element has keys "
                f"{sorted(first)[:8]} (expected 'image_id' for COCO results or 'objects' for "
                "darknet's -out JSON)")
        raise EvalInputError(f"{path}: unknown detection format: a JSON list whose first element "
                             f"is {_kind(first)}, not an object")
    if isinstance(document, dict):
        hint = ""
        if "images" in document and "annotations" in document:
            hint = " (this looks like a COCO ground-truth file, not detections)"
        raise EvalInputError(f"{path}: unknown detection format: a JSON object with keys "
                             f"{sorted(document)[:8]}, not a list of detections{hint}")
    raise EvalInputError(f"{path}: unknown detection format: JSON {_kind(document)}, not a list "
                         "of detections")


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _first_bad_type(values: list, allowed: frozenset) -> int | None:
    """Index of the first value whose type is not in ``allowed`` (bool is never a number)."""
    if set(map(type, values)) <= allowed:
        return None
    return next(i for i, v in enumerate(values) if type(v) not in allowed)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _category_ids_by_name(gt: GroundTruth) -> tuple[dict[str, int], set[str]]:
    by_name: dict[str, int] = {}
    duplicated: set[str] = set()
    for cid, name in gt.categories:
        if name in by_name:
            duplicated.add(name)
        by_name.setdefault(name, cid)
    return by_name, duplicated


def _gt_category_names(gt: GroundTruth) -> str:
    return ", ".join(repr(n) for _, n in gt.categories) or "none"


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
    if not isinstance(document, list):
        raise EvalInputError(f"{path}: COCO results must be a JSON list, found {_kind(document)}")
    n = len(document)
    if n == 0:
        return Detections.empty(source)

    def where(i: int) -> str:
        return f"{path}[{i}]"

    keys = ("image_id", "category_id", "bbox", "score")
    try:
        image_ids = [d["image_id"] for d in document]
        category_ids = [d["category_id"] for d in document]
        bboxes = [d["bbox"] for d in document]
        scores = [d["score"] for d in document]
    except (KeyError, TypeError):
        for i, d in enumerate(document):
            if not isinstance(d, dict):
                raise EvalInputError(f"{where(i)}: {_kind(d)}, not a detection object") from None
            for key in keys:
                if key not in d:
                    raise EvalInputError(f"{where(i)}: no {key!r}") from None
        raise  # pragma: no cover

    for name, values in (("image_id", image_ids), ("category_id", category_ids)):
        bad = _first_bad_type(values, _INT)
        if bad is not None:
            raise EvalInputError(f"{where(bad)}: {name} is {values[bad]!r}, not an integer")
    bad = _first_bad_type(bboxes, frozenset({list}))
    if bad is not None:
        raise EvalInputError(f"{where(bad)}: bbox is {bboxes[bad]!r}, not a list [x, y, w, h]")
    lengths = np.fromiter(map(len, bboxes), np.int64, n)
    if (lengths != 4).any():
        bad = _first(lengths != 4)
        raise EvalInputError(f"{where(bad)}: bbox has {lengths[bad]} values, not 4 [x, y, w, h]")
    flat = list(chain.from_iterable(bboxes))
    bad = _first_bad_type(flat, _NUMBER)
    if bad is not None:
        raise EvalInputError(f"{where(bad // 4)}: bbox value {flat[bad]!r} is not a number")
    bad = _first_bad_type(scores, _NUMBER)
    if bad is not None:
        raise EvalInputError(f"{where(bad)}: score is {scores[bad]!r}, not a number")

    ids = _as_int64(image_ids, where)
    cats = _as_int64(category_ids, where)
    box = np.asarray(flat, dtype=np.float64).reshape(n, 4)
    score = np.asarray(scores, dtype=np.float64)

    image = np.searchsorted(gt.image_ids, ids)
    known = image < len(gt.image_ids)
    known[known] = gt.image_ids[image[known]] == ids[known]
    if not known.all():
        bad = _first(~known)
        raise EvalInputError(f"{where(bad)}: image_id {image_ids[bad]} is not an image of the "
                             f"ground truth {gt.source}")
    known_cat = np.isin(cats, np.asarray(gt.category_ids, dtype=np.int64))
    if not known_cat.all():
        bad = _first(~known_cat)
        raise EvalInputError(f"{where(bad)}: category_id {category_ids[bad]} is not a category of "
                             f"the ground truth (ids {gt.category_ids})")
    finite = np.isfinite(box).all(axis=1)
    if not finite.all():
        bad = _first(~finite)
        raise EvalInputError(f"{where(bad)}: bbox {bboxes[bad]} is not finite")
    negative = (box[:, 2] < 0) | (box[:, 3] < 0)
    if negative.any():
        bad = _first(negative)
        raise EvalInputError(f"{where(bad)}: bbox {bboxes[bad]} has a negative width or height "
                             "(expected [x, y, w, h], not corners)")
    finite = np.isfinite(score)
    if not finite.all():
        bad = _first(~finite)
        raise EvalInputError(f"{where(bad)}: score is {scores[bad]!r}")
    return Detections(source, image.astype(np.int64), cats, box, score)


# ----------------------------------------------------------------------------------- darknet json

def _image_of_filename(filename: str, gt: GroundTruth) -> int | None:
    """Match darknet's ``filename`` (the path as read from the list) to a ground-truth image: the
    full path, then its basename, then the basename without its extension."""
    index = gt.image_index_of_name
    if filename in index:
        return index[filename]
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if base in index:
        return index[base]
    return index.get(PurePosixPath(base).stem) if base else None


def _read_darknet_json(document, path: Path, gt: GroundTruth,
                       names: list[str] | None) -> Detections:
    """darknet ``-out`` JSON: relative centre/size -> ``[x, y, w, h]`` 0-based pixels with the
    ground truth's image width ``W`` and height ``H``: ``x = (cx - w / 2) * W``, ``w = w * W``."""
    source = str(path)
    if not isinstance(document, list):
        raise EvalInputError(f"{path}: darknet -out JSON must be a list of frames, found "
                             f"{_kind(document)}")
    frame_of: list[int] = []
    object_of: list[int] = []
    image_of: list[int] = []
    rows: list[tuple] = []
    classes: list = []
    class_key = "class_id" if names is not None else "name"
    for i, frame in enumerate(document):
        where = f"{path}[{i}]"
        if not isinstance(frame, dict):
            raise EvalInputError(f"{where}: {_kind(frame)}, not a frame object")
        if "filename" not in frame or "objects" not in frame:
            missing = "filename" if "filename" not in frame else "objects"
            raise EvalInputError(f"{where}: no {missing!r} (expected darknet's "
                                 "{\"frame_id\", \"filename\", \"objects\"})")
        filename, objects = frame["filename"], frame["objects"]
        if not isinstance(filename, str):
            raise EvalInputError(f"{where}: filename is {filename!r}, not a string")
        if not isinstance(objects, list):
            raise EvalInputError(f"{where}: objects is {_kind(objects)}, not a list")
        image = _image_of_filename(filename, gt)
        if image is None:
            hint = ""
            if len(filename.encode()) >= 255:
                hint = (" (darknet reads list lines with a 256-byte buffer, so a longer path is "
                        "split into several inputs; keep image paths under 255 bytes, "
                        "darknet.md 15)")
            base = filename.replace("\\", "/").rsplit("/", 1)[-1]
            if {filename, base, PurePosixPath(base).stem} & gt.ambiguous_names:
                hint = " (several ground-truth images share this name; give unique file names)"
            raise EvalInputError(f"{where}: filename {filename!r} matches no image of the ground "
                                 f"truth {gt.source} (by path, basename or stem){hint}")
        if not objects:
            continue
        width, height = gt.image_sizes[image]
        if not (width > 0 and height > 0):
            raise EvalInputError(
                f"{where}: the ground truth {gt.source} does not give the width and height of "
                f"{gt.image_names[image]!r}, needed to turn darknet's relative coordinates into "
                "pixels")
        for j, obj in enumerate(objects):
            try:
                rc = obj["relative_coordinates"]
                rows.append((rc["center_x"], rc["center_y"], rc["width"], rc["height"],
                             obj["confidence"]))
                classes.append(obj[class_key])
            except (KeyError, TypeError):
                _locate_bad_object(obj, f"{where}.objects[{j}]", class_key)
                raise  # pragma: no cover
            frame_of.append(i)
            object_of.append(j)
            image_of.append(image)

    n = len(rows)
    if n == 0:
        return Detections.empty(source)

    def where(k: int) -> str:
        return f"{path}[{frame_of[k]}].objects[{object_of[k]}]"

    fields = ("center_x", "center_y", "width", "height", "confidence")
    flat = list(chain.from_iterable(rows))
    bad = _first_bad_type(flat, _NUMBER)
    if bad is not None:
        raise EvalInputError(f"{where(bad // 5)}: {fields[bad % 5]} is {flat[bad]!r}, not a "
                             "number")
    category = np.asarray(_darknet_categories(classes, names, gt, where), dtype=np.int64)
    values = np.asarray(flat, dtype=np.float64).reshape(n, 5)
    finite = np.isfinite(values)
    if not finite.all():
        bad = _first(~finite.all(axis=1))
        column = int(np.flatnonzero(~finite[bad])[0])
        raise EvalInputError(f"{where(bad)}: {fields[column]} is {rows[bad][column]!r}")
    negative = (values[:, 2] < 0) | (values[:, 3] < 0)
    if negative.any():
        bad = _first(negative)
        raise EvalInputError(f"{where(bad)}: negative width or height "
                             f"({rows[bad][2]!r}, {rows[bad][3]!r})")
    image = np.asarray(image_of, dtype=np.int64)
    size = gt.image_sizes[image]  # (n, 2) W, H
    box = np.empty((n, 4))
    box[:, 2] = values[:, 2] * size[:, 0]
    box[:, 3] = values[:, 3] * size[:, 1]
    box[:, 0] = values[:, 0] * size[:, 0] - box[:, 2] / 2.0
    box[:, 1] = values[:, 1] * size[:, 1] - box[:, 3] / 2.0
    return Detections(source, image, category, box, values[:, 4].copy())


def _locate_bad_object(obj, where: str, class_key: str) -> None:
    if not isinstance(obj, dict):
        raise EvalInputError(f"{where}: {_kind(obj)}, not an object") from None
    for key in ("relative_coordinates", "confidence", class_key):
        if key not in obj:
            extra = " (give obj.names to use class_id)" if key == "name" else ""
            raise EvalInputError(f"{where}: no {key!r}{extra}") from None
    rc = obj["relative_coordinates"]
    if not isinstance(rc, dict):
        raise EvalInputError(f"{where}: relative_coordinates is {_kind(rc)}, not an "
                             "object") from None
    for key in ("center_x", "center_y", "width", "height"):
        if key not in rc:
            raise EvalInputError(f"{where}: relative_coordinates has no {key!r}") from None


def _darknet_categories(classes: list, names: list[str] | None, gt: GroundTruth,
                        where) -> list[int]:
    """COCO category id of each object, from ``class_id`` through ``names`` or from ``name``."""
    by_name, duplicated = _category_ids_by_name(gt)
    if names is not None:
        bad = _first_bad_type(classes, _INT)
        if bad is not None:
            raise EvalInputError(f"{where(bad)}: class_id is {classes[bad]!r}, not an integer")
    else:
        bad = _first_bad_type(classes, frozenset({str}))
        if bad is not None:
            raise EvalInputError(f"{where(bad)}: name is {classes[bad]!r}, not a string")
    lookup: dict = {}
    for key in set(classes):
        if names is not None:
            if not 0 <= key < len(names):
                k = classes.index(key)
                raise EvalInputError(f"{where(k)}: class_id {key} is outside the {len(names)} "
                                     f"class names of obj.names (0..{len(names) - 1})")
            name, what = names[key], f"class_id {key} (obj.names: {names[key]!r})"
        else:
            name, what = key, f"name {key!r}"
        if name not in by_name or name in duplicated:
            k = classes.index(key)
            reason = ("names several categories of the ground truth" if name in duplicated else
                      "is not a category of the ground truth")
            raise EvalInputError(f"{where(k)}: {what} {reason} (categories: "
                                 f"{_gt_category_names(gt)})")
        lookup[key] = by_name[name]
    return [lookup[c] for c in classes]


# ---------------------------------------------------------------------------------- darknet valid

def darknet_id(path) -> str:
    """darknet's name for a file (``basecfg``): the basename up to its first ``.`` (darknet.md
    3.3). Image ids in ``detector valid`` output and weights file names are made this way."""
    return str(path).replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]


def _read_darknet_valid(path: Path, gt: GroundTruth) -> Detections:
    """``detector valid`` files: 1-based pixel corners ``x1 y1 x2 y2`` -> 0-based ``[x, y, w, h]``
    = ``[x1 - 1, y1 - 1, x2 - x1, y2 - y1]``."""
    source = str(path)
    if path.is_dir():
        files = [p for p in path.iterdir()
                 if p.name.startswith(VALID_PREFIX) and p.name.endswith(VALID_SUFFIX)
                 and not p.is_dir()]
        if not files:
            raise EvalInputError(f"{path}: no {VALID_PREFIX}<class>{VALID_SUFFIX} files (the "
                                 "per-class output of `darknet detector valid`)")
    elif path.exists():
        files = [path]
    else:
        raise EvalInputError(f"{path}: cannot read: no such file or directory")

    by_name, duplicated = _category_ids_by_name(gt)
    order = {cid: k for k, cid in enumerate(gt.category_ids)}
    image_ids: dict[str, int] = {}
    ambiguous: set[str] = set()
    for k, name in enumerate(gt.image_names):
        key = darknet_id(name)
        if key in image_ids:
            ambiguous.add(key)
        image_ids.setdefault(key, k)

    parsed = []
    for file in files:
        name = file.name
        if not (name.startswith(VALID_PREFIX) and name.endswith(VALID_SUFFIX)):
            raise EvalInputError(f"{file}: not named {VALID_PREFIX}<class>{VALID_SUFFIX}, so "
                                 "its class is unknown")
        class_name = name[len(VALID_PREFIX):-len(VALID_SUFFIX)]
        if class_name not in by_name or class_name in duplicated:
            if not _read_text(file).strip():
                continue  # a class the ground truth lacks, with no detection to lose
            reason = ("names several categories of the ground truth" if class_name in duplicated
                      else "is not a category of the ground truth")
            raise EvalInputError(f"{file}: class {class_name!r} (from the file name) {reason} "
                                 f"(categories: {_gt_category_names(gt)})")
        _, image, values = _parse_valid_file(file, gt, image_ids, ambiguous)
        parsed.append((order[by_name[class_name]], str(file), by_name[class_name], image, values))
    parsed.sort(key=lambda p: (p[0], p[1]))
    if not parsed:
        return Detections.empty(source)
    image = np.concatenate([p[3] for p in parsed])
    values = np.concatenate([p[4] for p in parsed]).reshape(-1, 5)
    category = np.concatenate([np.full(len(p[3]), p[2], np.int64) for p in parsed])
    box = np.empty((len(image), 4))
    box[:, 0] = values[:, 1] - 1.0
    box[:, 1] = values[:, 2] - 1.0
    box[:, 2] = values[:, 3] - values[:, 1]
    box[:, 3] = values[:, 4] - values[:, 2]
    return Detections(source, image, category, box, values[:, 0].copy())


def _parse_valid_file(file: Path, gt: GroundTruth, image_ids: dict[str, int],
                      ambiguous: set[str]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(line numbers, image indices, (n, 5) score x1 y1 x2 y2 as written) of one class file."""
    text = _read_text(file)
    line_numbers: list[int] = []
    ids: list[str] = []
    fields: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            # an image id with spaces (a path with spaces) still ends in five numbers
            parts = line.strip().rsplit(None, 5)
            if len(parts) != 6 or parts[0] not in image_ids:
                raise EvalInputError(
                    f"{file}:{number}: expected 6 fields '<image id> <score> <x1> <y1> <x2> <y2>', "
                    f"found {len(line.split())}: {line.strip()[:120]!r}")
        line_numbers.append(number)
        ids.append(parts[0])
        fields.extend(parts[1:])
    n = len(ids)
    if n == 0:
        return [], np.zeros(0, np.int64), np.zeros((0, 5))
    try:
        values = np.asarray(fields, dtype=np.float64).reshape(n, 5)
    except ValueError:
        for k, field in enumerate(fields):
            try:
                float(field)
            except ValueError:
                raise EvalInputError(f"{file}:{line_numbers[k // 5]}: "
                                     f"{('score', 'x1', 'y1', 'x2', 'y2')[k % 5]} {field!r} is "
                                     "not a number") from None
        raise  # pragma: no cover
    lookup = {}
    for key in set(ids):
        if key not in image_ids or key in ambiguous:
            k = ids.index(key)
            reason = ("matches several images of the ground truth" if key in ambiguous else
                      "is not an image of the ground truth")
            raise EvalInputError(f"{file}:{line_numbers[k]}: image id {key!r} {reason} "
                                 f"{gt.source} (darknet's image id is the file name up to its "
                                 "first '.')")
        lookup[key] = image_ids[key]
    finite = np.isfinite(values)
    if not finite.all():
        bad = _first(~finite.all(axis=1))
        raise EvalInputError(f"{file}:{line_numbers[bad]}: not finite: "
                             f"{' '.join(fields[5 * bad:5 * bad + 5])}")
    image = np.fromiter((lookup[k] for k in ids), np.int64, n)
    # darknet clips x1, y1 to >= 1 and x2, y2 to <= the image size separately (darknet.md 7), so
    # a box wholly beyond the right or bottom edge comes out as e.g. "129 1 128 1" on a 128-px
    # image. Such a box becomes a zero-width box on the edge: still a detection (a false
    # positive), as in darknet's own evaluation. Any other reversed box is an error.
    size = gt.image_sizes[image]
    for lo, hi, extent in ((1, 3, size[:, 0]), (2, 4, size[:, 1])):
        edge = (values[:, hi] < values[:, lo]) & (extent > 0) & (values[:, hi] >= extent)
        values[edge, lo] = values[edge, hi]
    reversed_ = (values[:, 3] < values[:, 1]) | (values[:, 4] < values[:, 2])
    if reversed_.any():
        bad = _first(reversed_)
        axis = "x2 < x1" if values[bad, 3] < values[bad, 1] else "y2 < y1"
        raise EvalInputError(f"{file}:{line_numbers[bad]}: {axis} "
                             f"({' '.join(fields[5 * bad + 1:5 * bad + 5])}; expected "
                             "x1 y1 x2 y2 corners)")
    return line_numbers, image, values

