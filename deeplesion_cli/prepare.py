"""``lesion prepare``: DL_info.csv + Images_png -> a prepared folder (the contract between commands).

The folder (documented in docs/formats.md)::

    OUT/train/<stem>.png + <stem>.txt     8-bit windowed image and its darknet label, same for val/, test/
    OUT/coco/<split>.json                 COCO instances per split
    OUT/train.txt valid.txt test.txt      absolute image paths for darknet
    OUT/obj.names obj.data data.yaml      darknet and Ultralytics data files
    OUT/backup/                           darknet's weights folder (it must exist before training)
    OUT/manifest.json                     options, version, counts, class map, input hashes
    OUT/rejected.csv                      with --skip-invalid: every row left out and why

Coordinates: the CSV is 1-based; boxes here are 0-based (CSV - 1, as the official 3DCE/MULAN
loaders do), clipped to the pixel grid [0, W-1] x [0, H-1], then mapped through the resampling.

Re-running is cheap and safe: a journal (``.lesion-prepare.journal``) records each image whose
PNG and label were renamed into place, keyed by the input files' size/mtime and the render
options, so a re-run renders only what is missing or changed and an interrupted run, re-run,
ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplesion_cli import __version__, atomic
from deeplesion_cli.deeplesion import hu, schema, splits
from deeplesion_cli.deeplesion.schema import LESION_TYPES, LesionRow, RowError
from deeplesion_cli.formats import coco, yolo
from deeplesion_cli.progress import Progress

JOURNAL_NAME = ".lesion-prepare.journal"
MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.csv"
MANIFEST_FORMAT = 1
LIST_NAMES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
#: How many row errors the default (strict) mode prints before summarising the rest.
MAX_ERRORS_SHOWN = 20


class PrepareInputError(ValueError):
    """The input has rows or images that cannot be prepared; nothing was written.

    ``errors`` holds every problem; ``str()`` shows the first 20 and a count of the rest.
    """

    def __init__(self, source: Path, errors: list[RowError], written: bool = False):
        self.source = source
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        rows = len({e.row for e in errors})
        state = ("images decoded so far are kept and a re-run reuses them" if written
                 else "nothing was written")
        super().__init__(
            f"{source}: {len(errors)} problem{'s' if len(errors) != 1 else ''} in {rows} "
            f"row{'s' if rows != 1 else ''}; {state} (use --skip-invalid to prepare "
            f"the rest and list these in {REJECTED_NAME}):\n{shown}{tail}")


# ------------------------------------------------------------------------------------- options


def parse_window(text: str):
    """``"-1024,3071"`` -> (-1024.0, 3071.0) HU; ``"dicom"`` -> ``"dicom"`` (each row's window)."""
    if text.strip().lower() == "dicom":
        return "dicom"
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected LO,HI in HU (e.g. -1024,3071) or 'dicom'")
    if not lo < hi or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"--window {text!r}: LO must be below HI")
    return (lo, hi)


