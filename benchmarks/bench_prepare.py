"""How fast is `lesion prepare`, against the floor measured in the same run?

The floor is a plain loop over the same key slices doing only the unavoidable work with the same
libraries: read the 16-bit PNG (Pillow), window it to 8 bits (the same lookup table), write the
8-bit PNG (Pillow, same compression level). Targets: 1 worker >= 0.8x the floor; N workers
>= 0.8*N x one worker on N cores.

    python benchmarks/bench_prepare.py                     # >= 2000 key images, all cores
    python benchmarks/bench_prepare.py --images 4000 --work /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deeplesion_cli.deeplesion import hu, schema
from deeplesion_cli.deeplesion.synth import synthesize
from deeplesion_cli.prepare import PrepareOptions, prepare


def key_slices(root: Path) -> list[Path]:
    rows, errors = schema.read_csv(root / "DL_info.csv")
    assert not errors, errors[:3]
    names = sorted({r.file_name: r for r in rows}.items())
    return [r.slice_path(root / "Images_png", r.key_slice_index) for _, r in names]


def ensure_data(work: Path, images: int, size_px: int, workers: int) -> Path:
    root = work / "deeplesion"
    if (root / "DL_info.csv").is_file() and len(key_slices(root)) >= images:
        return root
    patients = max(10, images // 6)  # about 7.5 key images per synthetic patient
    while True:
        print(f"synthesizing {patients} patients into {root} ...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        synthesize(root, patients=patients, seed=0, size_px=size_px, workers=workers)
        found = len(key_slices(root))
        if found >= images:
            return root
        patients = int(patients * images / found) + 5


def floor_loop(paths: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            stored = np.asarray(im)
        pixels = hu.window_png_u16(stored, hu.DEFAULT_WINDOW_HU)
        Image.fromarray(pixels).save(out / f"{i}.png", format="PNG",
                                     compress_level=hu.PNG_COMPRESS_LEVEL)
    return time.perf_counter() - start


def timed_prepare(root: Path, out: Path, workers: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    options = PrepareOptions(task="universal", split="official", keep_noisy=True)
    start = time.perf_counter()
    result = prepare(root, out, options, workers=workers, show_progress=False)
    return time.perf_counter() - start, result.rendered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="key images at least")
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work", type=Path, default=None,
                        help="folder kept between runs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    root = ensure_data(work, args.images, args.size, args.workers)
    paths = key_slices(root)
    n = len(paths)
    # Warm the page cache so that no variant pays for the first read from disk.
    for p in paths:
        p.read_bytes()

    floor_s = floor_loop(paths, work / "floor")
    one_s, one_n = timed_prepare(root, work / "prepared_1", 1)
    many_s, many_n = timed_prepare(root, work / "prepared_n", args.workers)
    start = time.perf_counter()
    again = prepare(root, work / "prepared_n",
                    PrepareOptions(task="universal", split="official", keep_noisy=True),
                    workers=args.workers, show_progress=False)
    rerun_s = time.perf_counter() - start
    assert one_n == many_n == n and again.up_to_date

    floor_rate, one_rate, many_rate = n / floor_s, n / one_s, n / many_s
    cores = args.workers
    print(f"\nlesion prepare benchmark: {n} key images of {args.size} px, {cores} workers "
          f"on {os.cpu_count()} cores")
    print(f"  floor (read 16-bit, window, write 8-bit): {floor_rate:8.1f} images/s")
    print(f"  prepare, 1 worker                        : {one_rate:8.1f} images/s  "
          f"= {one_rate / floor_rate:.2f}x floor (target >= 0.80)")
    print(f"  prepare, {cores} workers                       : {many_rate:8.1f} images/s  "
          f"= {many_rate / one_rate:.2f}x 1 worker (target >= {0.8 * cores:.2f})")
    print(f"  re-run with nothing to do                : {rerun_s:8.2f} s")
    ok = one_rate >= 0.8 * floor_rate and many_rate >= 0.8 * cores * one_rate
    print("  targets met" if ok else "  TARGET MISSED")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
