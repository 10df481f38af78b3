"""darknet's detection outputs, read into :class:`~deeplesion_cli.formats.groundtruth.Detections`.

Both become the evaluator's convention: boxes ``[x, y, w, h]`` in **0-based continuous pixels**
of the ground-truth image, ``image`` an index into ``GroundTruth.image_ids``, ``category`` a COCO
category id of the ground truth (the format overview is in
:mod:`deeplesion_cli.formats.detections`).

``darknet-json`` (:func:`read_darknet_json`)
    AlexeyAB / hank-ai ``detector test ... -out result.json``: frames of objects whose box centre
    and size are **relative** to the image's width and height; frames are matched to ground-truth
    images by file name (docs/darknet.md 8.1, 15).
``darknet-valid`` (:func:`read_darknet_valid`)
    ``detector valid``'s per-class ``comp4_det_test_<class name>.txt`` files: ``<image id> <score>
    <x1> <y1> <x2> <y2>``, corners in **1-based** pixels (docs/darknet.md 7).

Bad input raises :class:`~deeplesion_cli.formats.groundtruth.EvalInputError` naming the file and
the entry or line.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path, PurePosixPath

import numpy as np

from deeplesion_cli.formats.detection_checks import (INT_TYPES, NUMBER_TYPES, category_ids_by_name,
                                                     category_names_text, first_bad_type,
                                                     first_true, read_text, value_kind)
from deeplesion_cli.formats.groundtruth import Detections, EvalInputError, GroundTruth

#: ``detector valid``'s default output prefix (``-out PREFIX``; docs/darknet.md 7).
VALID_PREFIX = "comp4_det_test_"
VALID_SUFFIX = ".txt"

#: What to do about a darknet -out JSON that does not parse (added to the parse error).
DARKNET_JSON_HINT = (
    "darknet writes file names and class names into this JSON without escaping, so a '\"' or '\\' "
    "in an image path or class name makes it unparsable, and a run that stopped early leaves it "
    "without its closing ']' (docs/darknet.md 8.1, 15); keep paths and class names free of "
    "quotes and backslashes and re-run `darknet detector test`")


def is_valid_path(path: Path) -> bool:
    """A folder, or a file named like ``detector valid``'s output: read as ``darknet-valid``."""
    name = path.name
    return path.is_dir() or (name.startswith(VALID_PREFIX) and name.endswith(VALID_SUFFIX))


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


def read_darknet_json(document, path: Path, gt: GroundTruth,
                      names: list[str] | None) -> Detections:
    """darknet ``-out`` JSON: relative centre/size -> ``[x, y, w, h]`` 0-based pixels with the
    ground truth's image width ``W`` and height ``H``: ``x = (cx - w / 2) * W``, ``w = w * W``."""
    source = str(path)
    if not isinstance(document, list):
        raise EvalInputError(f"{path}: darknet -out JSON must be a list of frames, found "
                             f"{value_kind(document)}")
    frame_of: list[int] = []
    object_of: list[int] = []
    image_of: list[int] = []
    rows: list[tuple] = []
    classes: list = []
    class_key = "class_id" if names is not None else "name"
    for i, frame in enumerate(document):
        where = f"{path}[{i}]"
        if not isinstance(frame, dict):
            raise EvalInputError(f"{where}: {value_kind(frame)}, not a frame object")
        if "filename" not in frame or "objects" not in frame:
            missing = "filename" if "filename" not in frame else "objects"
            raise EvalInputError(f"{where}: no {missing!r} (expected darknet's "
                                 "{\"frame_id\", \"filename\", \"objects\"})")
        filename, objects = frame["filename"], frame["objects"]
        if not isinstance(filename, str):
            raise EvalInputError(f"{where}: filename is {filename!r}, not a string")
        if not isinstance(objects, list):
            raise EvalInputError(f"{where}: objects is {value_kind(objects)}, not a list")
        image = _image_of_filename(filename, gt)
        if image is None:
            hint = ""
            if len(filename.encode()) >= 255:
                hint = (" (darknet reads list lines with a 256-byte buffer, so a longer path is "
                        "split into several inputs; keep image paths under 255 bytes, "
                        "docs/darknet.md 15)")
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
    bad = first_bad_type(flat, NUMBER_TYPES)
    if bad is not None:
        raise EvalInputError(f"{where(bad // 5)}: {fields[bad % 5]} is {flat[bad]!r}, not a "
                             "number")
    category = np.asarray(_darknet_categories(classes, names, gt, where), dtype=np.int64)
    values = np.asarray(flat, dtype=np.float64).reshape(n, 5)
    finite = np.isfinite(values)
    if not finite.all():
        bad = first_true(~finite.all(axis=1))
        column = int(np.flatnonzero(~finite[bad])[0])
        raise EvalInputError(f"{where(bad)}: {fields[column]} is {rows[bad][column]!r}")
    negative = (values[:, 2] < 0) | (values[:, 3] < 0)
    if negative.any():
        bad = first_true(negative)
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
        raise EvalInputError(f"{where}: {value_kind(obj)}, not an object") from None
    for key in ("relative_coordinates", "confidence", class_key):
        if key not in obj:
            extra = " (give obj.names to use class_id)" if key == "name" else ""
            raise EvalInputError(f"{where}: no {key!r}{extra}") from None
    rc = obj["relative_coordinates"]
    if not isinstance(rc, dict):
        raise EvalInputError(f"{where}: relative_coordinates is {value_kind(rc)}, not an "
                             "object") from None
    for key in ("center_x", "center_y", "width", "height"):
        if key not in rc:
            raise EvalInputError(f"{where}: relative_coordinates has no {key!r}") from None