def window_name(window) -> str:
    return "dicom" if window == "dicom" else f"{schema.format_number(window[0])},{schema.format_number(window[1])}"


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides the prepared folder's content (``workers`` does not)."""

    task: str = "typed"                       # "typed" (8 coarse types) or "universal" (1 class)
    split: str | None = None                  # "official" | "patient"; None: patient if typed
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    windows: tuple = (hu.DEFAULT_WINDOW_HU,)  # (lo, hi) HU pairs or "dicom"; 1 or 3 channels
    context: int = 1                          # 1: key slice; 3: key slice and neighbours as RGB
    spacing_mm: float | None = None           # resample to this pixel size
    keep_noisy: bool = False
    skip_invalid: bool = False

    def resolved_split(self) -> str:
        return self.split or ("patient" if self.task == "typed" else "official")

    def validate(self) -> None:
        if self.task not in ("typed", "universal"):
            raise ValueError(f"--task {self.task!r}: expected typed or universal")
        if self.resolved_split() not in ("official", "patient"):
            raise ValueError(f"--split {self.split!r}: expected official or patient")
        if self.context not in (1, 3):
            raise ValueError(f"--context {self.context}: expected 1 (key slice) or 3 "
                             "(key slice and its two neighbours as RGB)")
        if self.context == 3 and len(self.windows) != 1:
            raise ValueError("--context 3 fills the three channels with slices; give one --window")
        if len(self.windows) not in (1, 3):
            raise ValueError(f"{len(self.windows)} --window options: a PNG holds 1 (grey) or 3 "
                             "(RGB) channels, so give one window or three")
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise ValueError(f"--spacing {self.spacing_mm}: must be a positive number of mm")

    def to_json(self) -> dict:
        out = {
            "task": self.task,
            "split": self.resolved_split(),
            "windows_hu": [window_name(w) for w in self.windows],
            "context": self.context,
            "spacing_mm": self.spacing_mm,
            "keep_noisy": self.keep_noisy,
            "skip_invalid": self.skip_invalid,
        }
        if self.resolved_split() == "patient":
            out["ratios"] = list(self.ratios)
            out["seed"] = self.seed
        return out

    def render_json(self) -> dict:
        """The options that change pixels (a change re-renders every image)."""
        return {"windows_hu": [window_name(w) for w in self.windows], "context": self.context,
                "spacing_mm": self.spacing_mm, "png_compress_level": hu.PNG_COMPRESS_LEVEL}


def categories_for(task: str) -> list[dict]:
    """COCO categories; the typed task keeps DeepLesion's type codes 1..8 as category ids."""
    if task == "universal":
        return [{"id": 1, "name": "lesion", "supercategory": "lesion"}]
    return [{"id": code, "name": name, "supercategory": "lesion"}
            for code, name in sorted(LESION_TYPES.items())]


# ------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class ImageJob:
    """One prepared image: read ``slice_paths``, window channel i of slice i (or of the only
    slice), resize to ``size_px`` (W, H), and write the PNG and its label text atomically."""

    key: str                                    # "<split>/<stem>"
    slice_paths: tuple[str, ...]
    windows_hu: tuple[tuple[float, float], ...]
    size_px: tuple[int, int]
    image_path: str
    label_path: str
    label_text: str
    signature: str                              # inputs' size:mtime, render options, label


@dataclass
class PlannedImage:
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


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict
    rendered: int                               # images rendered by this run
    reused: int                                 # images already in place from an earlier run
    rejected: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    up_to_date: bool = False


def _map_coord(v: float, scale: float) -> float:
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


def _check_images(groups: dict[str, list[LesionRow]], images_dir: Path) -> list[RowError]:
    errors = []
    for file_name, rows in groups.items():
        first = rows[0]
        path = first.slice_path(images_dir, first.key_slice_index)
        try:
            width, height = hu.check_png_header(path)
        except hu.ImageError as exc:
            errors += [RowError(r.row, r.line, "File_name", r.file_name, str(exc), r.file_name)
                       for r in rows]
            continue
        for r in rows:
            if (width, height) != tuple(r.image_size_px):
                errors.append(RowError(
                    r.row, r.line, "Image_size", f"{r.image_size_px[0]}, {r.image_size_px[1]}",
                    f"{path} is {width}x{height} pixels", r.file_name))
    return errors


def _plan_image(split: str, rows: list[LesionRow], options: PrepareOptions,
                class_index_of: dict[int, int]) -> PlannedImage:
    first = rows[0]
    width0, height0 = first.image_size_px
    if options.spacing_mm:
        width = max(1, round(width0 * first.spacing_mm[0] / options.spacing_mm))
        height = max(1, round(height0 * first.spacing_mm[1] / options.spacing_mm))
    else:
        width, height = width0, height0
    sx, sy = width / width0, height / height0
    boxes, classes, clipped = [], [], []
    for r in rows:
        x1, y1, x2, y2 = r.box_xyxy_px0()
        cx1, cy1 = min(max(x1, 0.0), width0 - 1.0), min(max(y1, 0.0), height0 - 1.0)
        cx2, cy2 = min(max(x2, 0.0), width0 - 1.0), min(max(y2, 0.0), height0 - 1.0)
        clipped.append((cx1, cy1, cx2, cy2) != (x1, y1, x2, y2))
        boxes.append((_map_coord(cx1, sx), _map_coord(cy1, sy),
                      _map_coord(cx2, sx), _map_coord(cy2, sy)))
        classes.append(class_index_of[r.lesion_type if options.task == "typed" else 0])
    return PlannedImage(split, first.stem, rows, width, height, (sx, sy), boxes, classes, clipped)


