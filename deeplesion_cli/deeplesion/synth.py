"""Synthetic DeepLesion: a small data set in the release's exact on-disk format.

``synthesize`` writes ``<out>/DL_info.csv`` and ``<out>/Images_png/PPPPPP_SS_EE/KKK.png`` the way
the NIH release does (format facts and the generator spec: ``docs/deeplesion.md``
sections 1, 2, 3 and 6). The pixels are CT-like HU images (body, region anatomy, noise) with
labelled lesions that a detector can learn, and unlabelled decoys, so FROC curves are non-trivial.

Units and conventions at every boundary:

* CSV coordinates (RECIST points, boxes) are **1-based pixels** in the image's native size, as in
  the release. Internally geometry uses **0-based pixel centres** (pixel ``j`` has its centre at
  ``x = j``); a CSV value is the internal value + 1.
* Slice indices are **1-based** (the ``KKK`` of a file name), at most 999.
* Spacing is in **mm per pixel** (in-plane) and **mm between slices** (``dz``); lesion sizes are
  drawn in mm and converted to pixels with the series' spacing.
* Pixel values are **HU**; PNGs store HU + 32768 as uint16 (:mod:`.hu`).

Determinism: every random choice comes from a :class:`numpy.random.SeedSequence` keyed on the seed
and a tag (cohort) or on (seed, tag, patient, study, series) for everything inside one series, so
the output bytes do not depend on ``workers`` or on process scheduling.

This module runs the steps and writes the files; each step has its own module:
:mod:`.synth_plan` (cohort, series geometry, key slices, seed streams), :mod:`.synth_anatomy`
(the HU phantom of a series), :mod:`.synth_lesions` (lesions and decoys: types, sizes, contrast,
RECIST points) and :mod:`.synth_rows` (the DL_info.csv rows of a series).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from ..progress import Progress
from . import hu
from .schema import CSV_NAME, IMAGES_DIR, LesionRow, format_csv
from .synth_anatomy import OUTSIDE_FOV_HU, blur3, build_anatomy
from .synth_lesions import MAX_LONG_FRACTION, Blob, paint, place_decoy, place_lesion
from .synth_plan import (
    DZ_MM,
    LUNG_WINDOW_HU,
    MAX_SLICE_INDEX,
    TAG_GEOMETRY,
    TAG_PIXELS,
    TYPE_PROBS,
    SeriesSpec,
    merge_blocks,
    plan_cohort,
    seeded_rng,
)
from .synth_rows import rows_for

__all__ = ["CSV_NAME", "IMAGES_DIR", "SynthResult", "synthesize", "merge_blocks", "plan_cohort",
           "TYPE_PROBS", "DZ_MM", "LUNG_WINDOW_HU", "MAX_SLICE_INDEX", "MAX_LONG_FRACTION"]

#: the planner under its former name (tests/test_synth.py calls it)
_plan_cohort = plan_cohort


@dataclass
class SynthResult:
    """What :func:`synthesize` wrote."""

    csv_path: Path
    #: exactly the rows written, in file order (parsing the CSV gives rows equal to these)
    rows: list[LesionRow]
    #: number of slice PNGs written
    n_png: int


# ------------------------------------------------------------------------------------- rendering


def _render_series(spec: SeriesSpec, seed: int, images_dir) -> list[LesionRow]:
    """Place the lesions, write every slice PNG of every block, and return the CSV rows.

    Runs in a worker process; all randomness comes from the series' own seed sequences.
    """
    geo = seeded_rng(seed, TAG_GEOMETRY, spec.patient_index, spec.study_index, spec.series_id)
    anat = build_anatomy(spec.region, spec.size_px, geo)
    noise_sd_hu = float(geo.uniform(10.0, 20.0))

    placed: list[Blob] = []
    lesion_geometry = []  # per key slice: list of RECIST points (4, 2), 0-based px
    for key in spec.keys:
        points_list = []
        for lesion_type in key.types:
            blob, points = place_lesion(lesion_type, key, spec, anat, geo, placed)
            placed.append(blob)
            points_list.append(points)
        lesion_geometry.append(points_list)
    for _ in range(int(geo.integers(2, 6))):
        decoy = place_decoy(spec, anat, geo, placed)
        if decoy is not None:
            placed.append(decoy)

    pixels = seeded_rng(seed, TAG_PIXELS, spec.patient_index, spec.study_index, spec.series_id)
    S = spec.size_px
    # a [1,2,1]/4 blur in 2-D scales white noise by 0.375; pre-scale so the result has noise_sd_hu
    noise_gain = np.float32(noise_sd_hu / 0.375)
    series_dir = Path(images_dir) / spec.series_dir
    series_dir.mkdir(parents=True, exist_ok=True)
    for first, last in spec.blocks:
        for k in range(first, last + 1):
            img = anat.base_hu.copy()
            for blob in placed:
                scale = blob.scale_at(k, spec.dz_mm)
                if scale > 0.0:
                    paint(img, blob, scale)
            noise = blur3(pixels.standard_normal((S, S), dtype=np.float32))
            noise *= noise_gain
            img += noise
            img[anat.outside_fov] = OUTSIDE_FOV_HU
            stored = hu.hu_to_png_u16(img)
            atomic.write_with(series_dir / f"{k:03d}.png",
                              lambda path, arr=stored: hu.write_png_u16(path, arr))

    return rows_for(spec, anat, lesion_geometry)


def _pool_context():
    # forkserver: forking a parent that already runs threads (torch, rich) can deadlock
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context()


def _remove_stale_slices(images_dir: Path, specs) -> None:
    """Delete slice PNGs an earlier synth into the same folder left that this plan does not hold,
    so the tree always matches its DL_info.csv."""
    planned = {f"{spec.series_dir}/{k:03d}.png" for spec in specs
               for first, last in spec.blocks for k in range(first, last + 1)}
    for path in images_dir.glob("*/*.png"):
        if f"{path.parent.name}/{path.name}" not in planned:
            path.unlink()
    for folder in images_dir.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def synthesize(out_dir, patients: int = 24, seed: int = 0, size_px: int = 512,
               newline: str = "\r\n", workers: int | None = None,
               show_progress: bool = True) -> SynthResult:
    """Write a synthetic DeepLesion tree under ``out_dir`` and return what was written.

    ``out_dir/DL_info.csv`` (18 columns, byte-exact format, lines ended by ``newline``: ``"\\r\\n"``
    or ``"\\n"``) and ``out_dir/Images_png/PPPPPP_SS_EE/KKK.png`` (16-bit, HU + 32768) for every
    1-based slice of every Slice_range block. ``patients``: number of patients (>= 1; >= 3 puts a
    patient in each split, >= 4 adds a 1.5x-size image, a 2-lesion slice and a Possibly_noisy row,
    >= 8 a NaN age). ``size_px``: side of most images in pixels (>= 64; about 1 % of series are
    1.5x). ``workers``: processes (default ``os.cpu_count()``); the bytes written do not depend on
    it. Files are written atomically; existing files of the same names are replaced, others left.

    With ``workers > 1`` the worker processes come from a forkserver (where available), so a
    script that calls this must guard its entry point with ``if __name__ == "__main__":``.
    """
    if newline not in ("\r\n", "\n"):
        raise ValueError(f"newline must be '\\r\\n' (crlf) or '\\n' (lf), not {newline!r}")
    if int(patients) < 1:
        raise ValueError(f"patients must be at least 1, not {patients}")
    if int(size_px) < 64:
        raise ValueError(f"size_px must be at least 64 pixels, not {size_px}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed}")
    patients, size_px, seed = int(patients), int(size_px), int(seed)
    out = Path(out_dir)
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)

    specs = plan_cohort(patients, seed, size_px)
    total = sum(spec.n_png for spec in specs)
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    n_workers = max(1, min(n_workers, len(specs)))

    results: list[list[LesionRow] | None] = [None] * len(specs)
    with Progress(total=total, description="synth", unit="slices",
                  enabled=show_progress) as progress:
        if n_workers == 1:
            for i, spec in enumerate(specs):
                results[i] = _render_series(spec, seed, images_dir)
                progress.advance(spec.n_png)
        else:
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context()) as pool:
                # largest series first, so one long 1-mm series does not finish last alone
                order = sorted(range(len(specs)), key=lambda i: -specs[i].n_png)
                futures = {pool.submit(_render_series, specs[i], seed, str(images_dir)): i
                           for i in order}
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    progress.advance(specs[i].n_png)

    # Number rows as the parser does: data row i (1-based) sits on line i + 1.
    rows = [dataclasses.replace(row, row=i, line=i + 1) for i, row in
            enumerate((row for series_rows in results for row in series_rows), 1)]
    _remove_stale_slices(images_dir, specs)
    csv_path = out / CSV_NAME
    atomic.write_bytes(csv_path, format_csv(rows, newline))
    return SynthResult(csv_path=csv_path, rows=rows, n_png=total)
