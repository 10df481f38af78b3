"""COCO instances files: boxes as ``[x, y, w, h]`` in pixels, the format pycocotools reads.

``lesion prepare`` writes one file per split. Box coordinates are 0-based continuous pixel
coordinates of the prepared image (the DeepLesion CSV's 1-based values minus 1, then scaled when
``--spacing`` resamples), and ``w = x2 - x1``, ``h = y2 - y1`` as in torchvision and pycocotools.
"""

from __future__ import annotations

import json
from pathlib import Path

from deeplesion_cli import atomic


def xyxy_to_xywh(box_xyxy_px) -> list[float]:
    """``(x1, y1, x2, y2)`` -> ``[x1, y1, x2 - x1, y2 - y1]``, all pixels."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy_px)
    return [x1, y1, x2 - x1, y2 - y1]


def xywh_to_xyxy(box_xywh_px) -> list[float]:
    """``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``, all pixels."""
    x, y, w, h = (float(v) for v in box_xywh_px)
    return [x, y, x + w, y + h]


def instances(images: list[dict], annotations: list[dict], categories: list[dict],
              description: str = "") -> dict:
    """Assemble a COCO instances document from already-built image/annotation/category dicts."""
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def dumps(document: dict) -> str:
    """Serialise deterministically (key order as built, one image or annotation per line)."""
    parts = ["{"]
    keys = list(document)
    for i, key in enumerate(keys):
        value = document[key]
        tail = "," if i < len(keys) - 1 else ""
        if isinstance(value, list) and value:
            items = ",\n  ".join(json.dumps(v, allow_nan=False) for v in value)
            parts.append(f' {json.dumps(key)}: [\n  {items}\n ]{tail}')
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)}{tail}")
    parts.append("}")
    return "\n".join(parts) + "\n"


def write(path: Path, document: dict) -> None:
    """Write a COCO document atomically."""
    atomic.write_text(path, dumps(document))
