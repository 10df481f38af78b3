"""Where ``lesion eval`` reads from and writes to: ground truth lookup and the output folder."""

from __future__ import annotations

import json
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.evaluation.data import EvalInputError


def resolve_ground_truth(path: Path, split: str = "test") -> tuple[Path, Path | None]:
    """A COCO json, or a prepared folder (then ``coco/<split>.json`` and its ``obj.names``)."""
    path = Path(path)
    if path.is_dir():
        coco_path = path / "coco" / f"{split}.json"
        if not coco_path.is_file():
            raise EvalInputError(f"{path}: not a prepared folder with coco/{split}.json "
                                 "(give a COCO json, or a folder written by lesion prepare)")
        names = path / "obj.names"
        return coco_path, names if names.is_file() else None
    return path, None


def write_outputs(document: dict, out_dir: Path) -> list[Path]:
    """metrics.json, per_class.csv, summary.md and the PNG plots; returns the paths written."""
    from deeplesion_cli.report import plots, tables

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def text(name: str, content: str) -> None:
        atomic.write_text(out_dir / name, content)
        written.append(out_dir / name)

    text("metrics.json", json.dumps(document, indent=1, allow_nan=False) + "\n")
    text("per_class.csv", tables.per_class_csv(document))
    text("summary.md", tables.summary_markdown(document))
    plots.froc_curves(document["runs"], out_dir / "froc.png")
    written.append(out_dir / "froc.png")
    for run, block in document["runs"].items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run)
        for name, draw in ((f"pr_{safe}.png", plots.pr_curves),
                           (f"confusion_{safe}.png", plots.confusion_matrix)):
            draw(run, block, out_dir / name)
            written.append(out_dir / name)
    return written
