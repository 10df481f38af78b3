"""The options of ``lesion train frcnn`` and ``lesion predict frcnn``, declared once.

:data:`TRAIN_FRCNN` makes the command's click options, checks matrix TOML values, prints command
lines (``lesion matrix --print``, ``lesion demo``), records args.json and defines the fields of
:class:`deeplesion_cli.frcnn.options.TrainOptions`. Adding an option here adds it everywhere;
the engine then reads ``options.<name>``. No torch import: ``lesion --help`` reads this.
"""

from __future__ import annotations

import re

from deeplesion_cli.prepared import SPLITS
from deeplesion_cli.spec.core import Option, Spec

#: Faster R-CNN variants (builders in ``deeplesion_cli.frcnn.model``).
ARCHS = ("resnet50_fpn", "resnet50_fpn_v2", "mobilenet_v3_fpn", "resnet18_fpn", "vgg16_uld")
#: where initial weights come from (a local file; never downloaded)
PRETRAINED = ("none", "imagenet", "coco")
#: training augmentations (``deeplesion_cli.frcnn.transforms``)
AUGMENTS = ("seed", "none")
#: Default learning rates of the seed study: Adam 1e-4, SGD (momentum 0.9) 2e-5.
DEFAULT_LR = {"adam": 1e-4, "sgd": 2e-5}
#: ``--select`` choices and the evaluation key each one reads (higher is better for all).
SELECT_METRICS = {"map50": "mAP50", "map75": "mAP75", "map": "mAP", "froc4": "froc_sens4",
                  "mean_iou": "mean_iou"}
SCHEDULERS = ("none", "step", "cosine")

#: the forms ``--device`` takes, as error messages list them
DEVICE_FORMS = ("auto, cpu, cuda, cuda:N or N (a CUDA index, as darknet and Ultralytics take "
                "it; under torchrun a list such as 0,1 gives each rank of a machine its own GPU)")


def parse_device(text) -> tuple[str, tuple[int, ...]]:
    """``--device`` as typed -> ``(kind, CUDA indices)``: ``auto``/``cpu``/``cuda`` -> no index,
    ``cuda:1`` and ``1`` -> ``("cuda", (1,))``, ``0,1`` -> ``("cuda", (0, 1))`` (one per torchrun
    rank). ValueError naming the valid forms for anything else (``gpu``, ``cuda:x``, ``""``)."""
    value = str(text).strip().lower()
    if value in ("auto", "cpu", "cuda"):
        return value, ()
    match = re.fullmatch(r"cuda:(\d+)", value)
    if match:
        return "cuda", (int(match.group(1)),)
    compact = value.replace(" ", "")
    if re.fullmatch(r"\d+(,\d+)*", compact):
        indices = tuple(int(v) for v in compact.split(","))
        if len(set(indices)) != len(indices):
            raise ValueError(f"{text!r}: a CUDA index is listed twice")
        return "cuda", indices
    hint = " (a GPU is cuda, cuda:N or N)" if value in ("gpu", "gpus", "nvidia") else ""
    raise ValueError(f"{text!r}: expected {DEVICE_FORMS}{hint}")


class DeviceOption(Option):
    """``--device``: its value is checked by :func:`parse_device` wherever it comes from (command
    line, matrix TOML, library)."""

    def problem(self, value):
        message = super().problem(value)
        if message or value is None:
            return message
        try:
            parse_device(value)
        except ValueError as exc:
            return f"{self.cli_flag} {exc}"
        return None

    def click_type(self):
        import click

        class DeviceType(click.ParamType):
            name = "device"

            def convert(self, value, param, ctx):
                try:
                    parse_device(value)
                except ValueError as exc:
                    self.fail(str(exc), param, ctx)
                return value

        return DeviceType()