def _job_for(image: PlannedImage, images_dir: Path, out_dir: Path,
             options: PrepareOptions, render_hash: str) -> ImageJob:
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


# ----------------------------------------------------------------------------------- rendering


def render(job: ImageJob) -> tuple[str, str, str | None]:
    """Render one image; return (key, sha256 of the input PNG bytes, error or None).

    Runs in worker processes. Both outputs are renamed into place only when complete.
    """
    from PIL import Image

    digest = hashlib.sha256()
    slices = {}
    try:
        for path in job.slice_paths:
            if path not in slices:
                data = Path(path).read_bytes()
                digest.update(data)
                slices[path] = hu.read_png_u16(io.BytesIO(data), name=path)
                if slices[path].ndim != 2:
                    raise hu.ImageError(f"{path}: expected a single-channel slice")
    except (hu.ImageError, OSError) as exc:
        message = str(exc) if isinstance(exc, hu.ImageError) else f"{exc.filename}: {exc.strerror}"
        return job.key, "", message
    arrays = [slices[job.slice_paths[i if len(job.slice_paths) > 1 else 0]]
              for i in range(len(job.windows_hu))]
    channels = [hu.window_png_u16(a, w) for a, w in zip(arrays, job.windows_hu)]
    if any(c.shape != channels[0].shape for c in channels):
        return job.key, "", f"{job.slice_paths[0]}: neighbouring slices differ in size"
    pixels = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
    image = Image.fromarray(pixels)
    if image.size != tuple(job.size_px):
        image = image.resize(tuple(job.size_px), Image.Resampling.BILINEAR)
    atomic.write_text(Path(job.label_path), job.label_text)
    atomic.write_with(Path(job.image_path),
                      lambda p: image.save(p, format="PNG", compress_level=hu.PNG_COMPRESS_LEVEL))
    return job.key, digest.hexdigest(), None


def _run_jobs(jobs: list[ImageJob], workers: int, show_progress: bool, on_done) -> None:
    if not jobs:
        return
    with Progress(len(jobs), "prepare", unit="images", enabled=show_progress) as progress:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                on_done(*render(job))
                progress.advance()
            return
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        with context.Pool(workers) as pool:
            for result in pool.imap_unordered(render, jobs, chunksize=chunk):
                on_done(*result)
                progress.advance()


# ------------------------------------------------------------------------------------- journal


def _read_journal(path: Path) -> dict[str, tuple[str, str]]:
    """key -> (signature, input sha256). A torn last line (killed mid-write) is ignored."""
    entries = {}
    try:
        text = path.read_text()
    except OSError:
        return entries
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and len(parts[2]) == 64:
            entries[parts[0]] = (parts[1], parts[2])
    return entries


def _journal_text(entries: dict[str, tuple[str, str]]) -> str:
    return "".join(f"{k}\t{s}\t{d}\n" for k, (s, d) in sorted(entries.items()))


# --------------------------------------------------------------------------------------- main


