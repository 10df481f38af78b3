"""``lesion prepare`` rendering: one job per prepared image, run in worker processes, and the
journal of the jobs done.

:func:`render` reads 16-bit slice PNGs (HU + 32768), windows each channel to 8 bits and resizes
to the planned size (px); the PNG and its darknet label are renamed into place only when complete.
The journal (``.lesion-prepare.journal``: key, job signature, sha256 of the input PNG bytes, one
line per image) is what lets a re-run render only what is missing or changed.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplesion_cli import atomic
from deeplesion_cli.deeplesion import hu
from deeplesion_cli.progress import Progress

JOURNAL_NAME = ".lesion-prepare.journal"


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
    target = job.label_path
    try:
        atomic.write_text(Path(target), job.label_text)
        target = job.image_path
        atomic.write_with(Path(target), lambda p: image.save(
            p, format="PNG", compress_level=hu.PNG_COMPRESS_LEVEL))
    except OSError as exc:  # disk full, read-only: the caller stops the run and names the file
        raise OSError(exc.errno, exc.strerror or str(exc), target) from None
    return job.key, digest.hexdigest(), None


def run_jobs(jobs: list[ImageJob], workers: int, show_progress: bool, on_done) -> None:
    """Render ``jobs`` in ``workers`` processes; ``on_done(key, sha256, error)`` runs in this
    process as each one finishes (in any order)."""
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


def read_journal(path: Path) -> dict[str, tuple[str, str]]:
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


def journal_text(entries: dict[str, tuple[str, str]]) -> str:
    """The journal of ``entries`` (key -> (signature, input sha256)), sorted by key."""
    return "".join(f"{k}\t{s}\t{d}\n" for k, (s, d) in sorted(entries.items()))

