"""Ground truth and detections as flat numpy arrays: the one input every metric reads, and the
reader of COCO ground-truth files.

These types sit at the bottom of the package: the detection-file readers
(:mod:`deeplesion_cli.formats.detections`), the metrics, the report's overlays and the Faster
R-CNN backend all exchange them, and this module imports none of them.

Boxes are ``[x, y, w, h]`` in pixels (COCO's convention, 0-based continuous coordinates,
``w = x2 - x1``). Images are referred to by their **index** into ``GroundTruth.image_ids``
(sorted ascending, as pycocotools sorts them), categories by their COCO **id**. Arrays keep file
order: annotations in the order of the COCO file, detections in the order of their file; ties in
score are broken by that order, as pycocotools does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplesion_cli.errors import LesionInputError


class EvalInputError(LesionInputError):
    """A ground-truth or detection file that cannot be evaluated; the message names the file,
    the index or line, and the reason (bad input: exit 2; also a ValueError)."""


@dataclass
class GroundTruth:
    """COCO instances as arrays.

    ``image_ids`` (n_img,) int64 sorted; ``image_names`` file names in the same order;
    ``image_sizes`` (n_img, 2) width, height in pixels (0 when the file does not say);
    ``image_patients`` (n_img,) patient of each image (the image id itself when the file has no
    ``patient_index``), for patient-level bootstrap. ``categories``: (id, name) in file order.
    Per annotation (n_gt,): ``image`` index, ``category`` id, ``box_xywh`` (n_gt, 4) px,
    ``area`` (the annotation's ``area`` field, which COCO's area ranges use), ``iscrowd`` bool,
    ``diameter_mm`` long RECIST diameter in mm (NaN when absent), ``lesion_type`` (DeepLesion
    code 1..8 or -1, 0 when the file has no ``lesion_type``).
    """

    source: str
    image_ids: np.ndarray
    image_names: list[str]
    image_sizes: np.ndarray
    image_patients: np.ndarray
    categories: list[tuple[int, str]]
    image: np.ndarray
    category: np.ndarray
    box_xywh: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    diameter_mm: np.ndarray
    lesion_type: np.ndarray
    image_index_of_id: dict[int, int] = field(default_factory=dict, repr=False)
    image_index_of_name: dict[str, int] = field(default_factory=dict, repr=False)
    ambiguous_names: set[str] = field(default_factory=set, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def category_ids(self) -> list[int]:
        return [c for c, _ in self.categories]

    def subset(self, keep: np.ndarray) -> "GroundTruth":
        """The same images and categories with only the annotations where ``keep`` is True."""
        return GroundTruth(
            self.source, self.image_ids, self.image_names, self.image_sizes, self.image_patients,
            self.categories,
            self.image[keep], self.category[keep], self.box_xywh[keep], self.area[keep],
            self.iscrowd[keep], self.diameter_mm[keep], self.lesion_type[keep],
            self.image_index_of_id, self.image_index_of_name, self.ambiguous_names)


@dataclass
class Detections:
    """Detections as arrays (n_det,): ``image`` index into the ground truth's images,
    ``category`` id, ``box_xywh`` (n_det, 4) px, ``score``. File order is kept. ``reading``:
    how the reader interpreted the file, where it had to choose (e.g. Ultralytics' class-id base,
    :mod:`deeplesion_cli.formats.ultralytics`); stored in the run's metrics.json block."""

    source: str
    image: np.ndarray
    category: np.ndarray
    box_xywh: np.ndarray
    score: np.ndarray
    reading: dict = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.score)

    def subset(self, keep: np.ndarray) -> "Detections":
        return Detections(self.source, self.image[keep], self.category[keep],
                          self.box_xywh[keep], self.score[keep])

    @classmethod
    def empty(cls, source: str = "") -> "Detections":
        return cls(source, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)),
                   np.zeros(0))


