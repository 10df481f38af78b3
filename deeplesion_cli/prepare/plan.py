"""``lesion prepare`` planning: which prepared image each kept row goes to, its boxes and label.

Boxes here are **0-based pixels** of the prepared image: the CSV's 1-based value - 1 (as the
official 3DCE/MULAN loaders do), clipped to the native pixel grid [0, W-1] x [0, H-1], then mapped
through the resampling (:func:`map_coord`). Each image gets an :class:`~.rendering.ImageJob` whose
signature (inputs' size and mtime, render options, label) tells a re-run whether it is done.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from deeplesion_cli.deeplesion import hu
from deeplesion_cli.deeplesion.schema import LesionRow, RowError
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.formats import yolo
from deeplesion_cli.prepare.options import PrepareOptions, window_name
from deeplesion_cli.prepare.rendering import ImageJob


@dataclass
class PlannedImage:
    """One prepared image: its split, rows, size (px) and boxes in the prepared pixel grid."""

    split: str
    stem: str
    rows: list[LesionRow]
    width_px: int
    height_px: int
    scale_xy: tuple[float, float]               # prepared px per native px
    boxes_xyxy_px: list[tuple[float, float, float, float]]   # 0-based, prepared image
    class_indices: list[int]
    clipped: list[bool]
    job: ImageJob | None = None


def map_coord(v: float, scale: float) -> float:
    """0-based native px ``v`` -> 0-based px after a resize by ``scale`` (prepared / native)."""
    # A resize maps pixel centres: native index x sits at (x + 0.5) * scale - 0.5 after it.
    return (v + 0.5) * scale - 0.5 if scale != 1.0 else v


def _row_window(row: LesionRow, window) -> tuple[float, float]:
    return row.dicom_window_hu if window == "dicom" else (float(window[0]), float(window[1]))


def _stat_signature(paths) -> str:
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def check_images(groups: dict[str, list[LesionRow]], images_dir: Path,
                 context: int = 1) -> list[RowError]:
    """Errors of the slice PNGs (``File_name`` -> rows), found before anything is decoded or
    written: a key slice (and, for ``context=3``, a neighbour on disk) that is missing, not a
    16-bit grayscale PNG, cut short or corrupt (:func:`hu.check_png_file`), or of a size other
    than the rows' Image_size."""
    errors = []
    for file_name, rows in groups.items():
        first = rows[0]
        path = first.slice_path(images_dir, first.key_slice_index)
        paths = [path]
        if context == 3:
            paths += [p for p in (first.slice_path(images_dir, first.key_slice_index - 1),
                                  first.slice_path(images_dir, first.key_slice_index + 1))
                      if p.is_file()]
        for slice_path in paths:
            try:
                width, height = hu.check_png_file(slice_path)
            except hu.ImageError as exc:
                errors += [RowError(r.row, r.line, "File_name", r.file_name, str(exc),
                                    r.file_name) for r in rows]
                break
            if slice_path != path and (width, height) != tuple(first.image_size_px):
                errors += [RowError(r.row, r.line, "Slice_range",
                                    f"{r.slice_range[0]}, {r.slice_range[1]}",
                                    f"neighbour slice {slice_path} is {width}x{height} pixels, "
                                    f"the key slice {path.name} "
                                    f"{r.image_size_px[0]}x{r.image_size_px[1]}", r.file_name)
                           for r in rows]
                break
            if slice_path == path:
                for r in rows:
                    if (width, height) != tuple(r.image_size_px):
                        errors.append(RowError(
                            r.row, r.line, "Image_size",
                            f"{r.image_size_px[0]}, {r.image_size_px[1]}",
                            f"{path} is {width}x{height} pixels", r.file_name))
    return errors


#: The largest side (px) of a prepared image: a --spacing that would resample beyond it is
#: refused before anything is read or written (it would exhaust memory, not make a better image).
MAX_SIDE_PX = 8192


def planned_size(row: LesionRow, spacing_mm: float | None) -> tuple[int, int]:
    """(width, height) in px of ``row``'s image after resampling to ``spacing_mm``."""
    width0, height0 = row.image_size_px
    if not spacing_mm:
        return width0, height0
    return (max(1, round(width0 * row.spacing_mm[0] / spacing_mm)),
            max(1, round(height0 * row.spacing_mm[1] / spacing_mm)))


