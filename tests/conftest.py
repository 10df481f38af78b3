"""Shared fixtures. Real DL_info.csv rows come from tests/data/deeplesion/ (851 public NIH rows,
see tests/data/README.md); pixel data is always made here, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deeplesion_cli.deeplesion import hu, schema
from deeplesion_cli.formats.groundtruth import Detections, ground_truth_from_dict

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "tests" / "data" / "deeplesion"
REAL_CSVS = ("DL_info_head693.csv", "DL_info_p89-100.csv")


def real_csv(name: str) -> Path:
    path = DATA_DIR / name
    assert path.is_file(), f"reference rows missing: {path} (see tests/data/README.md)"
    return path


def write_dataset(root: Path, rows: list[schema.LesionRow], newline: str = "\r\n",
                  neighbours: bool = False) -> Path:
    """A DeepLesion-format folder for ``rows``: DL_info.csv and, for each key slice, a 16-bit PNG
    of the row's Image_size (air at -1000 HU, a 400 HU square inside each lesion's box)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "DL_info.csv").write_bytes(schema.format_csv(rows, newline))
    by_file: dict[str, list[schema.LesionRow]] = {}
    for r in rows:
        by_file.setdefault(r.file_name, []).append(r)
    images = root / "Images_png"
    for group in by_file.values():
        first = group[0]
        width, height = first.image_size_px
        slice_hu = np.full((height, width), -1000.0)
        for r in group:
            x1, y1, x2, y2 = (int(round(v)) for v in r.box_xyxy_px0())
            slice_hu[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1] = 400.0
        ks = [first.key_slice_index]
        if neighbours:
            ks += [k for k in (first.key_slice_index - 1, first.key_slice_index + 1)
                   if first.slice_range[0] <= k <= first.slice_range[1]]
        for k in ks:
            path = first.slice_path(images, k)
            path.parent.mkdir(parents=True, exist_ok=True)
            offset = 100.0 * (k - first.key_slice_index)  # neighbours are told apart by HU
            hu.write_png_u16(path, hu.hu_to_png_u16(slice_hu + offset))
    return root


@pytest.fixture(scope="session")
def real_rows() -> list[schema.LesionRow]:
    rows = []
    for name in REAL_CSVS:
        parsed, errors = schema.read_csv(real_csv(name))
        assert errors == []
        rows += parsed
    return rows


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory):
    """A small synthetic DeepLesion (patients=10, 128 px), made once per test session."""
    from deeplesion_cli.deeplesion.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "deeplesion"
    result = synthesize(root, patients=10, seed=7, size_px=128, workers=2, show_progress=False)
    return root, result


# ---- small evaluation inputs, built by hand

def make_gt(n_images, anns, cats=((1, "a"),)):
    """``anns``: (image id = index, category id, [x, y, w, h])."""
    return ground_truth_from_dict({
        "images": [{"id": i, "file_name": f"{i}.png", "width": 512, "height": 512}
                   for i in range(n_images)],
        "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": list(b)}
                        for k, (im, c, b) in enumerate(anns)],
        "categories": [{"id": c, "name": n} for c, n in cats]})


def make_dets(rows):
    """``rows``: (image index, category id, [x, y, w, h], score), in file order."""
    if not rows:
        return Detections.empty()
    im, cat, box, score = zip(*rows)
    return Detections("<test>", np.asarray(im, np.int64), np.asarray(cat, np.int64),
                      np.asarray(box, np.float64).reshape(-1, 4), np.asarray(score, np.float64))


def darknet_safe_tmp(tmp_path_factory, name: str) -> Path:
    """A temporary folder darknet can use: pjreddie's darknet derives label paths by replacing
    "images", "raw" and "JPEGImages" in image paths and splits on whitespace, so a folder whose
    path holds either is skipped with the reason."""
    import re

    root = tmp_path_factory.mktemp(name)
    words = [w for w in ("images", "raw", "JPEGImages") if w in str(root)]
    if words or re.search(r"\s", str(root)):
        pytest.skip(f"the temporary folder {root} contains {words or 'whitespace'}, which "
                    "darknet cannot use")
    return root


def small_universal_prepared(base: Path) -> Path:
    """``base/prep``: 4 synthetic patients at 128 px, universal task, official split."""
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    synthesize(base / "dl", patients=4, size_px=128, workers=2, show_progress=False)
    prepare(base / "dl", base / "prep", PrepareOptions(task="universal", split="official"),
            workers=2, show_progress=False)
    return base / "prep"
