"""PNG figures of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic.write_with(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))


def pr_curves(run: str, block: dict, path: Path) -> None:
    """Precision-recall per class at IoU 0.5 (COCO's interpolated curve, 101 recall points)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for cat_id, c in block["per_class"].items():
        curve = c.get("pr_curve_iou50")
        if not curve or c["AP50"] < 0:
            continue
        ax.plot(curve["recall"], curve["precision"], label=f"{c['name']} (AP50 {c['AP50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{run}: precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
    plt.close(fig)


def froc_curves(runs: dict[str, dict], path: Path) -> None:
    """FROC of every run on one plot: sensitivity against false positives per image (log x)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for run, block in runs.items():
        f = block["froc"]
        line, = ax.plot(f["curve_fps"], f["curve_sens"], label=f"{run} "
                        f"(mean@0.5-4 {f['mean_sens_0.5_4']:.3f})")
        ax.plot(f["fps"], f["sens"], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set(xlabel="false positives per image", ylabel="sensitivity", ylim=(0, 1.02),
           xlim=(0.125, 32), title="FROC (official DeepLesion protocol)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def confusion_matrix(run: str, block: dict, path: Path) -> None:
    """Confusion matrix counts (rows: ground truth, columns: prediction, background last)."""
    import numpy as np

    plt = _pyplot()
    c = block["confusion"]
    matrix = np.asarray(c["matrix"], dtype=float)
    labels = c["labels"]
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="ground truth", title=f"{run}: confusion matrix")
    _save(fig, path)
    plt.close(fig)


#: Panels of :func:`training_curves`: (title, metrics.csv column suffix or column).
CURVE_PANELS = (("loss", None), ("mAP50", "mAP50"), ("mAP (0.5:0.95)", "mAP"),
                ("mean IoU of TPs", "mean_iou"), ("FROC sensitivity @4 FP/img", "froc_sens4"))


def training_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """The seed study's per-epoch curves from metrics.csv rows (:func:`runlog.read_metrics`):
    loss, and train vs val mAP50, mAP, mean IoU and FROC sensitivity at 4 FP/image, against the
    ``epoch`` column. Rows without a value leave a gap."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4 * len(CURVE_PANELS), 3.4))
    epochs = [r["epoch"] for r in rows]
    for ax, (name, key) in zip(axes, CURVE_PANELS):
        if key is None:
            series = {"loss": [r.get("loss") for r in rows]}
        else:
            series = {split: [r.get(f"{split}_{key}") for r in rows] for split in ("train", "val")}
        for label, values in series.items():
            pts = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3,
                        label=label)
        ax.set(title=name, xlabel="epoch")
        if key is not None:
            ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)
