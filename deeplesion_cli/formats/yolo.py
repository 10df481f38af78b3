"""darknet / YOLO files: label ``.txt`` beside each image, list files, obj.data, obj.names, and
Ultralytics' data.yaml (valid whatever the split sizes, :func:`ultralytics_splits`).

Label lines are ``<class> <cx> <cy> <w> <h>``: a 0-based class index and the box centre and size
relative to the image width and height (docs/darknet.md 3.2). An image without lesions gets an
empty label file (a negative image).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


#: The list file of each split, as data.yaml names it (relative to its ``path``).
ULTRALYTICS_LISTS = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}


def ultralytics_splits(n_images: Mapping[str, int]) -> tuple[dict[str, str], dict[str, str]]:
    """data.yaml's ``train``/``val``/``test`` entries for splits of ``n_images`` images each, and
    for each empty split the consequence for Ultralytics (split -> sentence).

    Ultralytics requires ``train`` and ``val`` keys and stops with "No images found" when a list
    it loads is empty: ``val`` while training, ``train`` when training starts. So ``train``
    always names train.txt (an empty one: the folder can be scored, not trained on); an empty
    val split points ``val`` at train.txt (or, with no training images either, test.txt); an
    empty test split is left out (``test`` is optional).
    """
    n = {split: int(n_images.get(split, 0)) for split in ULTRALYTICS_LISTS}
    entries = {"train": ULTRALYTICS_LISTS["train"]}
    notes: dict[str, str] = {}
    if not n["train"]:
        notes["train"] = ("data.yaml keeps `train: train.txt`, so `yolo train` on this folder "
                          "stops with 'No images found'; `yolo val` still works")
    if n["val"]:
        entries["val"] = ULTRALYTICS_LISTS["val"]
    elif n["train"]:
        entries["val"] = ULTRALYTICS_LISTS["train"]
        notes["val"] = ("data.yaml points Ultralytics' `val:` at train.txt (Ultralytics needs "
                        "images to validate on), so the validation of `yolo train` scores the "
                        "training images: its val mAP is optimistic and best.pt is chosen on "
                        "training data; score held-out images with `lesion eval`")
    else:
        entries["val"] = ULTRALYTICS_LISTS["test"] if n["test"] else ULTRALYTICS_LISTS["val"]
        notes["val"] = ("data.yaml points Ultralytics' `val:` at test.txt, so `yolo val` scores "
                        "the test split" if n["test"] else
                        "Ultralytics cannot use this folder (no images to train or validate on)")
    if n["test"]:
        entries["test"] = ULTRALYTICS_LISTS["test"]
    else:
        notes["test"] = ("data.yaml has no `test:` entry (Ultralytics' `split=test` is not "
                         "available)")
    return entries, notes


def ultralytics_yaml_text(root: Path, names: list[str],
                          n_images: Mapping[str, int] | None = None) -> str:
    """data.yaml for Ultralytics: ``path`` (absolute), list files relative to it, ``nc`` and
    ``names`` (class index: name, obj.names order). ``n_images`` (split -> image count, default:
    every split has images) chooses the list entries (:func:`ultralytics_splits`). Labels sit
    beside the images: Ultralytics replaces the last ``/images/`` of an image path by
    ``/labels/`` to find its label, and a prepared image path has none unless the folder's
    path does (:func:`darknet_path_warnings` warns then)."""
    entries, _ = ultralytics_splits(n_images if n_images is not None
                                    else dict.fromkeys(ULTRALYTICS_LISTS, 1))
    lines = [f"path: {json.dumps(str(root))}"]
    lines += [f"{key}: {value}" for key, value in entries.items()]
    lines += [f"nc: {len(names)}", "names:"]
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    return "\n".join(lines) + "\n"


def darknet_path_warnings(path: Path) -> list[str]:
    """Why darknet (or Ultralytics, for an ``images`` folder) could mishandle image paths under
    ``path`` (empty list: none)."""
    text = str(path)
    warnings = []
    for word in DARKNET_REWRITTEN_WORDS:
        if word in text:
            also = ""
            if word == "images" and "images" in Path(text).parts:
                also = (" Ultralytics, too, replaces the last '/images/' folder of an image path "
                        "by '/labels/' to find its label, so it will find none and train on "
                        "every image as a background, with warnings only;")
            warnings.append(
                f"the absolute output path {text} contains {word!r}: pjreddie's darknet replaces it "
                f"in every image path to find the label file, so it will look for labels in the "
                f"wrong place;{also} choose an output folder whose path has no 'images', "
                f"'JPEGImages' or 'raw'")
    if '"' in text or "\\" in text:
        warnings.append(f"the output path {text} contains a quote or backslash, which darknet "
                        "writes unescaped into its JSON output")
    # A prepared image path is <out>/<split>/<20-char name>.png: about 30 bytes beyond the folder.
    if len(text.encode()) + 30 > DARKNET_MAX_PATH_BYTES:
        warnings.append(f"the output path {text} is long: darknet's `detector test` cuts list "
                        f"lines at {DARKNET_MAX_PATH_BYTES} bytes")
    return warnings
