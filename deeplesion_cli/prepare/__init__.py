"""``lesion prepare``: DL_info.csv + Images_png -> a prepared folder (the contract between
commands).

The folder (documented in docs/formats.md)::

    OUT/train/<stem>.png + <stem>.txt     8-bit windowed image and its darknet label, same for val/, test/
    OUT/coco/<split>.json                 COCO instances per split
    OUT/train.txt valid.txt test.txt      absolute image paths for darknet
    OUT/obj.names obj.data data.yaml      darknet and Ultralytics data files
    OUT/backup/                           darknet's weights folder (it must exist before training)
    OUT/manifest.json                     options, version, counts, class map, input hashes
    OUT/rejected.csv                      with --skip-invalid: every row left out and why

Coordinates: the CSV is 1-based; boxes here are 0-based (CSV - 1, as the official 3DCE/MULAN
loaders do), clipped to the pixel grid [0, W-1] x [0, H-1], then mapped through the resampling.

Re-running is cheap and safe: a journal (``.lesion-prepare.journal``) records each image whose
PNG and label were renamed into place, keyed by the input files' size/mtime and the render
options, so a re-run renders only what is missing or changed and an interrupted run, re-run,
ends byte-identical to an uninterrupted one.

One module per step: :mod:`.options` (what decides the content: task, split, windows, context,
spacing), :mod:`.plan` (which image each row goes to, its boxes, label and render job),
:mod:`.rendering` (the render jobs, run in worker processes, and their journal), :mod:`.outputs`
(COCO, darknet lists and data files, rejected.csv, the manifest) and :mod:`.pipeline` (the
``prepare`` function that runs them). The folder's file names come from
:mod:`deeplesion_cli.prepared`.
"""

from deeplesion_cli.prepare.options import PrepareOptions, categories_for, parse_window, window_name
from deeplesion_cli.prepare.outputs import MANIFEST_FORMAT, write_rejected
from deeplesion_cli.prepare.pipeline import (
    MAX_ERRORS_SHOWN,
    PrepareInputError,
    PrepareResult,
    manifest_summary,
    prepare,
)
from deeplesion_cli.prepare.plan import PlannedImage
from deeplesion_cli.prepare.rendering import JOURNAL_NAME, ImageJob, render
from deeplesion_cli.prepared import LIST_NAMES, MANIFEST_NAME, REJECTED_NAME

__all__ = [
    "JOURNAL_NAME", "LIST_NAMES", "MANIFEST_FORMAT", "MANIFEST_NAME", "MAX_ERRORS_SHOWN",
    "REJECTED_NAME", "ImageJob", "PlannedImage", "PrepareInputError", "PrepareOptions",
    "PrepareResult", "categories_for", "manifest_summary", "parse_window", "prepare", "render",
    "window_name", "write_rejected",
]