def prepare(deeplesion_dir: Path, out_dir: Path, options: PrepareOptions | None = None,
            workers: int | None = None, show_progress: bool = True) -> PrepareResult:
    """Prepare ``deeplesion_dir`` (holding DL_info.csv and Images_png/) into ``out_dir``.

    Raises :class:`PrepareInputError` (nothing written) on bad rows or images unless
    ``options.skip_invalid``; raises ValueError on inconsistent options or
    :class:`schema.SchemaError` on an unreadable CSV.
    """
    options = options or PrepareOptions()
    options.validate()
    deeplesion_dir = Path(deeplesion_dir).resolve()
    out_dir = Path(out_dir).resolve()
    workers = workers or len(os.sched_getaffinity(0))
    csv_path = deeplesion_dir / "DL_info.csv"
    images_dir = deeplesion_dir / "Images_png"
    if not csv_path.is_file():
        raise schema.SchemaError(f"{csv_path}: not found (expected DL_info.csv in {deeplesion_dir})")
    csv_bytes = csv_path.read_bytes()
    rows, errors = schema.read_csv(csv_path)
    n_read = len(rows) + len({e.row for e in errors})

    kept, excluded = [], Counter()
    for r in rows:
        if r.possibly_noisy and not options.keep_noisy:
            excluded["noisy"] += 1
        elif options.task == "typed" and r.lesion_type == schema.UNLABELLED_TYPE:
            excluded["untyped"] += 1
        else:
            kept.append(r)
    groups: dict[str, list[LesionRow]] = defaultdict(list)
    for r in kept:
        groups[r.file_name].append(r)
    errors += _check_images(groups, images_dir)
    # One image has one set of per-slice fields; rows that disagree cannot share a file.
    for file_name, group in groups.items():
        for r in group[1:]:
            for column, a, b in (("Image_size", r.image_size_px, group[0].image_size_px),
                                 ("Spacing_mm_px_", r.spacing_mm, group[0].spacing_mm),
                                 ("Train_Val_Test", r.split_code, group[0].split_code)):
                if a != b:
                    errors.append(RowError(r.row, r.line, column, str(a),
                                           f"differs from row {group[0].row} of the same File_name",
                                           file_name))
    errors.sort(key=lambda e: (e.row, e.line))
    if errors and not options.skip_invalid:
        raise PrepareInputError(csv_path, errors)
    bad_rows = {e.row for e in errors}
    kept = [r for r in kept if r.row not in bad_rows]

    if options.resolved_split() == "official":
        split_of = splits.official_split(kept)
    else:
        split_of = splits.patient_split(kept, options.ratios, options.seed)
    categories = categories_for(options.task)
    class_names = [c["name"] for c in categories]
    class_index_of = ({c["id"]: i for i, c in enumerate(categories)} if options.task == "typed"
                      else {0: 0})

    groups = defaultdict(list)
    for r in kept:
        groups[r.file_name].append(r)
    render_hash = hashlib.sha256(json.dumps(options.render_json(), sort_keys=True).encode()
                                 ).hexdigest()[:16]
    planned = []
    for file_name in sorted(groups):
        group = groups[file_name]
        image = _plan_image(split_of[group[0].patient_index], group, options, class_index_of)
        image.job = _job_for(image, images_dir, out_dir, options, render_hash)
        planned.append(image)

    warnings = yolo.darknet_path_warnings(out_dir)
    for split in splits.SPLITS:
        if not any(im.split == split for im in planned):
            warnings.append(f"the {split} split has no images")
    if options.task == "typed" and options.resolved_split() == "official":
        warnings.append("--task typed with --split official: every official training row is "
                        "unlabelled (type -1), so the train split is empty")

    # ---- from here on we write
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)
    for split in splits.SPLITS:
        (out_dir / split).mkdir(exist_ok=True)
    (out_dir / "coco").mkdir(exist_ok=True)
    (out_dir / "backup").mkdir(exist_ok=True)

    journal_path = out_dir / JOURNAL_NAME
    journal = _read_journal(journal_path)
    done: dict[str, tuple[str, str]] = {}
    todo = []
    for image in planned:
        job = image.job
        entry = journal.get(job.key)
        if (entry and entry[0] == job.signature and os.path.exists(job.image_path)
                and os.path.exists(job.label_path)):
            done[job.key] = entry
        else:
            todo.append(job)

    config = {"version": __version__, "options": options.to_json(),
              "csv_sha256": hashlib.sha256(csv_bytes).hexdigest()}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    manifest_path = out_dir / MANIFEST_NAME
    if not todo and manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        if (old.get("config_hash") == config_hash and
                old.get("inputs", {}).get("images_sha256") == _images_hash(done)):
            return PrepareResult(out_dir, old, 0, len(done), errors, warnings, up_to_date=True)

    failures: dict[str, str] = {}
    # Keep the entries of images still planned (done ones); the rest is rewritten as it completes.
    atomic.write_text(journal_path, _journal_text(done))
    jobs_by_key = {job.key: job for job in todo}
    with open(journal_path, "a") as journal_file:
        def on_done(key: str, digest: str, error: str | None) -> None:
            if error:
                failures[key] = error
                return
            done[key] = (jobs_by_key[key].signature, digest)
            journal_file.write(f"{key}\t{done[key][0]}\t{digest}\n")
            journal_file.flush()

        _run_jobs(todo, workers, show_progress, on_done)

    if failures:
        image_errors = []
        for image in planned:
            if image.job.key in failures:
                image_errors += [RowError(r.row, r.line, "File_name", r.file_name,
                                          failures[image.job.key], r.file_name) for r in image.rows]
        if not options.skip_invalid:
            raise PrepareInputError(csv_path, image_errors, written=True)
        errors = sorted(errors + image_errors, key=lambda e: (e.row, e.line))
        for image in planned:
            if image.job.key in failures:
                for path in (image.job.image_path, image.job.label_path):
                    Path(path).unlink(missing_ok=True)
        planned = [im for im in planned if im.job.key not in failures]

    manifest = _write_metadata(out_dir, planned, categories, class_names, options, config,
                               config_hash, done, errors, excluded, n_read, deeplesion_dir)
    _remove_unplanned(out_dir, planned)
    atomic.write_text(journal_path, _journal_text({k: done[k] for k in
                                                   (im.job.key for im in planned)}))
    atomic.write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return PrepareResult(out_dir, manifest, len(todo) - len(failures), len(planned) - len(todo)
                         + len(failures), errors, warnings)