def _darknet_categories(classes: list, names: list[str] | None, gt: GroundTruth,
                        where) -> list[int]:
    """COCO category id of each object, from ``class_id`` through ``names`` or from ``name``."""
    by_name, duplicated = category_ids_by_name(gt)
    if names is not None:
        bad = first_bad_type(classes, INT_TYPES)
        if bad is not None:
            raise EvalInputError(f"{where(bad)}: class_id is {classes[bad]!r}, not an integer")
    else:
        bad = first_bad_type(classes, frozenset({str}))
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
                                 f"{category_names_text(gt)})")
        lookup[key] = by_name[name]
    return [lookup[c] for c in classes]


# ---------------------------------------------------------------------------------- darknet valid

def darknet_id(path) -> str:
    """darknet's name for a file (``basecfg``): the basename up to its first ``.``
    (docs/darknet.md 3.3). Image ids in ``detector valid`` output and weights file names are made
    this way."""
    return str(path).replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]


def read_darknet_valid(path: Path, gt: GroundTruth) -> Detections:
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

    by_name, duplicated = category_ids_by_name(gt)
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
            if not read_text(file).strip():
                continue  # a class the ground truth lacks, with no detection to lose
            reason = ("names several categories of the ground truth" if class_name in duplicated
                      else "is not a category of the ground truth")
            raise EvalInputError(f"{file}: class {class_name!r} (from the file name) {reason} "
                                 f"(categories: {category_names_text(gt)})")
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
    text = read_text(file)
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
        bad = first_true(~finite.all(axis=1))
        raise EvalInputError(f"{file}:{line_numbers[bad]}: not finite: "
                             f"{' '.join(fields[5 * bad:5 * bad + 5])}")
    image = np.fromiter((lookup[k] for k in ids), np.int64, n)
    # darknet clips x1, y1 to >= 1 and x2, y2 to <= the image size separately (docs/darknet.md
    # 7), so a box wholly beyond the right or bottom edge comes out as e.g. "129 1 128 1" on a
    # 128-px image, and one wholly beyond the left or top edge as "1 1 -31 128" (letterboxed
    # non-square networks put boxes there). Such a box becomes a zero-width box on the edge:
    # still a detection (a false positive), as in darknet's own evaluation. Any other reversed
    # box is an error.
    size = gt.image_sizes[image]
    for lo, hi, extent in ((1, 3, size[:, 0]), (2, 4, size[:, 1])):
        edge = (values[:, hi] < values[:, lo]) & (extent > 0) & (values[:, hi] >= extent)
        values[edge, lo] = values[edge, hi]
        edge = (values[:, hi] < values[:, lo]) & (values[:, lo] == 1) & (values[:, hi] < 1)
        values[edge, hi] = values[edge, lo]
    reversed_ = (values[:, 3] < values[:, 1]) | (values[:, 4] < values[:, 2])
    if reversed_.any():
        bad = first_true(reversed_)
        axis = "x2 < x1" if values[bad, 3] < values[bad, 1] else "y2 < y1"
        raise EvalInputError(f"{file}:{line_numbers[bad]}: {axis} "
                             f"({' '.join(fields[5 * bad + 1:5 * bad + 5])}; expected "
                             "x1 y1 x2 y2 corners)")
    return line_numbers, image, values