TRAIN_FRCNN = Spec("train frcnn", [
    Option("arch", "str", "resnet50_fpn", choices=ARCHS,
           help="torchvision Faster R-CNN variant; resnet18_fpn: a light ResNet-18 FPN from "
                "stride 8 (small lesions, CPUs); vgg16_uld: the DeepLesion paper's universal "
                "lesion detector."),
    Option("pretrained", "str", "none", choices=PRETRAINED,
           help="Start from ImageNet backbone or COCO detector weights (a local file: "
                "--weights, or torch's cache; never downloaded)."),
    Option("weights", "path", None,
           help="Weights file for --pretrained (or, with --pretrained none, a state_dict of this "
                "very model)."),
    Option("anchors", "path", None, help="anchors.json from `lesion anchors` (computed at --size)."),
    Option("size_px", "int", None, low=32, high=4096, flag="--size",
           help="Model input size in px (default: 240 with --augment seed, else the images' "
                "size)."),
    Option("epochs", "int", 110, low=1, resumable=True),
    Option("batch_size", "int", 4, low=1, help="Images per step and process."),
    Option("optimizer", "str", "adam", choices=tuple(DEFAULT_LR),
           help="sgd uses momentum 0.9 (--momentum)."),
    Option("lr", "float", None, low=0, low_open=True,
           help="Learning rate (default: 1e-4 adam, 2e-5 sgd, the seed study's)."),
    Option("momentum", "float", 0.9),
    Option("weight_decay", "float", 0.0),
    Option("scheduler", "str", "none", choices=SCHEDULERS),
    Option("lr_steps", "int_list", None, low=1, metavar="E1,E2",
           help="--scheduler step: epochs at which lr is multiplied by --lr-gamma (default: 2/3 "
                "and 8/9 of --epochs)."),
    Option("lr_gamma", "float", 0.1),
    Option("warmup_steps", "int", 0, low=0, help="Linear warm-up over this many optimiser steps."),
    Option("warmup_factor", "float", 0.001, low=0, cli=False),
    Option("clip_grad", "float", None, low=0, low_open=True, help="Clip the gradient L2 norm."),
    Option("balanced", "bool", False,
           help="Class-balanced batches (every class an equal share; an epoch ends when the "
                "largest class was seen once)."),
    Option("augment", "str", "seed", choices=AUGMENTS,
           help="seed: pad 50 px, rotate +-30 deg, crop 0-64 px per side, resize to --size; "
                "no flip."),
    Option("amp", "bool", False, help="Mixed precision (float16 on CUDA, bfloat16 on CPU)."),
    DeviceOption("device", "str", "auto", resumable=True, compared=False,
                 help="auto (CUDA when present), cpu, cuda, cuda:N or N (0 = cuda:0); under "
                      "torchrun, 0,1 gives each rank of a machine its GPU."),
    Option("workers", "int", 2, low=0, resumable=True, compared=False,
           help="Data loader worker processes."),
    Option("seed", "int", 0),
    Option("deterministic", "bool", False,
           help="Deterministic algorithms (slower on GPU); same seed, same weights."),
    Option("select", "str", "map50", choices=tuple(SELECT_METRICS),
           help="Validation metric that picks best.pt."),
    Option("eval_train_images", "int", 200, low=0,
           help="Size of the fixed training sample evaluated each epoch (0: none)."),
    Option("test", "bool", False, resumable=True, compared=False,
           help="After training, predict the test split from best.pt (else last.pt) into "
                "RUN/detections/ and score it into RUN/test/ (as `lesion eval --run`)."),
    Option("eval_batch_size", "int", None, low=1, cli=False, resumable=True),
    Option("score_thresh", "float", 0.001, low=0, high=1, cli=False),
    Option("detections_per_img", "int", 100, low=1, cli=False),
    Option("trainable_backbone_layers", "int", None, low=0, cli=False),
    Option("rois_per_image", "int", 512, low=1,
           help="Proposals sampled per image to train the box head (torchvision's "
                "box_batch_size_per_image); its cost is linear in this. 64 trains ~4x faster on "
                "a CPU."),
    Option("rpn_pre_nms_train", "int", 2000, low=1,
           help="RPN proposals kept per feature level before NMS, in training."),
    Option("rpn_post_nms_train", "int", 2000, low=1,
           help="RPN proposals kept after NMS, in training."),
    Option("rpn_post_nms_test", "int", 1000, low=1,
           help="RPN proposals kept after NMS at inference (each epoch's evaluation and `lesion "
                "predict frcnn`); the box head's cost is linear in it."),
    Option("rpn_score_thresh", "float", None, low=0, high=1, high_open=True,
           help="Drop proposals with a lower objectness (default: the arch's, 0.05 for "
                "mobilenet_v3_fpn, else 0). Use 0 from random weights, whose early objectness "
                "falls below any threshold."),
    Option("nms_iou", "float", 0.5, low=0, high=1, low_open=True,
           help="IoU above which the box head's non-maximum suppression drops the lower-scored "
                "box at inference (torchvision 0.5; py-faster-rcnn tested with 0.3). Lesions "
                "rarely overlap: 0.3 removes the near-duplicate boxes that cost AP."),
    Option("threads", "int", None, low=1, compared=False,
           help="CPU threads per process (torch intra-op). Default: the cores this process may "
                "use, shared by the torchrun ranks on this machine. Kept by --resume."),
    Option("log_every", "int", 50, low=1, cli=False, resumable=True),
    Option("save_every", "int", None, low=1, metavar="N", resumable=True, compared=False,
           help="Also keep the weights of every N-th epoch and of the last one as "
                "RUN/epochs/epoch_0010.pt (weights only, the size of best.pt each), for "
                "`lesion eval --run NAME=RUN --checkpoint every` (mAP over training). "
                "Default: keep none."),
])

PREDICT_FRCNN = Spec("predict frcnn", [
    Option("split", "str", "test", choices=SPLITS),
    Option("batch_size", "int", 8, low=1),
    Option("score_thresh", "float", 0.001, low=0, high=1,
           help="Score floor (low, so that AP sees the whole curve)."),
    Option("max_dets", "int", 100, low=1, help="Detections kept per image."),
    Option("nms_iou", "float", None, low=0, high=1, low_open=True,
           help="Box NMS IoU (default: the run's --nms-iou)."),
    DeviceOption("device", "str", "auto",
                 help="auto (CUDA when present), cpu, cuda, cuda:N or N (0 = cuda:0)."),
    Option("allow_other_render", "bool", False,
           help="Predict even when PREPARED makes its pixels otherwise (--window, --context, "
                "--spacing of `lesion prepare`) than the folder the model was trained on, e.g. "
                "to measure robustness to the window."),
    Option("amp", "bool", False,
           help="float16 inference on CUDA (faster; box coordinates come out rounded to "
                "0.25-0.5 px at 512 px). Ignored on CPU."),
    Option("workers", "int", 2, low=0),
    Option("draw", "int", None, low=0, compared=False, metavar="N",
           help="Also draw N images of the split (spread over it) with the predictions at "
                "score >= 0.25 (orange: matching a lesion at IoU 0.5, red: not) and the ground "
                "truth (green), as PNGs in OUT_draw/ beside the -o file."),
])
