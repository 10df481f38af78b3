"""Where ``lesion eval`` reads its ground truth from: a COCO json, or a prepared folder's split.

The output folder (metrics.json, its tables and plots) is written by ``write_eval_outputs`` in
the package that draws and writes tables; the evaluator only computes.
"""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli.formats.groundtruth import EvalInputError
from deeplesion_cli.prepared import Prepared


def resolve_ground_truth(path: Path, split: str = "test") -> tuple[Path, Path | None]:
    """``(COCO json, obj.names or None)`` of ``path``: a COCO json as given, or a prepared folder
    (then its ``coco/<split>.json`` and, when present, its ``obj.names``)."""
    path = Path(path)
    if path.is_dir():
        prepared = Prepared(path)
        coco_path = prepared.coco_path(split)
        if not coco_path.is_file():
            raise EvalInputError(f"{path}: not a prepared folder with coco/{split}.json "
                                 "(give a COCO json, or a folder written by lesion prepare)")
        names = prepared.names_path
        return coco_path, names if names.is_file() else None
    return path, None
