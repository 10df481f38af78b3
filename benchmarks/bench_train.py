"""How fast does `lesion train frcnn` train, against a plain torchvision-reference loop, side by side?

The plain loop is torchvision's reference recipe (``references/detection/engine.py``,
``train_one_epoch``): ``model.train()``; for each batch of the loader: move to the device,
autocast when AMP, ``loss_dict = model(images, targets)``, ``losses = sum(loss_dict.values())``,
``loss_value = losses.item()`` (the reference reads it before the backward pass, for its
finiteness check), ``optimizer.zero_grad()``, ``scaler.scale(losses).backward()``,
``scaler.step(optimizer)``, ``scaler.update()``. Both sides get the same model
(``build_model(arch, num_classes, size_px=...)`` after ``torch.manual_seed(seed)``), the same
dataset type (``PreparedSplit`` of the train split, uint8 images turned into float [0, 1] 3-channel
tensors on the device), the same augmentation (``build_augment``), the same DataLoader settings
(workers, batch size, ``collate``, ``pin_memory`` on CUDA; the plain loop shuffles with
``RandomSampler`` + ``BatchSampler(drop_last=False)``, so it sees exactly as many images per
epoch), Adam with the same learning rate, the same AMP setting and ``cudnn.benchmark = True``
(what ``lesion`` sets when not ``--deterministic``).

Each side runs in a fresh process (no state carried from the other), the sides alternate
``lesion plain lesion plain ...`` over ``--repeats``, and the first epoch of every run is warm-up
(not counted). Measured per run, over the timed epochs:

* lesion: ``engine.train`` (the library call behind ``lesion train frcnn``, with
  ``eval_train_images=0``; its validation pass between epochs is not in ``seconds``). images/s =
  the timed epochs' images (``metrics.csv`` ``images`` column) / the sum of their ``seconds``
  (the trainer's own epoch timer, loader waits included); data wait = the seconds-weighted mean
  of ``data_wait``.
* plain: its own timer around each epoch (iterator creation and worker start included, as in
  lesion's epoch timer; ``torch.cuda.synchronize()`` at both ends on CUDA); data wait = time in
  ``next(loader_iter)`` / epoch time.

Targets: median over repeats of (lesion images/s / plain images/s) >= 0.95; data wait < 5 % on
both sides.

    python benchmarks/bench_train.py                         # CPU, about 5 minutes on 2 cores
    python benchmarks/bench_train.py --device cuda --amp --arch resnet50_fpn --size 512 \\
        --batch-size 8 --workers 8 --patients 200 --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATIO_TARGET = 0.95
WAIT_TARGET = 0.05


# ---------------------------------------------------------------------------- data

def ensure_prepared(work: Path, patients: int, synth_size: int) -> Path:
    """A synthetic DeepLesion set of ``patients`` patients, prepared (universal task, patient
    split, a small validation split: lesion evaluates it between epochs, outside the timing)."""
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    prepared = work / f"prepared_p{patients}_s{synth_size}"
    if (prepared / "manifest.json").is_file():
        return prepared
    root = work / f"synth_p{patients}_s{synth_size}"
    print(f"synthesizing {patients} patients of {synth_size} px into {root} ...", flush=True)
    synthesize(root, patients=patients, seed=0, size_px=synth_size,
               workers=min(4, os.cpu_count() or 1), show_progress=False)
    prepare(root, prepared, PrepareOptions(task="universal", split="patient",
                                           ratios=(0.8, 0.1, 0.1)), show_progress=False)
    return prepared


# ---------------------------------------------------------------------------- the two sides

def side_lesion(args, prepared: Path, out: Path) -> dict:
    """``engine.train`` for ``args.epochs`` epochs; the timed epochs' figures from metrics.csv."""
    from deeplesion_cli import runlog
    from deeplesion_cli.frcnn import engine

    options = engine.TrainOptions(
        arch=args.arch, size_px=args.size, epochs=args.epochs, batch_size=args.batch_size,
        optimizer="adam", lr=args.lr, augment=args.augment, amp=args.amp, device=args.device,
        workers=args.workers, seed=args.seed, eval_train_images=0)
    engine.train(prepared, out, options, show_progress=False)
    rows = runlog.read_metrics(out / "metrics.csv")
    epochs = []
    previous = 0
    for row in rows:
        epochs.append({"images": row["images"] - previous, "seconds": row["seconds"],
                       "wait_s": row["data_wait"] * row["seconds"],
                       "images_per_s": row["images_per_s"]})
        previous = row["images"]
    return {"epochs": epochs}


