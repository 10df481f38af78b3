"""How fast is `lesion eval`'s COCO evaluation, against pycocotools on the same files, in one run?

Generates a ground truth of 20,000 images (8 lesion classes, 1-2 boxes each) and 200,000
detections (three jittered copies of every box plus random boxes), writes both as json, then runs
each evaluator in its own process so that time and peak memory are its own:

* pycocotools: COCO(gt), loadRes(dets), then evaluate + accumulate + summarize (timed alone too);
* lesion: load_ground_truth + read_detections, then coco.evaluate (timed alone too);
* lesion eval, every metric (COCO, VOC, FROC, ...), for information.

Targets: lesion's COCO metrics >= 10x faster than pycocotools' evaluate+accumulate+summarize,
under 2 GB peak memory, and the 12 numbers equal within 1e-6.

    python benchmarks/bench_eval.py [--images 20000] [--detections 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PYCOCOTOOLS = r"""
import contextlib, io, json, resource, sys, time
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
gt_path, dt_path = sys.argv[1:3]
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(gt_path)
    dt = gt.loadRes(dt_path)
    t1 = time.perf_counter()
    e = COCOeval(gt, dt, "bbox"); e.evaluate(); e.accumulate(); e.summarize()
t2 = time.perf_counter()
print(json.dumps({"total_s": t2 - t0, "metrics_s": t2 - t1, "stats": list(e.stats),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

LESION = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from deeplesion_cli.evaluation import coco
from deeplesion_cli.formats.groundtruth import load_ground_truth
from deeplesion_cli.formats.detections import read_detections
gt_path, dt_path = sys.argv[1:3]
gt = load_ground_truth(gt_path)
dets = read_detections(dt_path, gt)
t1 = time.perf_counter()
stats = coco.evaluate(gt, dets)["stats"]
t2 = time.perf_counter()
print(json.dumps({"total_s": t2 - t0, "metrics_s": t2 - t1, "stats": list(stats.values()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

LESION_ALL = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from deeplesion_cli.formats.groundtruth import load_ground_truth
from deeplesion_cli.evaluation.evaluate import evaluate_runs
from deeplesion_cli.formats.detections import read_detections
gt_path, dt_path = sys.argv[1:3]
gt = load_ground_truth(gt_path)
document = evaluate_runs(gt, {"run": read_detections(dt_path, gt)})
t1 = time.perf_counter()
print(json.dumps({"total_s": t1 - t0, "metrics_s": t1 - t0, "stats": [],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_files(folder: Path, n_images: int, n_dets: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i:06d}.png", "width": 512, "height": 512}
              for i in range(n_images)]
    per_image = rng.integers(1, 3, n_images)
    image_of = np.repeat(np.arange(n_images), per_image)
    n_gt = len(image_of)
    wh = np.clip(rng.lognormal(3.4, 0.6, (n_gt, 2)), 4, 300)
    xy = rng.uniform(0, 512 - wh)
    cats = rng.integers(1, 9, n_gt)
    annotations = [{"id": k + 1, "image_id": int(image_of[k] + 1), "category_id": int(cats[k]),
                    "bbox": [round(float(v), 2) for v in (*xy[k], *wh[k])],
                    "area": round(float(wh[k, 0] * wh[k, 1]), 2), "iscrowd": 0}
                   for k in range(n_gt)]
    categories = [{"id": c, "name": f"type{c}"} for c in range(1, 9)]
    copies = np.repeat(np.arange(n_gt), 3)
    jitter = rng.normal(0, 4, (len(copies), 4))
    boxes = np.concatenate([xy, wh], axis=1)[copies] + jitter
    boxes[:, 2:] = np.abs(boxes[:, 2:]) + 1
    n_random = max(0, n_dets - len(copies))
    r_wh = np.clip(rng.lognormal(3.4, 0.6, (n_random, 2)), 4, 300)
    r_xy = rng.uniform(0, 512 - r_wh)
    det_image = np.concatenate([image_of[copies], rng.integers(0, n_images, n_random)])
    det_cat = np.concatenate([np.where(rng.random(len(copies)) < 0.9, cats[copies],
                                       rng.integers(1, 9, len(copies))),
                              rng.integers(1, 9, n_random)])
    det_box = np.concatenate([boxes, np.concatenate([r_xy, r_wh], axis=1)])[:n_dets]
    scores = rng.random(len(det_box)).round(4)
    results = [{"image_id": int(det_image[k] + 1), "category_id": int(det_cat[k]),
                "bbox": [round(float(v), 2) for v in det_box[k]], "score": float(scores[k])}
               for k in range(len(det_box))]
    gt_path, dt_path = folder / "gt.json", folder / "dets.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": categories}))
    dt_path.write_text(json.dumps(results))
    return gt_path, dt_path


def run(code: str, gt_path: Path, dt_path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(gt_path), str(dt_path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--detections", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        gt_path, dt_path = make_files(Path(tmp), args.images, args.detections)
        ref = run(PYCOCOTOOLS, gt_path, dt_path)
        ours = run(LESION, gt_path, dt_path)
        everything = run(LESION_ALL, gt_path, dt_path)
    diff = float(np.max(np.abs(np.asarray(ref["stats"]) - np.asarray(ours["stats"]))))
    speedup = ref["metrics_s"] / ours["metrics_s"]
    speedup_total = ref["total_s"] / ours["total_s"]
    print(f"\nCOCO bbox evaluation: {args.images} images, {args.detections} detections")
    print(f"  pycocotools evaluate+accumulate+summarize: {ref['metrics_s']:7.2f} s "
          f"(with loading {ref['total_s']:.2f} s), peak {ref['peak_mb']:.0f} MB")
    print(f"  lesion coco.evaluate                     : {ours['metrics_s']:7.2f} s "
          f"(with loading {ours['total_s']:.2f} s), peak {ours['peak_mb']:.0f} MB")
    print(f"  speed-up: {speedup:.1f}x metrics alone, {speedup_total:.1f}x with loading "
          f"(target >= 10x); max |stats difference| = {diff:.2e} (target <= 1e-6)")
    print(f"  lesion eval, every metric, with loading  : {everything['total_s']:7.2f} s, "
          f"peak {everything['peak_mb']:.0f} MB (target < 2048 MB)")
    ok = speedup >= 10 and diff <= 1e-6 and max(ours["peak_mb"], everything["peak_mb"]) < 2048
    print("  targets met" if ok else "  TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
