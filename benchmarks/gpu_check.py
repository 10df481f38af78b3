"""GPU readiness of `lesion train frcnn`, side by side with a plain torchvision loop, on one CUDA device.

One script, at most 8 minutes on one GPU (data making included), printing:

1. images/s of `lesion train frcnn` (resnet50_fpn, `--amp`, 512 px, from random weights) against
   the plain torchvision-reference loop of ``bench_train.py`` on the same data, model, batch size,
   loader and AMP settings (target >= 0.95x), and the share of each epoch spent waiting for the
   loader (target < 5 %); the sides alternate in fresh processes, first epoch not timed;
2. the peak GPU memory of each side (``torch.cuda.max_memory_allocated``);
3. the held-out test AP50 of the lesion run after its epochs (`lesion predict frcnn` of its
   ``best.pt`` + `lesion eval`);
4. a dry check of the torchrun path: ``torchrun --nproc_per_node 1 -m deeplesion_cli train frcnn
   ... --stop-after 1`` with the NCCL backend on that one GPU (a single rank launched by torchrun
   joins a process group and trains under DistributedDataParallel, so the NCCL initialisation,
   the gradient all-reduce and the gathers of the per-epoch evaluation all run).

Without a CUDA device it says so and exits 2 (nothing is measured on the CPU here: use
``bench_train.py`` and ``learn_check.py`` there).

    python benchmarks/gpu_check.py                       # the defaults: about 6 minutes on an H100
    python benchmarks/gpu_check.py --epochs 4 --patients 200 --work /tmp/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402  (the two sides, shared with the CPU benchmark)

RATIO_TARGET = 0.95
WAIT_TARGET = 0.05


def side(args) -> int:
    """Child process: one side of the comparison, then its GPU memory peak on stdout."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    run = bench_train.side_lesion if args.child == "lesion" else bench_train.side_plain
    result = run(args, args.prepared, args.out)
    result["max_memory_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(result))
    return 0


def run_side(name: str, args, prepared: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", name, "--prepared", str(prepared),
               "--out", str(out), "--arch", args.arch, "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--epochs", str(args.epochs), "--device", "cuda", "--lr", repr(args.lr),
               "--augment", args.augment, "--seed", str(args.seed), "--amp"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{name} side failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lesion(*words, capture: bool = True) -> str:
    line = " ".join(str(w) for w in words)
    print(f"$ lesion {line}", flush=True)
    done = subprocess.run([sys.executable, "-m", "deeplesion_cli", *map(str, words)],
                          capture_output=capture, text=True)
    if done.returncode != 0:
        sys.stderr.write((done.stdout or "")[-4000:] + (done.stderr or "")[-4000:])
        raise SystemExit(f"lesion {line}: exit {done.returncode}")
    return done.stdout or ""


def held_out_ap50(run: Path, prepared: Path, work: Path) -> dict:
    detections = work / "test.json"
    lesion("predict", "frcnn", run, prepared, "--split", "test", "-o", detections, "--amp")
    doc = json.loads(lesion("eval", prepared, "--pred", f"lesion={detections}", "--split",
                            "test", "--json"))
    block = doc["runs"]["lesion"]
    return {"AP50": block["coco"]["AP50"], "AP": block["coco"]["AP"],
            "detections": block["n_detections"], "images": block["n_images"]}


def torchrun_check(prepared: Path, work: Path, args) -> tuple[bool, str]:
    """One torchrun rank with NCCL: it must train one epoch and write its metrics row."""
    run = work / "torchrun"
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "1", "-m", "deeplesion_cli", "train", "frcnn", str(prepared),
               "--out", str(run), "--arch", args.arch, "--size", str(args.size), "--epochs", "2",
               "--stop-after", "1", "--batch-size", str(args.batch_size), "--workers",
               str(args.workers), "--augment", args.augment, "--amp", "--device", "cuda",
               "--eval-train-images", "8"]
    print("$ " + " ".join(command[1:]), flush=True)
    env = dict(os.environ, NCCL_DEBUG="INFO")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    text = done.stdout + done.stderr
    nccl = [line for line in text.splitlines() if "NCCL INFO" in line and "version" in line]
    ok = done.returncode == 0 and (run / "last.pt").is_file()
    if ok:
        args_doc = json.loads((run / "args.json").read_text())
        detail = (f"world_size {args_doc['world_size']}, device {args_doc['device']}, "
                  f"{nccl[0].split('NCCL INFO', 1)[1].strip() if nccl else 'NCCL version not printed'}")
    else:
        detail = f"exit {done.returncode}: {text[-1500:]}"
    return ok, detail


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50_fpn")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--synth-size", type=int, default=512)
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per side; the first is warm-up and not timed")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--augment", default="none", choices=("none", "seed"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", choices=("lesion", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", default=True, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.child:
        return side(args)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs one (bench_train.py and learn_check.py are the "
              "CPU checks)")
        return 2
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    prepared = bench_train.ensure_prepared(work, args.patients, args.synth_size)
    print(f"gpu check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.arch} "
          f"--amp at {args.size} px, batch {args.batch_size}, {args.workers} workers, "
          f"{args.epochs} epochs per side (1 warm-up), data ready after "
          f"{time.monotonic() - started:.0f} s", flush=True)
    pairs = []
    for repeat in range(args.repeats):
        pair = {}
        for name in ("lesion", "plain"):
            out = work / f"run_{repeat}_{name}"
            shutil.rmtree(out, ignore_errors=True)
            raw = run_side(name, args, prepared, out)
            pair[name] = dict(bench_train.summarize(raw, warmup=1),
                              max_memory_mb=raw["max_memory_mb"], out=out)
            print(f"  {name:6s}: {pair[name]['images_per_s']:8.1f} images/s, data wait "
                  f"{100 * pair[name]['data_wait']:.1f}%, GPU memory peak "
                  f"{pair[name]['max_memory_mb']:.0f} MiB  [{time.monotonic() - started:.0f} s]",
                  flush=True)
        pairs.append(pair)
    ratio = statistics.median(p["lesion"]["images_per_s"] / p["plain"]["images_per_s"]
                              for p in pairs)
    wait = statistics.median(p["lesion"]["data_wait"] for p in pairs)
    held_out = held_out_ap50(pairs[-1]["lesion"]["out"], prepared, work)
    nccl_ok, nccl_detail = torchrun_check(prepared, work, args)

    last = pairs[-1]
    print(f"\n{'':24} {'lesion':>12} {'plain loop':>12}")
    print(f"{'images/s':24} {last['lesion']['images_per_s']:12.1f} "
          f"{last['plain']['images_per_s']:12.1f}")
    print(f"{'loader wait':24} {100 * last['lesion']['data_wait']:11.1f}% "
          f"{100 * last['plain']['data_wait']:11.1f}%")
    print(f"{'GPU memory peak (MiB)':24} {last['lesion']['max_memory_mb']:12.0f} "
          f"{last['plain']['max_memory_mb']:12.0f}")
    print(f"lesion/plain images/s: {ratio:.3f}x (target >= {RATIO_TARGET}); loader wait "
          f"{100 * wait:.1f}% (target < {100 * WAIT_TARGET:.0f}%)")
    print(f"held-out test AP50 after {args.epochs} epochs from random weights: "
          f"{held_out['AP50']:.4f} (AP {held_out['AP']:.4f}, {held_out['detections']} detections "
          f"on {held_out['images']} images)")
    print(f"torchrun + NCCL, 1 rank: {'OK' if nccl_ok else 'FAILED'} ({nccl_detail})")
    minutes = (time.monotonic() - started) / 60
    print(f"total {minutes:.1f} min (target <= 8)")
    ok = ratio >= RATIO_TARGET and wait < WAIT_TARGET and nccl_ok
    print("  targets met" if ok else "  TARGET MISSED")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
