"""darknet / YOLO files: label ``.txt`` beside each image, list files, obj.data, obj.names, and
Ultralytics' data.yaml.

Label lines are ``<class> <cx> <cy> <w> <h>``: a 0-based class index and the box centre and size
relative to the image width and height (docs/darknet.md 3.2). An image without lesions gets an
empty label file (a negative image).
"""

from __future__ import annotations

import json
from pathlib import Path

#: Substrings that pjreddie's darknet rewrites to find label files (``find_replace`` on the whole
#: path, docs/darknet.md 3.2): an image path containing one of them gets the wrong label path.
DARKNET_REWRITTEN_WORDS = ("images", "JPEGImages", "raw")
#: darknet reads list lines with a 256-byte buffer in ``detector test`` (docs/darknet.md 15).
DARKNET_MAX_PATH_BYTES = 255


def label_line(class_index: int, box_xyxy_px, width_px: int, height_px: int) -> str:
    """One label line from a pixel box ``(x1, y1, x2, y2)`` on an image of the given size."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy_px)
    cx = (x1 + x2) / 2.0 / width_px
    cy = (y1 + y2) / 2.0 / height_px
    w = (x2 - x1) / width_px
    h = (y2 - y1) / height_px
    return f"{int(class_index)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def label_text(lines: list[str]) -> str:
    """A label file's text: one line per box, each ended by ``\\n``; empty for no boxes."""
    return "".join(line + "\n" for line in lines)


def parse_label_text(text: str, source: str = "label") -> list[tuple[int, float, float, float, float]]:
    """Read label lines back as (class, cx, cy, w, h); raises ValueError naming the line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise ValueError(f"{source}:{number}: expected 5 fields, found {len(parts)}")
        try:
            out.append((int(parts[0]), *(float(p) for p in parts[1:])))
        except ValueError:
            raise ValueError(f"{source}:{number}: cannot parse {line!r}") from None
    return out


def names_text(names: list[str]) -> str:
    """obj.names: one class name per line, no blank lines."""
    return "".join(n + "\n" for n in names)


def obj_data_text(classes: int, train: Path, valid: Path, names: Path, backup: Path) -> str:
    """obj.data with the five keys every darknet fork reads (docs/darknet.md 3.1), absolute
    paths."""
    return (f"classes = {classes}\ntrain = {train}\nvalid = {valid}\n"
            f"names = {names}\nbackup = {backup}\n")


def list_text(image_paths: list[Path]) -> str:
    """train.txt / valid.txt / test.txt: one absolute image path per line."""
    return "".join(f"{p}\n" for p in image_paths)


def ultralytics_yaml_text(root: Path, names: list[str]) -> str:
    """data.yaml for Ultralytics: list files relative to ``path``; labels sit beside the images
    (Ultralytics replaces ``/images/`` by ``/labels/`` and our paths have no such folder)."""
    lines = [f"path: {json.dumps(str(root))}", "train: train.txt", "val: valid.txt",
             "test: test.txt", f"nc: {len(names)}", "names:"]
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    return "\n".join(lines) + "\n"


def darknet_path_warnings(path: Path) -> list[str]:
    """Why darknet could mishandle image paths under ``path`` (empty list: none)."""
    text = str(path)
    warnings = []
    for word in DARKNET_REWRITTEN_WORDS:
        if word in text:
            warnings.append(
                f"the absolute output path {text} contains {word!r}: pjreddie's darknet replaces it "
                f"in every image path to find the label file, so it will look for labels in the "
                f"wrong place; choose an output folder whose path has no 'images', 'JPEGImages' "
                f"or 'raw'")
    if '"' in text or "\\" in text:
        warnings.append(f"the output path {text} contains a quote or backslash, which darknet "
                        "writes unescaped into its JSON output")
    # A prepared image path is <out>/<split>/<20-char name>.png: about 30 bytes beyond the folder.
    if len(text.encode()) + 30 > DARKNET_MAX_PATH_BYTES:
        warnings.append(f"the output path {text} is long: darknet's `detector test` cuts list "
                        f"lines at {DARKNET_MAX_PATH_BYTES} bytes")
    return warnings
