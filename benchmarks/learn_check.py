"""Does `lesion train frcnn` learn? Train from scratch on a synthetic set within a CPU time budget.

Steps (the library calls behind the CLI commands named):

1. ``lesion synth`` + ``lesion prepare --task universal --split patient``:
   ``synthesize(patients, size_px)`` and ``prepare(..., PrepareOptions(task="universal",
   split="patient"))`` in a work folder (kept with ``--work``, reused when it is there).
2. optional ``lesion anchors``: ``compute_anchors`` k-means anchors at the model input size
   (``--anchors-k``; 0 keeps the arch's default anchors), written as ``anchors.json`` and given to
   the trainer as ``--anchors``.
3. ``lesion train frcnn``: ``engine.train`` on the CPU, from scratch (no pretrained weights), in
   slices of one epoch (``stop_after`` + ``resume``) so that training stops inside the
   ``--budget-min`` wall-clock budget (per-epoch validation included). After the first epoch the
   run's ``epochs`` (the span of the learning-rate schedule) is set to what the budget allows
   (``overrides={"epochs": N}`` on resume), and lowered again if epochs get slower.
4. ``lesion predict frcnn`` + ``lesion eval``: ``predict`` of the run's ``best.pt`` (best val
   mAP50) over the val and the test split, each scored by ``read_detections`` +
   ``evaluate_runs`` (COCO AP at IoU 0.5).

Prints the per-epoch curve from ``metrics.csv``, val and test AP50 from predict + eval, and
PASS/FAIL of the val AP50 against ``--target`` (0.5); exits 1 on FAIL. The defaults are settings
that pass on a 2-core CPU in 15 minutes.

    python benchmarks/learn_check.py                      # defaults, about 16 minutes
    python benchmarks/learn_check.py --budget-min 5 --target 0.2 --work /tmp/lc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def ensure_prepared(work: Path, patients: int, synth_size: int, seed: int,
                    window: str | None = None) -> Path:
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, parse_window, prepare, window_name

    options = PrepareOptions(task="universal", split="patient")
    if window:
        options = PrepareOptions(task="universal", split="patient", windows=(parse_window(window),))
    tag = "_".join(window_name(w) for w in options.windows).replace(",", "_")
    prepared = work / f"prepared_p{patients}_s{synth_size}_seed{seed}_{tag}"
    if (prepared / "manifest.json").is_file():
        return prepared
    root = work / f"synth_p{patients}_s{synth_size}_seed{seed}"
    if not (root / "DL_info.csv").is_file():
        synthesize(root, patients=patients, seed=seed, size_px=synth_size,
                   workers=os.cpu_count() or 1, show_progress=False)
    prepare(root, prepared, options, show_progress=False)
    return prepared


def make_anchors(prepared: Path, k: int, size_px: int, out: Path) -> dict:
    from deeplesion_cli import anchors

    result = anchors.compute_anchors(prepared, clusters=k, size=(size_px, size_px))
    anchors.write_anchors_json(out, result)
    return anchors.to_json(result)


def evaluate_split(run: Path, prepared: Path, split: str, out_dir: Path,
                   device: str = "cpu") -> dict:
    """``lesion predict frcnn RUN PREPARED --split SPLIT`` then ``lesion eval PREPARED FILE``."""
    from deeplesion_cli.evaluation.data import load_ground_truth
    from deeplesion_cli.evaluation.evaluate import evaluate_runs
    from deeplesion_cli.evaluation.outputs import resolve_ground_truth
    from deeplesion_cli.formats.detections import read_detections
    from deeplesion_cli.frcnn.predict import predict

    out_json = out_dir / f"detections_{split}.json"
    result = predict(run, prepared, out_json, split=split, workers=0, device=device,
                     show_progress=False)
    gt_path, _ = resolve_ground_truth(prepared, split)
    gt = load_ground_truth(gt_path)
    document = evaluate_runs(gt, {"frcnn": read_detections(out_json, gt)},
                             ground_truth_path=str(gt_path))
    metrics = document["runs"]["frcnn"]
    return {"split": split, "checkpoint": result.checkpoint.name, "images": gt.n_images,
            "boxes": int(len(gt.image)), "detections": metrics["n_detections"],
            "AP50": metrics["coco"]["AP50"], "AP": metrics["coco"]["AP"],
            "froc_sens4": metrics["froc"]["sens"][metrics["froc"]["fps"].index(4)]}


def train_within_budget(prepared: Path, run: Path, options, budget_s: float, log) -> dict:
    from deeplesion_cli.frcnn import engine

    start = time.monotonic()
    epoch_times: list[float] = []
    t0 = time.monotonic()
    engine.train(prepared, run, options, stop_after=1, show_progress=False)
    epoch_times.append(time.monotonic() - t0)
    max_epochs, planned = options.epochs, options.epochs
    done = 1
    while done < max_epochs:
        elapsed = time.monotonic() - start
        # the slower of the mean epoch and the last one: the machine may be shared
        per_epoch = max(sum(epoch_times) / len(epoch_times), epoch_times[-1])
        fit = min(max_epochs, done + int((budget_s - elapsed) // per_epoch))
        if fit <= done:
            log(f"budget: {elapsed:.0f} s used, an epoch takes ~{per_epoch:.0f} s: stop after "
                f"epoch {done} of {planned}")
            break
        overrides = None
        if fit != planned:
            # re-planned every epoch (epochs get faster once the RPN drops weak proposals)
            log(f"budget: {elapsed:.0f} s used, ~{per_epoch:.0f} s per epoch: schedule spans "
                f"{fit} epochs (was {planned})")
            planned = fit
            overrides = {"epochs": planned}
        t0 = time.monotonic()
        engine.train(prepared, run, resume=True, overrides=overrides, stop_after=done + 1,
                     show_progress=False)
        epoch_times.append(time.monotonic() - t0)
        done += 1
    return {"epochs": done, "planned": planned, "seconds": time.monotonic() - start,
            "epoch_seconds": epoch_times}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=15.0,
                        help="wall-clock budget of training, per-epoch validation included")
    parser.add_argument("--target", type=float, default=0.5, help="val AP50 to reach")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--synth-size", type=int, default=128, help="synthetic slice size")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--window", default=None,
                        help="lesion prepare --window LO,HI in HU or 'dicom' (default: prepare's "
                             "own default window)")
    parser.add_argument("--arch", default="mobilenet_v3_fpn")
    parser.add_argument("--size", type=int, default=256, help="model input size (size_px)")
    parser.add_argument("--anchors-k", type=int, default=3,
                        help="k-means anchors at the input size (0: the arch's default anchors)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--scheduler", default="cosine", choices=("none", "step", "cosine"))
    parser.add_argument("--max-epochs", type=int, default=40,
                        help="schedule span before the budget is known (cut after epoch 1)")
    parser.add_argument("--augment", default="none", choices=("none", "seed"))
    parser.add_argument("--clip-grad", type=float, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (0: torch's default); 1 is the fastest on a "
                             "shared 2-core machine")
    parser.add_argument("--eval-train-images", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="the check is meant for the CPU; cuda explores settings faster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-name", default="run", help="run folder inside --work")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for data and the run (default: a temporary one, removed)")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    import torch

    from deeplesion_cli import runlog
    from deeplesion_cli.frcnn import engine
    from deeplesion_cli.frcnn.data import PreparedSplit

    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t_all:6.0f} s] {message}", flush=True)

    work = args.work or Path(tempfile.mkdtemp(prefix="learn_check_"))
    work.mkdir(parents=True, exist_ok=True)
    prepared = ensure_prepared(work, args.patients, args.synth_size, args.data_seed,
                               args.window)
    counts = {s: len(PreparedSplit(prepared, s)) for s in ("train", "val", "test")}
    log(f"data: {args.patients} synthetic patients of {args.synth_size} px, images {counts}")

    run = work / args.run_name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    anchors_path = None
    if args.anchors_k:
        anchors_path = run / "anchors.json"
        doc = make_anchors(prepared, args.anchors_k, args.size, anchors_path)
        log(f"anchors (k={args.anchors_k} at {args.size} px): {doc['torchvision']['sizes'][0]} "
            f"ratios {doc['torchvision']['aspect_ratios'][0]}, mean IoU {doc['mean_iou']:.3f}")
    options = engine.TrainOptions(
        arch=args.arch, pretrained="none", anchors=str(anchors_path) if anchors_path else None,
        size_px=args.size, epochs=args.max_epochs, batch_size=args.batch_size, optimizer="adam",
        lr=args.lr, scheduler=args.scheduler, warmup_steps=args.warmup_steps,
        clip_grad=args.clip_grad, augment=args.augment, device=args.device, workers=args.workers,
        seed=args.seed, eval_train_images=args.eval_train_images, select="map50")
    settings = (f"{args.arch} from scratch, input {args.size} px, batch {args.batch_size}, Adam "
                f"lr {args.lr:g} ({args.warmup_steps} warm-up steps, {args.scheduler} schedule), "
                f"augment {args.augment}, anchors "
                f"{'k-means k=' + str(args.anchors_k) if args.anchors_k else 'default'}, "
                f"{args.workers} loader worker(s), {torch.get_num_threads()} torch thread(s), "
                f"device {args.device}")
    log(f"train: {settings}; budget {args.budget_min:g} min")
    budget_s = args.budget_min * 60
    trained = train_within_budget(prepared, run, options, budget_s, log)

    rows = runlog.read_metrics(run / "metrics.csv")
    print(f"\n{'epoch':>5} {'loss':>8} {'lr':>9} {'train s':>8} {'img/s':>6} "
          f"{'val AP50':>8} {'val AP':>7} {'FROC@4':>7}")
    for row, wall in zip(rows, trained["epoch_seconds"]):
        def f(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{int(row['epoch']):>5} {row['loss']:8.4f} {row['lr']:9.3g} "
              f"{row['seconds']:8.1f} {row['images_per_s']:6.2f} "
              f"{f(row['val_mAP50'], '8.4f')} {f(row['val_mAP'], '7.4f')} "
              f"{f(row['val_froc_sens4'], '7.4f')}   ({wall:.0f} s with eval)")
    best_csv = max((r["val_mAP50"] or 0.0) for r in rows)
    log(f"trained {trained['epochs']} epochs in {trained['seconds'] / 60:.1f} min "
        f"(budget {args.budget_min:g} min); best metrics.csv val_mAP50 {best_csv:.4f}")

    val = evaluate_split(run, prepared, "val", run, args.device)
    test = evaluate_split(run, prepared, "test", run, args.device)
    for block in (val, test):
        log(f"lesion predict + eval, {block['split']} ({block['images']} images, "
            f"{block['boxes']} lesions, {block['checkpoint']}): AP50 {block['AP50']:.4f}, "
            f"AP {block['AP']:.4f}, FROC sens@4FP {block['froc_sens4']:.4f}")
    ok = val["AP50"] is not None and val["AP50"] >= args.target
    total_min = (time.monotonic() - t_all) / 60
    print(f"\nval AP50 {val['AP50']:.4f} (test {test['AP50']:.4f}) after "
          f"{trained['seconds'] / 60:.1f} min of training, {total_min:.1f} min in all: "
          f"{'PASS' if ok else 'FAIL'} (target >= {args.target})")
    print(json.dumps({"settings": settings, "val": val, "test": test,
                      "train_minutes": round(trained["seconds"] / 60, 2),
                      "total_minutes": round(total_min, 2), "epochs": trained["epochs"],
                      "pass": ok}))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