def _images_hash(done: dict[str, tuple[str, str]]) -> str:
    text = "".join(f"{k}\t{d}\n" for k, (_, d) in sorted(done.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _remove_unplanned(out_dir: Path, planned: list[PlannedImage]) -> None:
    """Delete images and labels an earlier run with other options left in the split folders."""
    keep = {Path(p) for im in planned for p in (im.job.image_path, im.job.label_path)}
    for split in splits.SPLITS:
        for path in (out_dir / split).iterdir():
            if path.suffix in (".png", ".txt") and path not in keep:
                path.unlink()


def _write_metadata(out_dir, planned, categories, class_names, options, config, config_hash,
                    done, errors, excluded, n_read, deeplesion_dir) -> dict:
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
                xs = [_map_coord(v - 1.0, image.scale_xy[0]) for v in row.measurement_xy_px[0::2]]
                ys = [_map_coord(v - 1.0, image.scale_xy[1]) for v in row.measurement_xy_px[1::2]]
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
        coco.write(out_dir / "coco" / f"{split}.json", coco.instances(
            coco_images, coco_annotations, categories,
            description=f"DeepLesion {split} split prepared by lesion {__version__}"))
        atomic.write_text(out_dir / LIST_NAMES[split], yolo.list_text(
            [Path(im.job.image_path) for im in images]))
        counts[split] = {
            "images": len(images),
            "lesions": sum(len(im.rows) for im in images),
            "patients": len({im.rows[0].patient_index for im in images}),
            "per_class": {name: per_class[name] for name in class_names},
        }
    atomic.write_text(out_dir / "obj.names", yolo.names_text(class_names))
    atomic.write_text(out_dir / "obj.data", yolo.obj_data_text(
        len(class_names), out_dir / "train.txt", out_dir / "valid.txt", out_dir / "obj.names",
        out_dir / "backup"))
    atomic.write_text(out_dir / "data.yaml", yolo.ultralytics_yaml_text(out_dir, class_names))
    rejected_path = out_dir / REJECTED_NAME
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
            "images_sha256": _images_hash({k: done[k] for k in (im.job.key for im in planned)}),
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
            "coco": {s: f"coco/{s}.json" for s in splits.SPLITS},
            "lists": dict(LIST_NAMES),
            "obj_names": "obj.names",
            "obj_data": "obj.data",
            "data_yaml": "data.yaml",
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


def manifest_summary(result: PrepareResult) -> dict:
    """A small dict for printing: counts per split and where the files are."""
    m = result.manifest
    return {"out": str(result.out_dir), "counts": m["counts"], "rows": m["rows"],
            "rendered": result.rendered, "reused": result.reused}


