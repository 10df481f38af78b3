"""The output folder of ``lesion eval --out``: metrics.json, per_class.csv, summary.md and plots.

The evaluator (:mod:`deeplesion_cli.evaluation.evaluate`) computes the metrics.json document;
this module writes it and what is drawn or tabulated from it (schema in docs/metrics.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.report import plots, tables
from deeplesion_cli.report.writer import unique_names


def write_eval_outputs(document: dict, out_dir: Path) -> list[Path]:
    """Write ``document`` (the metrics.json that
    :func:`~deeplesion_cli.evaluation.evaluate.evaluate_runs` returns) into ``out_dir``:
    metrics.json, per_class.csv, summary.md, froc.png and per run ``pr_<run>.png`` and
    ``confusion_<run>.png`` (run names made file-safe, and unique with ``_2``, ``_3``...). Files
    are written atomically; returns the paths written, in that order."""
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
    runs = list(document["runs"])
    # keep letters, digits, - _ . so that a run name cannot leave out_dir or break a path; two
    # names that become the same (a/b, a_b) get _2, _3... so that no run's plot overwrites another
    safe_names = unique_names(["".join(c if c.isalnum() or c in "-_." else "_" for c in run)
                               for run in runs])
    for run, safe in zip(runs, safe_names):
        block = document["runs"][run]
        for name, draw in ((f"pr_{safe}.png", plots.pr_curves),
                           (f"confusion_{safe}.png", plots.confusion_matrix)):
            draw(run, block, out_dir / name)
            written.append(out_dir / name)
    return written
