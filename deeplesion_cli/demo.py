"""``lesion demo``: the whole toolkit once, on synthetic data, on a laptop's CPU.

synth -> prepare (universal task, official split, soft-tissue window) -> anchors -> cfg -> a short
Faster R-CNN training (resnet18_fpn from random weights, with the CPU recipe of
``benchmarks/learn_check.py``) -> predict -> a short darknet training (when a darknet binary is
found) -> eval (both backends side by side) -> report. Every step is the library call the matching
``lesion`` command makes (:mod:`deeplesion_cli.steps`), and the console shows that command, built
from the same option declarations, so the demo doubles as a script to copy. The demo ends with
the headline figures: each detector's test AP50, AP, FROC sensitivity at 4 false positives per
image and its number of detections.

With the defaults (:class:`DemoOptions`) the Faster R-CNN learns enough in about 6 minutes of 2 CPU
cores to find most test lesions (held-out test AP50 above 0.3; README states the figures); the few
darknet iterations show the path and the learning rate rising above 0, not a trained YOLO (Debian's
darknet is single-threaded). Re-running continues: the synthetic data and the prepared folder are
rebuilt only when missing, a finished training is not repeated and an interrupted one is resumed.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from deeplesion_cli.spec.core import shell_line


#: The window the demo prepares with: soft tissue, where lesions show as a radiologist sees them
#: (the training default -1024..3071 HU spends 16 HU per grey level).
DEMO_WINDOW_HU = (-175.0, 275.0)


@dataclass(frozen=True)
class DemoOptions:
    patients: int = 60
    seed: int = 0
    synth_size_px: int = 256         # synthetic slice size (real DeepLesion: 512)
    model_size_px: int = 256         # Faster R-CNN input size
    epochs: int = 5
    arch: str = "resnet18_fpn"
    darknet_iterations: int = 40     # 0: skip darknet even when installed
    darknet_size_px: int = 128       # yolov3-tiny input (pjreddie darknet is single-threaded)
    darknet: str | None = None       # binary (default: $DARKNET, then PATH)
    workers: int | None = None


def frcnn_options(options: DemoOptions):
    """The demo's ``lesion train frcnn`` options: the CPU recipe of ``benchmarks/learn_check.py``
    (random weights; k-means anchors; 32 RoIs per image from 300 proposals, no RPN score
    threshold; box NMS at IoU 0.3; Adam 1e-3 with 50 warm-up steps and a cosine schedule; no
    augmentation)."""
    from deeplesion_cli.frcnn.options import TrainOptions

    return TrainOptions(
        arch=options.arch, size_px=options.model_size_px, epochs=options.epochs,
        batch_size=4, optimizer="adam", lr=1e-3, warmup_steps=50, scheduler="cosine",
        augment="none",
        rois_per_image=32, rpn_pre_nms_train=300, rpn_post_nms_train=300, rpn_post_nms_test=300,
        rpn_score_thresh=0.0, nms_iou=0.3, workers=1, eval_train_images=32, seed=options.seed)


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


def _line(words) -> str:
    return shell_line(words)


def run_demo(out_dir: Path, options: DemoOptions = DemoOptions(),
             log: Callable[[str], None] = print, show_progress: bool = True) -> DemoResult:
    """Run every step into ``out_dir`` (module docstring); ``log`` receives one line per step:
    the ``lesion`` command that step stands for, made by the same :mod:`deeplesion_cli.steps`
    function the command line and ``lesion matrix`` use."""
    from deeplesion_cli import anchors as anchors_lib
    from deeplesion_cli import steps
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare, window_name

    out = Path(out_dir)
    data_dir, prepared = out / "deeplesion", out / "prepared"
    notes: list[str] = []
    total = 9
    k = iter(range(1, total + 1))

    def step(words, numbered: bool = True) -> None:
        log(f"{f'[{next(k)}/{total}]' if numbered else '     '} {_line(words)}")

    step(["lesion", "synth", data_dir, "--patients", options.patients, "--seed", options.seed,
          "--size", options.synth_size_px])
    if not (data_dir / "DL_info.csv").is_file():
        synthesize(data_dir, patients=options.patients, seed=options.seed,
                   size_px=options.synth_size_px, workers=options.workers,
                   show_progress=show_progress)
    step(["lesion", "prepare", data_dir, prepared, "--task", "universal", "--split", "official",
          "--window", window_name(DEMO_WINDOW_HU)])
    prepared_result = prepare(data_dir, prepared,
                              PrepareOptions(task="universal", split="official",
                                             windows=(DEMO_WINDOW_HU,)),
                              workers=options.workers, show_progress=show_progress)
    notes += prepared_result.warnings

    size, dn_size = options.model_size_px, options.darknet_size_px
    # darknet: 6 anchors over its two heads; Faster R-CNN: 3 sizes (x 3 ratios) on every map
    anchors_json, frcnn_anchors_json = prepared / "anchors.json", prepared / "anchors-frcnn.json"
    for path, clusters, at in ((anchors_json, 6, dn_size), (frcnn_anchors_json, 3, size)):
        step(["lesion", "anchors", prepared, "--clusters", clusters, "--size", at, "-o", path],
             numbered=clusters == 6)
        anchor_result = anchors_lib.compute_anchors(prepared, clusters=clusters,
                                                    size=(at, at), seed=0)
        anchors_lib.write_anchors_json(path, anchor_result)

    binary = _darknet_binary(options.darknet) if options.darknet_iterations > 0 else None
    runs: dict[str, Path] = {}
    detections: dict[str, Path] = {}
    cfg_path = out / "yolov3-tiny.cfg"
    cfg_values = {"arch": "yolov3-tiny", "size": str(dn_size), "anchors": str(anchors_json),
                  "batch": 8, "subdivisions": 1,
                  "max_batches": max(options.darknet_iterations, 1)}
    step(steps.cfg_words(prepared, cfg_path, cfg_values, changed_only=True))
    steps.write_cfg(prepared, cfg_path, cfg_values)

    # Faster R-CNN: train (or resume / skip), then predict the test split
    from deeplesion_cli.frcnn import checkpoint as ckpt

    frcnn_run = out / "runs" / "frcnn"
    train_opts = dataclasses.replace(frcnn_options(options),
                                     anchors=str(frcnn_anchors_json.resolve()))
    step(steps.train_frcnn_words(prepared, frcnn_run, train_opts, changed_only=True))
    resume = (frcnn_run / "last.pt").is_file()
    if resume and ckpt.load(frcnn_run / "last.pt")["epoch"] >= options.epochs:
        log("      already trained")
    else:
        steps.train_frcnn(prepared, frcnn_run, train_opts, resume=resume,
                          overrides={"epochs": options.epochs} if resume else None,
                          show_progress=show_progress)
    runs["frcnn"] = frcnn_run
    detections["frcnn"] = out / "frcnn.json"
    predict_values = {"split": "test", "workers": 0}
    step(steps.predict_frcnn_words(frcnn_run, prepared, detections["frcnn"], predict_values),
         numbered=False)
    steps.predict_frcnn(frcnn_run, prepared, detections["frcnn"], predict_values,
                        show_progress=show_progress)

    yolo_run = out / "runs" / "yolo"
    yolo_values = {"darknet": binary}
    step(steps.train_yolo_words(prepared, cfg_path, yolo_run, yolo_values))
    if binary is None:
        reason = ("--darknet-iterations 0" if options.darknet_iterations <= 0
                  else "no darknet binary found (apt-get install darknet, or set $DARKNET)")
        log(f"      skipped: {reason}")
        notes.append(f"darknet skipped: {reason}")
    else:
        final = steps.final_weights(yolo_run, cfg_path)
        if final.is_file():
            log("      already trained")
        else:
            if yolo_run.exists():
                shutil.rmtree(yolo_run)  # a partial darknet run: a few iterations, start over
            steps.train_yolo(prepared, cfg_path, yolo_run, yolo_values,
                             show_progress=show_progress)
        runs["yolo"] = yolo_run
        detections["yolo"] = out / "yolo.json"
        step(steps.predict_yolo_words(prepared, cfg_path, final, detections["yolo"], yolo_values),
             numbered=False)
        steps.predict_yolo(prepared, cfg_path, final, detections["yolo"], yolo_values,
                           show_progress=show_progress)

    eval_dir = out / "eval"
    step(steps.evaluate_words(prepared, detections, split="test", out_dir=eval_dir))
    evaluation = steps.evaluate(prepared, detections, split="test", out_dir=eval_dir)
    notes += evaluation.document.get("warnings", [])

    report_dir = out / "report"
    step(steps.report_words(list(runs.values()), [eval_dir], prepared, report_dir))
    report = steps.report(list(runs.values()), [eval_dir], prepared, report_dir)
    notes += report.warnings
    log(f"[{next(k)}/{total}] done")
    return DemoResult(out, prepared, runs, detections, eval_dir, report.index,
                      evaluation.document, notes)


def headline(result: DemoResult, options: DemoOptions) -> list[str]:
    """The demo's figures in words, one line per detector: test AP50, AP, FROC sensitivity at
    4 FP/image, detections and images, and what was trained."""
    trained = {"frcnn": f"Faster R-CNN {options.arch}, {options.epochs} CPU epochs from random "
                        "weights",
               "yolo": f"darknet yolov3-tiny, {options.darknet_iterations} iterations from random "
                       "weights"}
    lines = []
    for name, block in result.metrics["runs"].items():
        coco, froc = block["coco"], block["froc"]
        sens4 = froc["sens"][froc["fps"].index(4)] if 4 in froc["fps"] else None

        def fmt(value):
            return "undefined" if value is None or value < 0 else f"{value:.3f}"

        line = (f"{name} ({trained.get(name, name)}): test AP50 {fmt(coco['AP50'])}, AP "
                f"{fmt(coco['AP'])}, FROC sensitivity at 4 FP/image {fmt(sens4)}; "
                f"{block['n_detections']} detections on {block['n_images']} test images")
        if block["n_detections"] == 0:
            line += " (no box reached the score floor: too few iterations to learn)"
        lines.append(line)
    return lines
