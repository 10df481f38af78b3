"""``lesion prepare``'s pipeline: read and check DL_info.csv and the key slices, split, plan,
render what is missing (resuming through the journal), then write the folder's metadata.

Nothing is written before OUT is known writable and every row and image has been checked (each
slice PNG whole: :func:`~deeplesion_cli.deeplesion.hu.check_png_file`), unless ``skip_invalid``;
the manifest is written last, so a folder with a manifest is complete. A write that fails (disk
full) keeps what was done: the journal lets a re-run finish the job. A folder moved or copied
elsewhere gets its darknet lists, obj.data and data.yaml rewritten for where it is now.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from deeplesion_cli import __version__, atomic
from deeplesion_cli.deeplesion import schema, splits
from deeplesion_cli.deeplesion.schema import CSV_NAME, IMAGES_DIR, LesionRow, RowError
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.formats import yolo
from deeplesion_cli.lock import locks
from deeplesion_cli.prepare.options import PrepareOptions, categories_for
from deeplesion_cli.prepare.outputs import (
    images_hash,
    location_files,
    remove_unplanned,
    stale_location,
    write_metadata,
)
from deeplesion_cli.prepare.plan import check_images, check_sizes, job_for, plan_image
from deeplesion_cli.prepare.rendering import JOURNAL_NAME, journal_text, read_journal, run_jobs
from deeplesion_cli.prepared import COCO_DIR, REJECTED_NAME, Prepared

#: How many row errors the default (strict) mode prints before summarising the rest.
MAX_ERRORS_SHOWN = 20


class PrepareInputError(LesionInputError):
    """The input has rows or images that cannot be prepared; nothing was written (a ValueError;
    exit 2).

    ``errors`` holds every problem; ``str()`` shows the first 20 and a count of the rest.
    """

    def __init__(self, source: Path, errors: list[RowError], written: bool = False,
                 also: str = ""):
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
            f"the rest and list these in {REJECTED_NAME}):\n{shown}{tail}"
            + (f"\nand {also}" if also else ""))


class PrepareOutputError(LesionInputError):
    """OUT cannot be written (read-only, not a folder, disk full): names the path, the errno and
    what was kept (exit 2)."""


def os_error_text(exc: OSError) -> str:
    """``"No space left on device (errno ENOSPC)"``: the reason and its errno, as the command
    line shows any OSError."""
    name = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    return f"{reason} (errno {name})" if name else reason


def check_writable(out_dir: Path) -> None:
    """Fail before reading anything when OUT (or, if it does not exist yet, the folder it would
    be made in) cannot take a new file: creates and removes one probe file there."""
    probe_dir = out_dir
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise PrepareOutputError(f"{out_dir}: cannot create OUT: {probe_dir} is a file, not a "
                                 "folder")
    try:
        fd, name = tempfile.mkstemp(dir=probe_dir, prefix=".lesion-write-probe.",
                                    suffix=atomic.TEMP_SUFFIX)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        where = "OUT" if probe_dir == out_dir else f"{probe_dir}, where OUT would be made,"
        raise PrepareOutputError(f"{out_dir}: cannot write: {where} refuses a new file: "
                                 f"{os_error_text(exc)}; choose a writable OUT") from None


@dataclass
class PrepareResult:
    """What :func:`prepare` did: the folder, its manifest, and what was rendered or reused."""

    out_dir: Path
    manifest: dict
    rendered: int                               # images rendered by this run
    reused: int                                 # images already in place from an earlier run
    rejected: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    up_to_date: bool = False
    #: what was done besides rendering (e.g. darknet lists rewritten for a moved folder)
    notes: list[str] = field(default_factory=list)


@locks("out_dir", "lesion prepare")
def prepare(deeplesion_dir: Path, out_dir: Path, options: PrepareOptions | None = None,
            workers: int | None = None, show_progress: bool = True) -> PrepareResult:
    """Prepare ``deeplesion_dir`` (holding DL_info.csv and Images_png/) into ``out_dir``.

    Raises :class:`PrepareInputError` (nothing written) on bad rows or images unless
    ``options.skip_invalid``; raises ValueError on inconsistent options,
    :class:`schema.SchemaError` on an unreadable or header-only CSV or a missing Images_png,
    :class:`PrepareOutputError` when OUT cannot be written (up front, or during the run: what
    was done is kept and a re-run finishes it).
    """
    options = options or PrepareOptions()
    options.validate()
    deeplesion_dir = Path(deeplesion_dir).resolve()
    out_dir = Path(out_dir).resolve()
    workers = workers or len(os.sched_getaffinity(0))
    csv_path = deeplesion_dir / CSV_NAME
    images_dir = deeplesion_dir / IMAGES_DIR
    if not csv_path.is_file():
        raise schema.SchemaError(f"{csv_path}: not found (expected {CSV_NAME} in {deeplesion_dir})")
    check_writable(out_dir)
    csv_bytes = csv_path.read_bytes()
    rows, errors = schema.read_csv(csv_path)
    n_read = len(rows) + len({e.row for e in errors})
    if n_read == 0:
        raise schema.SchemaError(f"{csv_path}: the header but no data rows; nothing to prepare")

    kept, excluded = [], Counter()
    for r in rows:
        if r.possibly_noisy and not options.keep_noisy:
            excluded["noisy"] += 1
        elif options.task == "typed" and r.lesion_type == schema.UNLABELLED_TYPE:
            excluded["untyped"] += 1
        else:
            kept.append(r)
    check_sizes(kept, options)
    groups: dict[str, list[LesionRow]] = defaultdict(list)
    for r in kept:
        groups[r.file_name].append(r)
    problem = _images_dir_problem(groups, images_dir)
    if problem:  # one message, not one "file not found" per row; the CSV's own errors first
        if errors and not options.skip_invalid:
            raise PrepareInputError(csv_path, sorted(errors, key=lambda e: (e.row, e.line)),
                                    also=problem)
        raise schema.SchemaError(problem)
    errors += check_images(groups, images_dir, options.context)
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
    if not kept:
        raise LesionInputError(
            f"{csv_path}: no row left to prepare: {n_read} read, {excluded['noisy']} possibly "
            f"noisy left out (--keep-noisy keeps them), {excluded['untyped']} untyped left out "
            f"(--task universal keeps them), {len(bad_rows)} rejected")

    if options.resolved_split() == "official":
        split_of = splits.official_split(kept)
    else:
        split_of = splits.patient_split(kept, options.ratios, options.seed)
        empty = splits.empty_splits(split_of, options.ratios)
        if empty:
            shares = ",".join(f"{r:g}" for r in options.ratios)
            raise LesionInputError(
                f"--ratios {shares}: the {' and '.join(empty)} split"
                f"{'s get' if len(empty) > 1 else ' gets'} no patient ({len(split_of)} patients "
                f"to share); give a larger share, more patients, or a share of 0 to leave a "
                "split empty on purpose")
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
        image = plan_image(split_of[group[0].patient_index], group, options, class_index_of)
        image.job = job_for(image, images_dir, out_dir, options, render_hash)
        planned.append(image)

    warnings = yolo.darknet_path_warnings(out_dir)
    n_images = {split: sum(im.split == split for im in planned) for split in splits.SPLITS}
    _, yaml_notes = yolo.ultralytics_splits(n_images)
    for split in splits.SPLITS:
        if not n_images[split]:
            warnings.append(f"the {split} split has no images; {yaml_notes[split]}")
    if options.task == "typed" and options.resolved_split() == "official":
        warnings.append("--task typed with --split official: every official training row is "
                        "unlabelled (type -1), so the train split is empty")

    # ---- from here on we write
    done: dict[str, tuple[str, str]] = {}
    try:
        return _write(out_dir, planned, options, categories, class_names, csv_path, csv_bytes,
                      errors, warnings, excluded, n_read, deeplesion_dir, done, workers,
                      show_progress)
    except OSError as exc:
        where = exc.filename or out_dir
        raise PrepareOutputError(
            f"{where}: cannot write: {os_error_text(exc)}; the {len(done)} of {len(planned)} "
            f"images finished are kept in {out_dir}: free space (or make it writable) and re-run "
            "the same lesion prepare command to finish the job") from None


def _images_dir_problem(groups: dict[str, list[LesionRow]], images_dir: Path) -> str | None:
    """Why no key slice can be found under Images_png/ (missing, empty, or holding none of the
    CSV's series: unzipped one level too deep, another data set), in one message; else None."""
    layout = (f"{IMAGES_DIR}/<PPPPPP_SS_EE>/<KKK>.png (the release's {IMAGES_DIR}_*.zip files "
              "unzip into it)")
    if not images_dir.is_dir():
        return f"{images_dir}: not found; a DeepLesion folder holds {CSV_NAME} and {layout}"
    found = sorted(p.name for p in images_dir.iterdir())
    if not found:
        return f"{images_dir}: empty; expected {layout}"
    paths = [g[0].slice_path(images_dir, g[0].key_slice_index) for g in groups.values()]
    if not paths or any(p.is_file() for p in paths):
        return None
    shown = ", ".join(found[:3]) + (f" ... ({len(found)} entries)" if len(found) > 3 else "")
    return (f"{images_dir}: none of the {len(paths)} key slices of {CSV_NAME} is there (e.g. "
            f"{paths[0].relative_to(images_dir)}); it holds {shown}; expected {layout}")


def _write(out_dir, planned, options, categories, class_names, csv_path, csv_bytes, errors,
           warnings, excluded, n_read, deeplesion_dir, done, workers,
           show_progress) -> PrepareResult:
    """Render what is missing and write the metadata; ``done`` fills as images complete (so
    that a caller seeing an OSError knows how many were kept)."""
    prepared = Prepared(out_dir)
    # Lists, obj.data and data.yaml hold absolute paths: a moved or copied folder's point at
    # the old place. Found before writing, so the note can say where they pointed.
    expected = location_files(out_dir, planned, class_names)
    stale, old_root = stale_location(out_dir, expected)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)
    for split in splits.SPLITS:
        (out_dir / split).mkdir(exist_ok=True)
    (out_dir / COCO_DIR).mkdir(exist_ok=True)
    prepared.backup_dir.mkdir(exist_ok=True)

    journal_path = out_dir / JOURNAL_NAME
    journal = read_journal(journal_path)
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
    manifest_path = prepared.manifest_path
    if not todo and manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        if (old.get("config_hash") == config_hash and
                old.get("inputs", {}).get("images_sha256") == images_hash(done)):
            notes = []
            if stale:
                for path in stale:
                    atomic.write_text(path, expected[path])
                names = ", ".join(p.name for p in stale)
                notes.append(f"{out_dir} was moved or copied from {old_root}: rewrote {names} "
                             "for its current location (no image re-rendered)" if old_root else
                             f"rewrote {names}: missing, or not listing this folder's images "
                             "at its current location (no image re-rendered)")
            return PrepareResult(out_dir, old, 0, len(done), errors, warnings, up_to_date=True,
                                 notes=notes)

    failures: dict[str, str] = {}
    # Keep the entries of images still planned (done ones); the rest is rewritten as it completes.
    atomic.write_text(journal_path, journal_text(done))
    jobs_by_key = {job.key: job for job in todo}
    with open(journal_path, "a") as journal_file:
        def on_done(key: str, digest: str, error: str | None) -> None:
            if error:
                failures[key] = error
                return
            done[key] = (jobs_by_key[key].signature, digest)
            journal_file.write(f"{key}\t{done[key][0]}\t{digest}\n")
            journal_file.flush()

        run_jobs(todo, workers, show_progress, on_done)

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

    manifest = write_metadata(out_dir, planned, categories, class_names, options, config,
                              config_hash, done, errors, excluded, n_read, deeplesion_dir)
    remove_unplanned(out_dir, planned)
    atomic.write_text(journal_path, journal_text({k: done[k] for k in
                                                  (im.job.key for im in planned)}))
    atomic.write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    notes = [f"{out_dir} was moved or copied from {old_root}: its darknet lists, obj.data and "
             "data.yaml were rewritten for its current location"] if old_root else []
    return PrepareResult(out_dir, manifest, len(todo) - len(failures), len(planned) - len(todo)
                         + len(failures), errors, warnings, notes=notes)

def manifest_summary(result: PrepareResult) -> dict:
    """A small dict for printing: counts per split and where the files are."""
    m = result.manifest
    return {"out": str(result.out_dir), "counts": m["counts"], "rows": m["rows"],
            "rendered": result.rendered, "reused": result.reused}


