"""PNG figures of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, pdf: bool = False) -> list[Path]:
    """Write ``fig`` as PNG to ``path`` (and as PDF beside it, same stem, when ``pdf``)
    atomically; return the paths written."""
    path = Path(path)
    atomic.write_with(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    written = [path]
    if pdf:
        pdf_path = path.with_suffix(".pdf")
        atomic.write_with(pdf_path, lambda p: fig.savefig(p, format="pdf", bbox_inches="tight"))
        written.append(pdf_path)
    return written


def pr_curves(run: str, block: dict, path: Path, pdf: bool = False) -> list[Path]:
    """Precision-recall per class at IoU 0.5 (COCO's interpolated curve, 101 recall points).
    A run without detections has no curve (precision is undefined): the plot says so."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    if block.get("n_detections") == 0:
        ax.text(0.5, 0.5, "no detections:\nprecision undefined, recall 0", ha="center",
                va="center", transform=ax.transAxes)
    for cat_id, c in block["per_class"].items():
        curve = c.get("pr_curve_iou50")
        if not curve or c["AP50"] is None or c["AP50"] < 0 or block.get("n_detections") == 0:
            continue
        ax.plot(curve["recall"], curve["precision"], label=f"{c['name']} (AP50 {c['AP50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{run}: precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written


def froc_curves(runs: dict[str, dict], path: Path, pdf: bool = False) -> list[Path]:
    """FROC of every run on one plot: sensitivity against false positives per image (log x)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for run, block in runs.items():
        f = block["froc"]
        mean = f.get("mean_sens_0.5_4")
        what = "no detections" if block.get("n_detections") == 0 else \
            f"mean@0.5-4 {mean:.3f}" if mean is not None else "no lesions"
        line, = ax.plot(f["curve_fps"], f["curve_sens"], label=f"{run} ({what})")
        points = [(x, y) for x, y in zip(f["fps"], f["sens"]) if y is not None]
        if points:
            ax.plot(*zip(*points), "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set(xlabel="false positives per image", ylabel="sensitivity", ylim=(0, 1.02),
           xlim=(0.125, 32), title="FROC (official DeepLesion protocol)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written


def row_normalised(matrix):
    """Each row divided by its sum (a row summing to 0 stays 0): for a ground-truth class row,
    the share of its lesions found as each class or missed (background); for the background
    row, the share of the false positives per predicted class."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


def confusion_matrix(run: str, block: dict, path: Path, normalize: bool = False,
                     pdf: bool = False) -> list[Path]:
    """Confusion matrix counts (rows: ground truth, columns: prediction, background last);
    ``normalize``: each row divided by its sum (:func:`row_normalised`), cells as fractions."""
    import numpy as np

    plt = _pyplot()
    c = block["confusion"]
    matrix = np.asarray(c["matrix"], dtype=float).reshape(len(c["labels"]), len(c["labels"]))
    if normalize:
        matrix = row_normalised(matrix)
    labels = c["labels"]
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    top = 1.0 if normalize else matrix.max()
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            text = f"{matrix[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    what = "confusion matrix, row-normalised" if normalize else "confusion matrix"
    ax.set(xlabel="predicted", ylabel="ground truth", title=f"{run}: {what}")
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written


#: Panels of :func:`training_curves`: (title, metrics.csv column suffix or column).
CURVE_PANELS = (("loss", None), ("mAP50", "mAP50"), ("mAP (0.5:0.95)", "mAP"),
                ("mean IoU of TPs", "mean_iou"), ("FROC sensitivity @4 FP/img", "froc_sens4"))

#: What an empty metric panel says, by column suffix (default: :data:`EMPTY_PANEL`).
EMPTY_NOTES = {"mean_iou": "no true positive at score >= 0.25 yet:\nmean IoU undefined"}
EMPTY_PANEL = "no value logged"
#: :func:`training_curves` of a darknet run: one row per iteration, its loss and average loss,
#: and mAP50 where ``-map`` logged one (panels without any value are left out)
DARKNET_CURVES = dict(x="step", xlabel="iteration", panels=(("loss", None), ("mAP50", "mAP50")),
                      loss_columns=("loss", "avg_loss"), drop_empty=True)


def integer_ticks(axis) -> None:
    """Ticks of ``axis`` (an x axis of epochs or iterations) at whole numbers only, even when
    the axis spans one epoch (``min_n_ticks=1``: matplotlib's default of 2 falls back to
    fractions there)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def training_figure(rows: list[dict], title: str = "", *, x: str = "epoch",
                    xlabel: str | None = None, panels=CURVE_PANELS,
                    loss_columns: tuple[str, ...] = ("loss",), drop_empty: bool = False):
    """The figure of :func:`training_curves` (arguments there), not yet saved."""
    plt = _pyplot()
    xs = [r.get(x) for r in rows]

    def series_of(key):
        if key is None:
            return {c: [r.get(c) for r in rows] for c in loss_columns}
        return {split: [r.get(f"{split}_{key}") for r in rows] for split in ("train", "val")}

    if drop_empty:
        panels = [(name, key) for name, key in panels
                  if key is None or any(v is not None for vs in series_of(key).values()
                                        for v in vs)]
    panels = list(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (name, key) in zip(axes[0], panels):
        drawn = False
        for label, values in series_of(key).items():
            pts = [(e, v) for e, v in zip(xs, values) if v is not None and e is not None]
            if pts:
                drawn = True
                faint = key is None and label == "loss" and len(loss_columns) > 1
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3,
                        label=label, alpha=0.4 if faint else 1.0,
                        linewidth=0.8 if faint else 1.5)
        if not drawn:
            ax.text(0.5, 0.5, EMPTY_NOTES.get(key, EMPTY_PANEL), ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="0.4")
            known = [e for e in xs if e is not None]
            if known:   # the x range of the other panels
                lo, hi = min(known), max(known)
                ax.set_xlim(lo - 0.5, hi + 0.5) if lo == hi else ax.set_xlim(lo, hi)
        ax.set(title=name, xlabel=xlabel or x)
        integer_ticks(ax.xaxis)
        if key is not None:
            ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, y=1.04)  # above the panel titles
    return fig


def training_curves(rows: list[dict], path: Path, title: str = "", *, x: str = "epoch",
                    xlabel: str | None = None, panels=CURVE_PANELS,
                    loss_columns: tuple[str, ...] = ("loss",), drop_empty: bool = False,
                    pdf: bool = False) -> list[Path]:
    """The seed study's per-epoch curves from metrics.csv rows (:func:`runlog.read_metrics`):
    loss, and train vs val mAP50, mAP, mean IoU and FROC sensitivity at 4 FP/image, against the
    ``epoch`` column, with ticks at whole epochs (or iterations). Rows without a value leave a
    gap; a panel without any value says why (:data:`EMPTY_NOTES`).

    Options for other logs (the defaults draw what ``lesion train frcnn`` logs): ``x`` the
    column on the x axis (``"step"`` for darknet's per-iteration rows) and ``xlabel`` its label;
    ``panels`` (title, column suffix or None for the loss panel); ``loss_columns`` the columns of
    the loss panel (darknet: ``("loss", "avg_loss")``); ``drop_empty`` leaves out metric panels
    without a single value; ``pdf`` also writes a PDF beside the PNG. Returns the paths written.
    """
    plt = _pyplot()
    fig = training_figure(rows, title, x=x, xlabel=xlabel, panels=panels,
                          loss_columns=loss_columns, drop_empty=drop_empty)
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written


def class_histogram(counts: dict[str, dict[str, int]], path: Path, title: str = "",
                    pdf: bool = False) -> list[Path]:
    """Lesions per class and split: ``counts[split][class name]``, grouped bars (a group per
    class, a bar per split, its count written above it)."""
    import numpy as np

    plt = _pyplot()
    splits = list(counts)
    classes = list(dict.fromkeys(c for per in counts.values() for c in per))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(classes) * max(len(splits), 1) / 2 + 3),
                                    4))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(classes))
    for k, split in enumerate(splits):
        values = [counts[split].get(c, 0) for c in classes]
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, values, width, label=split)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 3 else 0,
                  ha="right" if len(classes) > 3 else "center")
    ax.set(ylabel="lesions", title=title or "lesions per class and split")
    ax.grid(alpha=0.3, axis="y")
    if splits:
        ax.legend(fontsize=8)
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written


def size_histograms(values: dict[str, list[float]], path: Path, xlabel: str = "long diameter (mm)",
                    title: str = "", pdf: bool = False) -> list[Path]:
    """One histogram per split (stacked panels, shared bins and x axis), with the median."""
    import numpy as np

    plt = _pyplot()
    splits = list(values) or ["(none)"]
    every = np.asarray([v for vs in values.values() for v in vs], dtype=float)
    every = every[np.isfinite(every)]
    edges = np.histogram_bin_edges(every, bins=min(30, max(5, int(np.sqrt(len(every)) * 2)))) \
        if len(every) else np.linspace(0, 1, 6)
    fig, axes = plt.subplots(len(splits), 1, figsize=(6, 1.8 * len(splits) + 0.8), sharex=True,
                             squeeze=False)
    for ax, split in zip(axes[:, 0], splits):
        v = np.asarray(values.get(split, []), dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=edges, color="tab:blue", alpha=0.8)
        if len(v):
            ax.axvline(float(np.median(v)), color="tab:red", linewidth=1,
                       label=f"median {np.median(v):.1f}")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylabel(f"{split}\n(n={len(v)})")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(title or f"{xlabel} per split")
    written = _save(fig, path, pdf)
    plt.close(fig)
    return written
