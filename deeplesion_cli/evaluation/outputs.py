"""Where ``lesion eval`` reads its ground truth from: a COCO json, or a prepared folder's split.

The output folder (metrics.json, its tables and plots) is written by ``write_eval_outputs`` in
the package that draws and writes tables; the evaluator only computes.
"""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli.formats.groundtruth import EvalInputError
from deeplesion_cli.prepared import Prepared, PreparedError


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


def prepared_record(ground_truth: Path, coco_path: Path) -> dict | None:
    """What metrics.json records of the prepared folder the ground truth comes from: ``{"path"
    (absolute), "split", "config_hash"}`` when ``ground_truth`` is a prepared folder, or
    ``coco_path`` is one of the ``coco/<split>.json`` of a folder with a manifest; else None (a
    COCO file of anything else, or a manifest that cannot be read)."""
    coco_path = Path(coco_path).resolve()
    ground_truth = Path(ground_truth)
    folder = ground_truth if ground_truth.is_dir() else coco_path.parent.parent
    prepared = Prepared(folder)
    try:
        if not prepared.is_prepared():
            return None
        split = next((s for s in prepared.coco_splits()
                      if prepared.coco_path(s).resolve() == coco_path), None)
        if split is None:
            return None
        return {"path": str(folder.resolve()), "split": split,
                "config_hash": prepared.config_hash}
    except (PreparedError, OSError, AttributeError, TypeError):
        return None
