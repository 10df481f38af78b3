"""``lesion demo``: the whole toolkit once, on synthetic data, on a laptop's CPU.

synth -> prepare (universal task, official split) -> anchors -> cfg -> a short Faster R-CNN
training (mobilenet_v3_fpn, from scratch) -> predict -> a few darknet iterations (when a darknet
binary is found) -> eval (both backends side by side) -> report. Every step is the library call
the matching ``lesion`` command makes, and the console shows that command, so the demo doubles as
a script to copy.

The point is the path, not the accuracy: a few minutes of CPU training from random weights gives
low APs (``benchmarks/learn_check.py`` trains long enough to learn). Re-running continues: the
synthetic data and the prepared folder are rebuilt only when missing, a finished training is not
repeated and an interrupted one is resumed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class DemoOptions:
    patients: int = 12
    seed: int = 0
    synth_size_px: int = 128         # synthetic slice size (real DeepLesion: 512)
    model_size_px: int = 128         # Faster R-CNN input size
    epochs: int = 3
    arch: str = "mobilenet_v3_fpn"
    darknet_iterations: int = 20     # 0: skip darknet even when installed
    darknet: str | None = None       # binary (default: $DARKNET, then PATH)
    workers: int | None = None


@dataclass
class DemoResult:
    out_dir: Path
    prepared: Path
    runs: dict[str, Path]            # backend name -> run folder
    detections: dict[str, Path]      # backend name -> COCO results json (test split)
    eval_dir: Path
    report_index: Path
    metrics: dict                    # metrics.json
    notes: list[str] = field(default_factory=list)


def _darknet_binary(explicit: str | None) -> str | None:
    import os

    for candidate in (explicit, os.environ.get("DARKNET"), "darknet"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def run_demo(out_dir: Path, options: DemoOptions = DemoOptions(),
             log: Callable[[str], None] = print, show_progress: bool = True) -> DemoResult:
    """Run every step into ``out_dir`` (module docstring); ``log`` receives one line per step."""
    import json

    from deeplesion_cli import anchors as anchors_lib
    from deeplesion_cli import atomic
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.evaluation.data import load_ground_truth
    from deeplesion_cli.evaluation.evaluate import EvalOptions, evaluate_runs
    from deeplesion_cli.evaluation.outputs import write_outputs
    from deeplesion_cli.formats.detections import read_detections
    from deeplesion_cli.prepare import PrepareOptions, prepare
    from deeplesion_cli.report.build import build_report

    out = Path(out_dir)
    data_dir, prepared = out / "deeplesion", out / "prepared"
    notes: list[str] = []
    steps = 9
    k = iter(range(1, steps + 1))

    log(f"[{next(k)}/{steps}] lesion synth {data_dir} --patients {options.patients} "
        f"--seed {options.seed} --size {options.synth_size_px}")
    if not (data_dir / "DL_info.csv").is_file():
        synthesize(data_dir, patients=options.patients, seed=options.seed,
                   size_px=options.synth_size_px, workers=options.workers,
                   show_progress=show_progress)
    log(f"[{next(k)}/{steps}] lesion prepare {data_dir} {prepared} --task universal "
        f"--split official")
    prepared_result = prepare(data_dir, prepared,
                              PrepareOptions(task="universal", split="official"),
                              workers=options.workers, show_progress=show_progress)
    notes += prepared_result.warnings

    size = options.model_size_px
    anchors_json = prepared / "anchors.json"
    log(f"[{next(k)}/{steps}] lesion anchors {prepared} --clusters 6 --size {size}")
    anchor_result = anchors_lib.compute_anchors(prepared, clusters=6, size=(size, size), seed=0)
    anchors_lib.write_anchors_json(anchors_json, anchor_result)

    binary = _darknet_binary(options.darknet) if options.darknet_iterations > 0 else None
    runs: dict[str, Path] = {}
    detections: dict[str, Path] = {}
    cfg_path = out / "yolov3-tiny.cfg"
    log(f"[{next(k)}/{steps}] lesion cfg {prepared} --arch yolov3-tiny --size {size} --anchors "
        f"{anchors_json} --batch 8 --subdivisions 1 --max-batches "
        f"{options.darknet_iterations} -o {cfg_path}")
    from deeplesion_cli.darknet.generate import generate_cfg

    manifest = json.loads((prepared / "manifest.json").read_text())
    atomic.write_text(cfg_path, generate_cfg(
        "yolov3-tiny", classes=len(manifest["classes"]), size=(size, size),
        anchors_px=json.loads(anchors_json.read_text())["anchors"], batch=8, subdivisions=1,
        max_batches=max(options.darknet_iterations, 1),
        n_train_images=manifest["counts"]["train"]["images"]))

    # Faster R-CNN: train (or resume / skip), then predict the test split
    from deeplesion_cli.frcnn import checkpoint as ckpt
    from deeplesion_cli.frcnn import engine
    from deeplesion_cli.frcnn.predict import predict

    frcnn_run = out / "runs" / "frcnn"
    train_opts = engine.TrainOptions(
        arch=options.arch, size_px=size, epochs=options.epochs, batch_size=4, lr=1e-3,
        warmup_steps=20, augment="none", workers=min(2, options.workers or 2),
        eval_train_images=16, seed=options.seed)
    log(f"[{next(k)}/{steps}] lesion train frcnn {prepared} --out {frcnn_run} --arch "
        f"{options.arch} --size {size} --epochs {options.epochs} --lr 0.001 --warmup-steps 20 "
        f"--augment none")
    resume = (frcnn_run / "last.pt").is_file()
    if resume and ckpt.load(frcnn_run / "last.pt")["epoch"] >= options.epochs:
        log("      already trained")
    else:
        engine.train(prepared, frcnn_run, train_opts, resume=resume,
                     overrides={"epochs": options.epochs} if resume else None,
                     show_progress=show_progress)
    runs["frcnn"] = frcnn_run
    detections["frcnn"] = out / "frcnn.json"
    log(f"      lesion predict frcnn {frcnn_run} {prepared} --split test -o "
        f"{detections['frcnn']}")
    predict(frcnn_run, prepared, detections["frcnn"], split="test", workers=0,
            show_progress=show_progress)

    log(f"[{next(k)}/{steps}] lesion train yolo {prepared} --cfg {cfg_path} --out "
        f"{out / 'runs' / 'yolo'}")
    if binary is None:
        reason = ("--darknet-iterations 0" if options.darknet_iterations <= 0
                  else "no darknet binary found (apt-get install darknet, or set $DARKNET)")
        log(f"      skipped: {reason}")
        notes.append(f"darknet skipped: {reason}")
    else:
        from deeplesion_cli.darknet import runner

        yolo_run = out / "runs" / "yolo"
        final = yolo_run / "backup" / f"{cfg_path.stem}_final.weights"
        if final.is_file():
            log("      already trained")
        else:
            if yolo_run.exists():
                shutil.rmtree(yolo_run)  # a partial darknet run: a few iterations, start over
            runner.train(prepared, cfg_path, yolo_run, darknet=binary,
                         show_progress=show_progress)
        runs["yolo"] = yolo_run
        detections["yolo"] = out / "yolo.json"
        log(f"      lesion predict yolo {prepared} --cfg {cfg_path} --weights {final} -o "
            f"{detections['yolo']}")
        runner.predict(prepared, cfg_path, final, split="test", out_json=detections["yolo"],
                       darknet=binary, show_progress=show_progress)

    eval_dir = out / "eval"
    preds = " ".join(f"--pred {name}={path}" for name, path in detections.items())
    log(f"[{next(k)}/{steps}] lesion eval {prepared} {preds} --split test --out {eval_dir}")
    gt_path = prepared / "coco" / "test.json"
    gt = load_ground_truth(gt_path)
    dets = {name: read_detections(path, gt) for name, path in detections.items()}
    document = evaluate_runs(gt, dets, EvalOptions(), ground_truth_path=str(gt_path))
    write_outputs(document, eval_dir)

    report_dir = out / "report"
    log(f"[{next(k)}/{steps}] lesion report {' '.join(str(p) for p in runs.values())} --eval "
        f"{eval_dir} --prepared {prepared} --out {report_dir}")
    report = build_report(list(runs.values()), [eval_dir], prepared, report_dir)
    notes += report.warnings
    log(f"[{next(k)}/{steps}] done")
    return DemoResult(out, prepared, runs, detections, eval_dir, report.index, document, notes)