def check_sizes(rows: list[LesionRow], options: PrepareOptions) -> None:
    """Refuse a ``--spacing`` that would make any image larger than :data:`MAX_SIDE_PX` per side
    (:class:`LesionInputError` naming the largest one, its size and the smallest spacing that
    every image allows)."""
    spacing = options.spacing_mm
    if not spacing or not rows:
        return
    first_of = {}
    for r in rows:
        first_of.setdefault(r.file_name, r)
    extent_mm = {name: max(r.image_size_px[0] * r.spacing_mm[0],
                           r.image_size_px[1] * r.spacing_mm[1])
                 for name, r in first_of.items()}
    too_big = [name for name, mm in extent_mm.items() if mm / spacing >= MAX_SIDE_PX + 0.5]
    if not too_big:
        return
    worst = max(too_big, key=lambda name: (extent_mm[name], -first_of[name].row))
    row = first_of[worst]
    w, h = (row.image_size_px[i] * row.spacing_mm[i] / spacing for i in (0, 1))
    size = f"{w:.0f}x{h:.0f} px" if math.isfinite(max(w, h)) else "of unbounded size"
    smallest = math.ceil(max(extent_mm.values()) / MAX_SIDE_PX * 1e4) / 1e4
    raise LesionInputError(
        f"--spacing {spacing:g}: {len(too_big)} of {len(first_of)} images would be larger than "
        f"{MAX_SIDE_PX} px per side, e.g. row {row.row} ({row.file_name}, "
        f"{row.image_size_px[0]}x{row.image_size_px[1]} px of {row.spacing_mm[0]:g}x"
        f"{row.spacing_mm[1]:g} mm) would be {size}; the smallest spacing every image allows "
        f"is {smallest:g} mm")


def plan_image(split: str, rows: list[LesionRow], options: PrepareOptions,
               class_index_of: dict[int, int]) -> PlannedImage:
    """The image of ``rows`` (one File_name): its size after resampling (px) and its boxes
    (0-based px of the prepared image, clipped to the native grid first)."""
    first = rows[0]
    width0, height0 = first.image_size_px
    width, height = planned_size(first, options.spacing_mm)
    sx, sy = width / width0, height / height0
    boxes, classes, clipped = [], [], []
    for r in rows:
        x1, y1, x2, y2 = r.box_xyxy_px0()
        cx1, cy1 = min(max(x1, 0.0), width0 - 1.0), min(max(y1, 0.0), height0 - 1.0)
        cx2, cy2 = min(max(x2, 0.0), width0 - 1.0), min(max(y2, 0.0), height0 - 1.0)
        clipped.append((cx1, cy1, cx2, cy2) != (x1, y1, x2, y2))
        boxes.append((map_coord(cx1, sx), map_coord(cy1, sy),
                      map_coord(cx2, sx), map_coord(cy2, sy)))
        classes.append(class_index_of[r.lesion_type if options.task == "typed" else 0])
    return PlannedImage(split, first.stem, rows, width, height, (sx, sy), boxes, classes, clipped)


def job_for(image: PlannedImage, images_dir: Path, out_dir: Path,
            options: PrepareOptions, render_hash: str) -> ImageJob:
    """The render job of ``image``: its slices (the key slice, or key and neighbours for
    ``context=3``), windows, size and label, and the signature a re-run compares."""
    first = image.rows[0]
    key_path = first.slice_path(images_dir, first.key_slice_index)
    if options.context == 3:
        paths = []
        for k in (first.key_slice_index - 1, first.key_slice_index + 1):
            neighbour = first.slice_path(images_dir, k)
            # The official loaders fall back to the key slice when a neighbour is not on disk.
            paths.append(neighbour if neighbour.is_file() else key_path)
        paths = [paths[0], key_path, paths[1]]
        windows = (_row_window(first, options.windows[0]),) * 3
    else:
        paths = [key_path]
        windows = tuple(_row_window(first, w) for w in options.windows)
    label = yolo.label_text([yolo.label_line(c, b, image.width_px, image.height_px)
                             for c, b in zip(image.class_indices, image.boxes_xyxy_px)])
    folder = out_dir / image.split
    signature = "|".join([_stat_signature(paths), render_hash,
                          ",".join(window_name(w) for w in windows),
                          f"{image.width_px}x{image.height_px}",
                          hashlib.sha256(label.encode()).hexdigest()[:16]])
    return ImageJob(f"{image.split}/{image.stem}", tuple(str(p) for p in paths), windows,
                    (image.width_px, image.height_px), str(folder / f"{image.stem}.png"),
                    str(folder / f"{image.stem}.txt"), label, signature)