def _number(value, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EvalInputError(f"{where}: {name} is {value!r}, not a number")
    if not math.isfinite(value):
        raise EvalInputError(f"{where}: {name} is {value!r}")
    return float(value)


def load_ground_truth(path: Path) -> GroundTruth:
    """Read a COCO instances json (what ``lesion prepare`` writes, or any COCO file)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise EvalInputError(f"{path}: not valid JSON: {exc}") from None
    return ground_truth_from_dict(document, str(path))


def ground_truth_from_dict(document: dict, source: str = "<ground truth>") -> GroundTruth:
    """A COCO instances document (already parsed) as a :class:`GroundTruth`; ``source`` names it
    in error messages. Boxes stay COCO's ``[x, y, w, h]`` pixels."""
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise EvalInputError(f"{source}: not a COCO instances file (no 'images' list)")
    images = document["images"]
    annotations = document.get("annotations") or []
    categories = document.get("categories") or []
    ids = []
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im:
            raise EvalInputError(f"{source}: images[{i}] has no 'id'")
        ids.append(im["id"])
    order = sorted(range(len(images)), key=lambda i: ids[i])
    if len(set(ids)) != len(ids):
        raise EvalInputError(f"{source}: image ids are not unique")
    image_ids = np.asarray([ids[i] for i in order], dtype=np.int64)
    names = [str(images[i].get("file_name", ids[i])) for i in order]
    patients = np.asarray([images[i].get("patient_index", ids[i]) for i in order], dtype=np.int64)
    sizes = np.asarray([[images[i].get("width", 0), images[i].get("height", 0)] for i in order],
                       dtype=np.float64).reshape(-1, 2)
    index_of_id = {int(v): k for k, v in enumerate(image_ids)}
    # File name, basename and stem all find an image, unless two images share one of them:
    # such a key would match silently the wrong image, so it is left out (and remembered).
    owners: dict[str, set[int]] = {}
    for k, name in enumerate(names):
        for key in (name, Path(name).name, Path(name).stem):
            owners.setdefault(key, set()).add(k)
    index_of_name = {key: next(iter(ks)) for key, ks in owners.items() if len(ks) == 1}
    ambiguous = {key for key, ks in owners.items() if len(ks) > 1}
    cats = []
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c:
            raise EvalInputError(f"{source}: categories[{i}] has no 'id'")
        cats.append((int(c["id"]), str(c.get("name", c["id"]))))
    known_cats = {c for c, _ in cats}
    n = len(annotations)
    image = np.zeros(n, np.int64)
    category = np.zeros(n, np.int64)
    box = np.zeros((n, 4))
    area = np.zeros(n)
    iscrowd = np.zeros(n, bool)
    diameter = np.full(n, np.nan)
    lesion_type = np.zeros(n, np.int64)
    for i, a in enumerate(annotations):
        where = f"{source}: annotations[{i}]"
        if not isinstance(a, dict):
            raise EvalInputError(f"{where}: not an object")
        if a.get("image_id") not in index_of_id:
            raise EvalInputError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in known_cats:
            raise EvalInputError(f"{where}: category_id {a.get('category_id')!r} is not in "
                                 "'categories'")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise EvalInputError(f"{where}: bbox must be [x, y, w, h]")
        box[i] = [_number(v, where, "bbox") for v in bbox]
        if box[i, 2] < 0 or box[i, 3] < 0:
            raise EvalInputError(f"{where}: bbox has a negative width or height")
        image[i] = index_of_id[a["image_id"]]
        category[i] = a["category_id"]
        area[i] = _number(a["area"], where, "area") if "area" in a else box[i, 2] * box[i, 3]
        iscrowd[i] = bool(a.get("iscrowd", 0))
        d = a.get("recist_diameters_mm")
        if isinstance(d, list) and d:
            diameter[i] = float(d[0])
        lesion_type[i] = int(a.get("lesion_type", 0))
    return GroundTruth(source, image_ids, names, sizes, patients, cats, image, category, box, area,
                       iscrowd, diameter, lesion_type, index_of_id, index_of_name, ambiguous)