def side_plain(args, prepared: Path, out: Path) -> dict:
    """torchvision's reference ``train_one_epoch`` loop, timed per epoch."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from deeplesion_cli.frcnn.checkpoint import pick_device
    from deeplesion_cli.frcnn.data import PreparedSplit, collate
    from deeplesion_cli.frcnn.model import build_model
    from deeplesion_cli.frcnn.transforms import build_augment

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True  # as lesion without --deterministic
    dataset = PreparedSplit(prepared, "train",
                            transform=build_augment(args.augment, out_size_px=args.size))
    torch.manual_seed(args.seed)
    model = build_model(args.arch, dataset.classes.num_classes, size_px=args.size)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and cuda)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    batch_sampler = BatchSampler(RandomSampler(dataset), args.batch_size, drop_last=False)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=args.workers,
                        collate_fn=collate, pin_memory=cuda)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    epochs = []
    for _ in range(args.epochs):
        model.train()
        n_images, wait_s = 0, 0.0
        sync()
        start = time.perf_counter()
        t_ready = start
        batches = iter(loader)
        while True:
            try:
                images, targets = next(batches)
            except StopIteration:
                break
            wait_s += time.perf_counter() - t_ready
            images = [im.to(device, non_blocking=True).float().div_(255.0) for im in images]
            images = [im.expand(3, -1, -1) if im.shape[0] == 1 else im for im in images]
            targets = [{"boxes": t["boxes"].to(device, non_blocking=True),
                        "labels": t["labels"].to(device, non_blocking=True)} for t in targets]
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=args.amp):
                loss_dict = model(images, targets)
                losses = sum(loss for loss in loss_dict.values())
            loss_value = losses.item()
            if not math.isfinite(loss_value):
                raise SystemExit(f"plain loop: loss is {loss_value}")
            optimizer.zero_grad()
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
            n_images += len(images)
            t_ready = time.perf_counter()
        sync()
        seconds = time.perf_counter() - start
        epochs.append({"images": n_images, "seconds": seconds, "wait_s": wait_s,
                       "images_per_s": n_images / seconds})
    return {"epochs": epochs}


def run_side(side: str, args, prepared: Path, out: Path) -> dict:
    """One side in a fresh Python process; returns its per-epoch figures."""
    command = [sys.executable, __file__, "--child", side, "--prepared", str(prepared),
               "--out", str(out), "--arch", args.arch, "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--epochs", str(args.epochs), "--device", args.device, "--lr", repr(args.lr),
               "--augment", args.augment, "--seed", str(args.seed)]
    if args.amp:
        command.append("--amp")
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{side} run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(result: dict, warmup: int) -> dict:
    timed = result["epochs"][warmup:]
    images = sum(e["images"] for e in timed)
    seconds = sum(e["seconds"] for e in timed)
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds,
            "data_wait": sum(e["wait_s"] for e in timed) / seconds,
            "per_epoch": [round(e["images_per_s"], 3) for e in timed],
            "warmup_images_per_s": [round(e["images_per_s"], 3)
                                    for e in result["epochs"][:warmup]]}


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v3_fpn")
    parser.add_argument("--size", type=int, default=128,
                        help="model input size (size_px) and augmentation output size")
    parser.add_argument("--synth-size", type=int, default=128, help="synthetic slice size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per run; the first is warm-up and not counted")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--augment", default="seed", choices=("seed", "none"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients", type=int, default=10, help="synthetic patients")
    parser.add_argument("--repeats", type=int, default=2,
                        help="lesion/plain pairs, run as lesion plain lesion plain ...")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads in both sides (0: torch's default)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder kept between runs (default: a temporary one)")
    parser.add_argument("--child", choices=("lesion", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    return args


def child(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    side = side_lesion if args.child == "lesion" else side_plain
    result = side(args, args.prepared, args.out)
    print(json.dumps(result))
    return 0


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    prepared = ensure_prepared(work, args.patients, args.synth_size)
    from deeplesion_cli.frcnn.data import PreparedSplit

    n_train = len(PreparedSplit(prepared, "train"))
    print(f"train frcnn benchmark: {args.arch}, input {args.size} px, batch {args.batch_size}, "
          f"{args.workers} workers, augment {args.augment}, amp {args.amp}, device "
          f"{args.device}, {n_train} training images x {args.epochs} epochs (1 warm-up) per run, "
          f"{args.repeats} repeat(s), {os.cpu_count()} CPUs", flush=True)
    rows = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        pair = {}
        for side in ("lesion", "plain"):
            out = work / f"run_{repeat}_{side}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            pair[side] = summarize(run_side(side, args, prepared, out), warmup=1)
            print(f"  repeat {repeat + 1} {side:6s}: {pair[side]['images_per_s']:7.2f} images/s "
                  f"over {pair[side]['images']} images (epochs {pair[side]['per_epoch']}, "
                  f"warm-up {pair[side]['warmup_images_per_s']}), data wait "
                  f"{100 * pair[side]['data_wait']:.1f}%  [{time.perf_counter() - t0:.0f} s "
                  "with start and eval]", flush=True)
        rows.append(pair)
    ratios = [p["lesion"]["images_per_s"] / p["plain"]["images_per_s"] for p in rows]
    ratio = statistics.median(ratios)
    wait_lesion = statistics.median(p["lesion"]["data_wait"] for p in rows)
    wait_plain = statistics.median(p["plain"]["data_wait"] for p in rows)

    print(f"\n{'repeat':>6} | {'lesion img/s':>12} | {'plain img/s':>11} | {'ratio':>6} | "
          f"{'lesion wait':>11} | {'plain wait':>10}")
    for i, (pair, r) in enumerate(zip(rows, ratios), 1):
        print(f"{i:>6} | {pair['lesion']['images_per_s']:12.2f} | "
              f"{pair['plain']['images_per_s']:11.2f} | {r:6.3f} | "
              f"{100 * pair['lesion']['data_wait']:10.1f}% | "
              f"{100 * pair['plain']['data_wait']:9.1f}%")
    print(f"  lesion images/s: metrics.csv (images / seconds of epochs 2..{args.epochs}); "
          "plain: own timer; same images per epoch")
    print(f"lesion/plain images/s: {ratio:.2f}x (median of {len(ratios)}; target >= "
          f"{RATIO_TARGET})")
    print(f"data wait: lesion {100 * wait_lesion:.1f}%, plain {100 * wait_plain:.1f}% "
          f"(target < {100 * WAIT_TARGET:.0f}%)")
    print(f"total {time.perf_counter() - started:.0f} s")
    ok = ratio >= RATIO_TARGET and wait_lesion < WAIT_TARGET
    print("  targets met" if ok else "  TARGET MISSED")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
