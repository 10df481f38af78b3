"""``lesion prepare`` outputs: COCO per split, darknet lists and data files, rejected.csv and the
manifest.

COCO boxes are ``[x, y, w, h]`` in **0-based pixels** of the prepared image; ``spacing_mm`` is the
prepared pixel size in mm, ``recist_diameters_mm`` in mm. File names come from
:mod:`deeplesion_cli.prepared`; the manifest's ``files`` table names them for every reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from pathlib import Path

from deeplesion_cli import __version__, atomic
from deeplesion_cli.deeplesion import splits
from deeplesion_cli.deeplesion.schema import RowError
from deeplesion_cli.formats import coco, yolo
from deeplesion_cli.prepare.plan import PlannedImage, map_coord
from deeplesion_cli.prepared import (
    COCO_DIR,
    DATA_NAME,
    LIST_NAMES,
    NAMES_NAME,
    REJECTED_NAME,
    YAML_NAME,
    Prepared,
)

MANIFEST_FORMAT = 1


def _coco_name(split: str) -> str:
    """The COCO json of ``split``, relative to the folder (as the manifest's ``files`` lists it)."""
    return f"{COCO_DIR}/{split}.json"


def images_hash(done: dict[str, tuple[str, str]]) -> str:
    """sha256 of the input PNG hashes of the images ``done`` (key -> (signature, sha256))."""
    text = "".join(f"{k}\t{d}\n" for k, (_, d) in sorted(done.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def remove_unplanned(out_dir: Path, planned: list[PlannedImage]) -> None:
    """Delete images and labels an earlier run with other options left in the split folders."""
    keep = {Path(p) for im in planned for p in (im.job.image_path, im.job.label_path)}
    for split in splits.SPLITS:
        for path in (out_dir / split).iterdir():
            if path.suffix in (".png", ".txt") and path not in keep:
                path.unlink()


def location_files(out_dir: Path, planned: list[PlannedImage], class_names) -> dict[Path, str]:
    """The files that hold ``out_dir``'s absolute location, path -> text: the darknet lists of
    every split (absolute image paths), obj.data and data.yaml (whose list entries depend on
    which splits have images, :func:`deeplesion_cli.formats.yolo.ultralytics_splits`)."""
    prepared = Prepared(out_dir)
    files = {prepared.list_path(split): yolo.list_text(
        [Path(im.job.image_path) for im in planned if im.split == split])
        for split in splits.SPLITS}
    files[prepared.data_path] = yolo.obj_data_text(
        len(class_names), prepared.list_path("train"), prepared.list_path("val"),
        prepared.names_path, prepared.backup_dir)
    n_images = {split: sum(im.split == split for im in planned) for split in splits.SPLITS}
    files[prepared.yaml_path] = yolo.ultralytics_yaml_text(out_dir, class_names, n_images)
    return files


def stale_location(out_dir: Path, expected: dict[Path, str]) -> tuple[list[Path], Path | None]:
    """Which of ``expected`` (:func:`location_files`) are missing or differ on disk, and the
    folder the old obj.data (or data.yaml) pointed at when it is not ``out_dir`` (a moved or
    copied folder), else None."""
    stale, old_root = [], None
    for path, text in expected.items():
        try:
            current = path.read_text()
        except (OSError, UnicodeDecodeError):
            stale.append(path)
            continue
        if current == text:
            continue
        stale.append(path)
        if path.name == DATA_NAME:
            for line in current.splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "names" and value.strip():
                    old_root = Path(value.strip()).parent
        elif path.name == YAML_NAME and old_root is None:
            first = current.splitlines()[0] if current else ""
            if first.startswith("path:"):
                try:
                    old_root = Path(json.loads(first[5:].strip()))
                except ValueError:
                    pass
    return stale, (old_root if old_root is not None and old_root != Path(out_dir) else None)


def write_metadata(out_dir, planned, categories, class_names, options, config, config_hash,
                   done, errors, excluded, n_read, deeplesion_dir) -> dict:
    """Write every file of the folder but the images and the manifest; return the manifest."""
    prepared = Prepared(out_dir)
    by_split = {s: [im for im in planned if im.split == s] for s in splits.SPLITS}
    counts = {}
    for split, images in by_split.items():
        coco_images, coco_annotations = [], []
        per_class = Counter()
        for image_id, image in enumerate(images, 1):
            first = image.rows[0]
            spacing_x, spacing_y, dz = first.spacing_mm
            coco_images.append({
                "id": image_id,
                "file_name": f"{image.stem}.png",
                "width": image.width_px,
                "height": image.height_px,
                "patient_index": first.patient_index,
                "study_index": first.study_index,
                "series_id": first.series_id,
                "key_slice_index": first.key_slice_index,
                "spacing_mm": [spacing_x / image.scale_xy[0], spacing_y / image.scale_xy[1]],
                "slice_interval_mm": dz,
                "native_size_px": list(first.image_size_px),
                "scale": list(image.scale_xy),
                "dicom_window_hu": list(first.dicom_window_hu),
                "normalized_z": first.location_xyz[2],
                "gender": first.gender,
                "age_years": None if math.isnan(first.age_years) else first.age_years,
                "official_split": first.split,
            })
            for row, box, class_index, clipped in zip(image.rows, image.boxes_xyxy_px,
                                                      image.class_indices, image.clipped):
                xywh = coco.xyxy_to_xywh(box)
                xs = [map_coord(v - 1.0, image.scale_xy[0]) for v in row.measurement_xy_px[0::2]]
                ys = [map_coord(v - 1.0, image.scale_xy[1]) for v in row.measurement_xy_px[1::2]]
                coco_annotations.append({
                    "id": len(coco_annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[class_index]["id"],
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                    "recist_diameters_mm": [row.diameters_px[0] * spacing_x,
                                            row.diameters_px[1] * spacing_x],
                    "recist_xy_px": [v for xy in zip(xs, ys) for v in xy],
                    "lesion_type": row.lesion_type,
                    "possibly_noisy": row.possibly_noisy,
                    "clipped": clipped,
                    "csv_row": row.row,
                })
                per_class[class_names[class_index]] += 1
        coco.write(out_dir / _coco_name(split), coco.instances(
            coco_images, coco_annotations, categories,
            description=f"DeepLesion {split} split prepared by lesion {__version__}"))
        counts[split] = {
            "images": len(images),
            "lesions": sum(len(im.rows) for im in images),
            "patients": len({im.rows[0].patient_index for im in images}),
            "per_class": {name: per_class[name] for name in class_names},
        }
    atomic.write_text(prepared.names_path, yolo.names_text(class_names))
    for path, text in location_files(out_dir, planned, class_names).items():
        atomic.write_text(path, text)
    rejected_path = prepared.rejected_path
    if options.skip_invalid:
        write_rejected(rejected_path, errors)
    else:
        rejected_path.unlink(missing_ok=True)
    return {
        "tool": "lesion",
        "version": __version__,
        "manifest_format": MANIFEST_FORMAT,
        "command": "prepare",
        "options": options.to_json(),
        "config_hash": config_hash,
        "inputs": {
            "deeplesion_dir": str(deeplesion_dir),
            "csv_sha256": config["csv_sha256"],
            "images_sha256": images_hash({k: done[k] for k in (im.job.key for im in planned)}),
        },
        "coordinates": "0-based pixels of the prepared image: DL_info.csv value - 1, clipped to "
                       "[0, W-1] x [0, H-1], mapped through the resampling; COCO bbox is "
                       "[x1, y1, x2 - x1, y2 - y1]",
        "classes": [{"class_index": i, "category_id": c["id"], "name": c["name"]}
                    for i, c in enumerate(categories)],
        "counts": counts,
        "rows": {
            "read": n_read,
            "used": sum(len(im.rows) for im in planned),
            "excluded_noisy": excluded["noisy"],
            "excluded_untyped": excluded["untyped"],
            "rejected": len({e.row for e in errors}),
            "boxes_clipped": sum(sum(im.clipped) for im in planned),
        },
        "files": {
            "images": {s: f"{s}/" for s in splits.SPLITS},
            "coco": {s: _coco_name(s) for s in splits.SPLITS},
            "lists": dict(LIST_NAMES),
            "obj_names": NAMES_NAME,
            "obj_data": DATA_NAME,
            "data_yaml": YAML_NAME,
            "rejected": REJECTED_NAME if options.skip_invalid else None,
        },
    }


def write_rejected(path: Path, errors: list[RowError]) -> None:
    """rejected.csv: one line per problem (row, line, File_name, column, value, reason)."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "line", "file_name", "column", "value", "reason"])
    for e in errors:
        writer.writerow([e.row, e.line, e.file_name, e.column, e.value, e.reason])
    atomic.write_text(path, buffer.getvalue())
