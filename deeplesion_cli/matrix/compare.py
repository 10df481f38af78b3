"""The comparison of a matrix: ``out/comparison.md`` and ``out/comparison.csv``, one row per
experiment with the options that differ between experiments of its backend (those the spec marks
``compared``), its status, and its detection count, COCO AP50, AP, FROC mean sensitivity at
0.5-4 FP/image and sensitivity at 4 FP/image from ``metrics.json``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.matrix.model import BACKENDS, Experiment, Matrix
from deeplesion_cli.matrix.options import backend_keys


#: comparison columns: (header, key in a row, path into a run's metrics block)
COMPARISON_METRICS = (
    ("detections", "n_detections", ("n_detections",)),
    ("COCO AP50", "ap50", ("coco", "AP50")),
    ("COCO AP", "ap", ("coco", "AP")),
    ("FROC mean@0.5-4", "froc_mean", ("froc", "mean_sens_0.5_4")),
    ("FROC sens@4", "sens4", ("froc", "sens", 3)),
)


def metric_at(block: dict | None, where: tuple):
    """The value at path ``where`` of a metrics block; None where any step is missing."""
    value = block
    for key in where:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def fmt_metric(value, key: str | None = None, markup: bool = False) -> str:
    """As the evaluation tables print numbers: 4 decimals, "–" when undefined; the detection
    count (``key`` "n_detections") whole, 0 as "0 (no detections)" (in red with ``markup``)."""
    if key == "n_detections" and value is not None:
        text = f"{value} (no detections)" if value == 0 else str(value)
        return f"[bold red]{text}[/bold red]" if markup and value == 0 else text
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return "-1" if value == -1 else f"{value:.4f}"


def _display_options(exp: Experiment) -> dict:
    """The options that decide an experiment's result, as shown in the comparison."""
    options = exp.options
    shown = {o.name: getattr(options, o.name) for o in backend_keys(exp.backend) if o.compared}
    if exp.backend == "frcnn" and "lr" in shown:  # the rate it trains with, not "default"
        shown["lr"] = options.resolved_lr()
    for key in ("weights", "anchors"):
        if shown.get(key):
            shown[key] = Path(shown[key]).name
    return shown


def _fmt_option(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _varied_and_shared(matrix: Matrix) -> tuple[dict, dict]:
    """Per backend: the option names that differ between its experiments, and the shared
    options (name -> value)."""
    varied, shared = {}, {}
    for backend in BACKENDS:
        shown = [_display_options(e) for e in matrix.experiments if e.backend == backend]
        if not shown:
            continue
        keys = list(shown[0])
        varied[backend] = [k for k in keys if k == "arch" or len({repr(s[k]) for s in shown}) > 1]
        shared[backend] = {k: shown[0][k] for k in keys
                           if k not in varied[backend] and shown[0][k] not in (None, False)}
    return varied, shared


def comparison_rows(matrix: Matrix, states: dict, document: dict | None,
                    failures: dict | None = None) -> list[dict]:
    """One dict per experiment (file order): experiment, backend, options (the ones that vary
    between experiments of its backend, as text), status, and the metrics of
    :data:`COMPARISON_METRICS` (floats; None without an evaluation)."""
    failures = failures or {}
    varied, _ = _varied_and_shared(matrix)
    runs = (document or {}).get("runs", {})
    rows = []
    for exp in matrix.experiments:
        shown = _display_options(exp)
        options = " ".join(f"{k}={_fmt_option(shown[k])}" for k in varied[exp.backend]
                           if shown[k] is not None)
        state = states.get(exp.name)
        if exp.name in runs:
            status = "evaluated"
        elif exp.name in failures:
            status = "failed"
        elif state is None:
            status = "unknown"
        elif state.trained:
            status = "trained, not predicted" if not state.predictions_current else "predicted"
        elif state.resume:
            status = f"interrupted ({state.progress})"
        else:
            status = "not trained"
        row = {"experiment": exp.name, "backend": exp.backend, "options": options,
               "status": status}
        for _, key, where in COMPARISON_METRICS:
            row[key] = metric_at(runs[exp.name], where) if exp.name in runs else None
        rows.append(row)
    return rows


def comparison_markdown(matrix: Matrix, rows: list[dict], document: dict | None) -> str:
    from deeplesion_cli.report.tables import markdown

    _, shared = _varied_and_shared(matrix)
    parts = [f"# Experiment matrix `{matrix.path.name}`\n"]
    where = (f"Prepared folder `{matrix.prepared}`, split `{matrix.split}`")
    if document is not None:
        first = next(iter(document["runs"].values()))
        where += (f" ({first['n_images']} images, {first['n_ground_truth']} boxes); metrics "
                  f"from `{matrix.eval_dir / 'metrics.json'}` (definitions: docs/metrics.md)")
    parts.append(where + ".\n")
    for backend, options in shared.items():
        if options:
            text = ", ".join(f"{k}={_fmt_option(v)}" for k, v in options.items())
            parts.append(f"Shared {backend} options: {text}.\n")
    header = ["experiment", "backend", "options", "status"] + [h for h, _, _ in
                                                               COMPARISON_METRICS]
    table = [[r["experiment"], r["backend"], r["options"], r["status"]]
             + [fmt_metric(r[key], key) for _, key, _ in COMPARISON_METRICS] for r in rows]
    parts.append(markdown(header, table))
    from deeplesion_cli.matrix.reported import reported_markdown

    section = reported_markdown(matrix, document)
    if section:
        parts.append("\n" + section)
    return "\n".join(parts)


def write_comparison(matrix: Matrix, rows: list[dict], document: dict | None
                     ) -> tuple[Path, Path]:
    """out/comparison.md and out/comparison.csv (full-precision numbers), atomically."""
    md = matrix.out / "comparison.md"
    atomic.write_text(md, comparison_markdown(matrix, rows, document))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["experiment"],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    csv_path = matrix.out / "comparison.csv"
    atomic.write_text(csv_path, buffer.getvalue())
    return md, csv_path
