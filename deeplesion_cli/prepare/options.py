"""``lesion prepare`` options: everything that decides a prepared folder's content.

HU windows are (lo, hi) pairs in **HU** or ``"dicom"`` (each row's DICOM_windows); ``spacing_mm``
is the pixel size in **mm** to resample to. :meth:`PrepareOptions.to_json` is what the manifest
records and :meth:`PrepareOptions.render_json` what changes pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deeplesion_cli.deeplesion import hu, schema, splits
from deeplesion_cli.deeplesion.schema import LESION_TYPES


def parse_window(text: str):
    """``"-1024,3071"`` -> (-1024.0, 3071.0) HU; ``"dicom"`` -> ``"dicom"`` (each row's window)."""
    if text.strip().lower() == "dicom":
        return "dicom"
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected LO,HI in HU (e.g. -1024,3071) or 'dicom'")
    if not lo < hi or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"--window {text!r}: LO must be below HI")
    return (lo, hi)


def window_name(window) -> str:
    return "dicom" if window == "dicom" else f"{schema.format_number(window[0])},{schema.format_number(window[1])}"


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides the prepared folder's content (``workers`` does not)."""

    task: str = "typed"                       # "typed" (8 coarse types) or "universal" (1 class)
    split: str | None = None                  # "official" | "patient"; None: patient if typed
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    windows: tuple = (hu.DEFAULT_WINDOW_HU,)  # (lo, hi) HU pairs or "dicom"; 1 or 3 channels
    context: int = 1                          # 1: key slice; 3: key slice and neighbours as RGB
    spacing_mm: float | None = None           # resample to this pixel size
    keep_noisy: bool = False
    skip_invalid: bool = False

    def resolved_split(self) -> str:
        return self.split or ("patient" if self.task == "typed" else "official")

    def validate(self) -> None:
        if self.task not in ("typed", "universal"):
            raise ValueError(f"--task {self.task!r}: expected typed or universal")
        if self.resolved_split() not in ("official", "patient"):
            raise ValueError(f"--split {self.split!r}: expected official or patient")
        if self.context not in (1, 3):
            raise ValueError(f"--context {self.context}: expected 1 (key slice) or 3 "
                             "(key slice and its two neighbours as RGB)")
        if self.context == 3 and len(self.windows) != 1:
            raise ValueError("--context 3 fills the three channels with slices; give one --window")
        if len(self.windows) not in (1, 3):
            raise ValueError(f"{len(self.windows)} --window options: a PNG holds 1 (grey) or 3 "
                             "(RGB) channels, so give one window or three")
        ratios = tuple(self.ratios)
        if (len(ratios) != 3 or any(not r >= 0 for r in ratios)
                or not abs(sum(ratios) - 1.0) <= splits.RATIOS_TOLERANCE + 1e-9):
            raise ValueError(f"--ratios {','.join(map(str, ratios))}: expected three "
                             "non-negative train, val and test shares summing to 1")
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise ValueError(f"--spacing {self.spacing_mm}: must be a positive number of mm")

    def to_json(self) -> dict:
        out = {
            "task": self.task,
            "split": self.resolved_split(),
            "windows_hu": [window_name(w) for w in self.windows],
            "context": self.context,
            "spacing_mm": self.spacing_mm,
            "keep_noisy": self.keep_noisy,
            "skip_invalid": self.skip_invalid,
        }
        if self.resolved_split() == "patient":
            out["ratios"] = list(self.ratios)
            out["seed"] = self.seed
        return out

    def render_json(self) -> dict:
        """The options that change pixels (a change re-renders every image)."""
        return {"windows_hu": [window_name(w) for w in self.windows], "context": self.context,
                "spacing_mm": self.spacing_mm, "png_compress_level": hu.PNG_COMPRESS_LEVEL}


def categories_for(task: str) -> list[dict]:
    """COCO categories; the typed task keeps DeepLesion's type codes 1..8 as category ids."""
    if task == "universal":
        return [{"id": 1, "name": "lesion", "supercategory": "lesion"}]
    return [{"id": code, "name": name, "supercategory": "lesion"}
            for code, name in sorted(LESION_TYPES.items())]

