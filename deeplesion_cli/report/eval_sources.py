"""What an evaluation's overlays are drawn from: its ground truth, the images, and each run's
detection file, found from ``metrics.json``.

The rules: the ground truth is metrics.json's ``ground_truth`` (tried as given, against the
current directory, against the eval folder, then as ``<prepared>/coco/<its file name>``); the
images are ``<folder>/<split>/<file name>`` of the prepared folder that holds it (or of
``prepared``); a run's detections are ``runs.<name>.detections`` (a path, or ``{"path": ...,
"format": ...}``), else a top-level ``detections: {<name>: path}``, a relative path tried
against the current directory, then the eval folder. Whatever is missing or unreadable costs the
overlays of that evaluation or run only, and becomes a warning.
"""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli.formats.detections import read_detections, read_names
from deeplesion_cli.formats.groundtruth import (Detections, EvalInputError, GroundTruth,
                                                load_ground_truth)
from deeplesion_cli.prepared import Prepared
from deeplesion_cli.report.inputs import EvalInfo
from deeplesion_cli.report.writer import ReportWriter


def resolve_path(path_text: str, *bases: Path) -> Path | None:
    """The existing file ``path_text`` names: as given when absolute, else against the current
    directory, then each of ``bases``; None when none exists."""
    p = Path(path_text)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p] + [b / p for b in bases]
    return next((c for c in candidates if c.exists()), None)


def _image_dirs(root: Path, split: str) -> list[Path]:
    """Where ``root``'s images of ``split`` may be: the manifest's folder for it, then
    ``root/<split>``. A manifest that cannot be read only loses its entry."""
    dirs = []
    try:
        listed = Prepared(root).image_dir(split)
    except (ValueError, TypeError, AttributeError, OSError):
        listed = None
    if listed is not None and listed != root / split:
        dirs.append(listed)
    return dirs + [root / split]


class EvalSources:
    """The ground truth of one evaluation, its images, and the detections of its runs.

    ``gt`` is None when the ground truth cannot be found or read (a warning says why).
    """

    def __init__(self, ev: EvalInfo, prepared: Path | None, w: ReportWriter):
        self.ev, self.w = ev, w
        self.gt: GroundTruth | None = None
        self.image_dirs: list[Path] = []
        self.names_path: Path | None = None
        gt_text = str(ev.document.get("ground_truth") or "")
        gt_path = resolve_path(gt_text, ev.path) if gt_text else None
        if gt_path is None and gt_text and prepared is not None:
            candidate = Prepared(prepared).coco_path(Path(gt_text).stem)
            gt_path = candidate if candidate.is_file() else None
        if gt_path is None or not gt_path.is_file():
            w.warn(f"eval {ev.label}: ground truth {gt_text!r} not found (from {ev.path}); "
                   "no overlays for it")
            return
        try:
            self.gt = load_ground_truth(gt_path)
        except EvalInputError as exc:
            w.warn(f"eval {ev.label}: {exc}; no overlays for it")
            return
        split = gt_path.stem
        folder = gt_path.parent.parent if gt_path.parent.name == "coco" else gt_path.parent
        for root in [folder] + ([Path(prepared)] if prepared is not None else []):
            self.image_dirs += _image_dirs(root, split)
            names = Prepared(root).names_path
            if self.names_path is None and names.is_file():
                self.names_path = names
        self.image_dirs.append(gt_path.parent)

    def image_path(self, index: int) -> Path | None:
        """The image file of ground-truth image ``index`` (by file name, then basename)."""
        name = self.gt.image_names[index]
        for d in self.image_dirs:
            for candidate in (d / name, d / Path(name).name):
                if candidate.is_file():
                    return candidate
        return None

    def detections(self, name: str, block: dict) -> Detections | None:
        """Run ``name``'s detections (``block``: its metrics.json block), or None with a
        warning."""
        entry = block.get("detections")
        if entry is None:
            entry = (self.ev.document.get("detections") or {}).get(name)
        fmt = block.get("detections_format")
        if isinstance(entry, dict):
            fmt = entry.get("format", fmt)
            entry = entry.get("path")
        label = f"eval {self.ev.label}: run {name}"
        if not entry:
            self.w.warn(f"{label}: metrics.json records no detection file "
                        "(runs.<name>.detections); no overlays for it")
            return None
        path = resolve_path(str(entry), self.ev.path)
        if path is None:
            self.w.warn(f"{label}: detection file {entry} not found; no overlays for it")
            return None
        try:
            names = read_names(self.names_path) if self.names_path else None
            dets = read_detections(path, self.gt, fmt=None if fmt in (None, "auto") else fmt,
                                   names=names, class_base=block.get("class_base"))
        except (EvalInputError, OSError) as exc:
            self.w.warn(f"{label}: {exc}; no overlays for it")
            return None
        if block.get("n_detections") is not None and len(dets) != block["n_detections"]:
            self.w.warn(f"{label}: {path} holds {len(dets)} detections, metrics.json counted "
                        f"{block['n_detections']}: the file changed since the evaluation; "
                        "overlays show the file as it is now")
        return dets
