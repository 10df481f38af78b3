"""The options of ``lesion eval`` and ``lesion report`` that a matrix file may set, declared once.

Inputs (ground truth, detection files, run folders) and outputs (``--out``) are the commands'
plumbing and stay in ``deeplesion_cli.cli``.
"""

from __future__ import annotations

from deeplesion_cli.spec.core import Option, Spec

EVAL = Spec("eval", [
    Option("iou", "float", 0.5, low=0, high=1,
           help="IoU of VOC, darknet, seed-protocol and at-score metrics (seed study: 0.21)."),
    Option("score", "float", 0.25,
           help="Score threshold of precision/recall/F1, confusion matrix and box sizes."),
    Option("froc_strict", "bool", False,
           help="Also report the strict FROC variant (plain IoU, duplicates are FPs)."),
    Option("bootstrap", "int", 0, low=0,
           help="Patient-level resamples for 95% intervals (and the paired difference)."),
    Option("seed", "int", 0, help="Bootstrap seed."),
    Option("workers", "int", None, low=1, compared=False, metavar="N",
           help="Processes for the bootstrap (default: all cores this process may use); the "
                "intervals do not depend on it."),
])

REPORT = Spec("report", [
    Option("pdf", "bool", False, help="Also a PDF of every figure."),
    Option("images", "str_list", (), flag="--image", aliases=("--images",), metavar="NAME",
           show_default=False,
           help="Also overlay this image (file name; repeat or comma-separate)."),
    Option("n_overlay", "int", 4, low=0, help="Best and worst images drawn per run."),
])
