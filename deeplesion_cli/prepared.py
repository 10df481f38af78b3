"""``Prepared(path)``: the one reader (and path-giver) of a prepared folder's layout.

A prepared folder is the contract between commands (docs/formats.md)::

    OUT/<split>/<stem>.png + <stem>.txt   8-bit windowed image and its darknet label
    OUT/coco/<split>.json                 COCO instances per split (boxes 0-based pixels, xywh)
    OUT/train.txt valid.txt test.txt      absolute image paths for darknet, one per line
    OUT/obj.names obj.data data.yaml      darknet and Ultralytics data files
    OUT/backup/                           darknet's weights folder (it must exist before training)
    OUT/manifest.json                     options, version, counts, class map, input hashes
    OUT/rejected.csv                      with --skip-invalid: every row left out and why

``lesion prepare`` writes it (its file names come from here); every other module asks a
:class:`Prepared` for a path, the manifest, the classes or a split's COCO json instead of joining
names itself. Reading is lazy: making a ``Prepared`` touches nothing, and each failure raises
:class:`PreparedError` naming the file.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from deeplesion_cli.errors import LesionInputError

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.csv"
NAMES_NAME = "obj.names"
DATA_NAME = "obj.data"
YAML_NAME = "data.yaml"
BACKUP_NAME = "backup"
COCO_DIR = "coco"
#: darknet's image lists per split (darknet calls the val list ``valid``)
LIST_NAMES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}


class PreparedError(LesionInputError):
    """A prepared folder (or a file in it) that cannot be read; names the file and the reason."""


class Prepared:
    """A prepared folder at ``path``; its files are found through this object.

    Paths follow ``manifest.json``'s ``files`` table when the manifest has one, else the layout
    above (so a folder with COCO files but no manifest can still be evaluated and reported).
    """

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Prepared({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------ fixed paths
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def names_path(self) -> Path:
        """``obj.names``: one class name per line, in class-index order."""
        return self.path / NAMES_NAME

    @property
    def data_path(self) -> Path:
        """``obj.data``: darknet's data file (classes, lists, names, backup)."""
        return self.path / DATA_NAME

    @property
    def yaml_path(self) -> Path:
        return self.path / YAML_NAME

    @property
    def backup_dir(self) -> Path:
        return self.path / BACKUP_NAME

    @property
    def rejected_path(self) -> Path:
        return self.path / REJECTED_NAME

    def coco_path(self, split: str) -> Path:
        """``coco/<split>.json`` (or where the manifest's ``files.coco`` says)."""
        listed = self._files().get("coco") or {}
        return self.path / listed[split] if split in listed else self.path / COCO_DIR / f"{split}.json"

    def list_path(self, split: str) -> Path:
        """darknet's list of absolute image paths of ``split`` (``train.txt``, ``valid.txt``,
        ``test.txt``)."""
        if split not in LIST_NAMES:
            raise PreparedError(f"split {split!r}: expected one of {', '.join(LIST_NAMES)}")
        return self.path / LIST_NAMES[split]

    def image_dir(self, split: str) -> Path:
        listed = self._files().get("images") or {}
        return self.path / listed[split] if split in listed else self.path / split

    def coco_splits(self) -> list[str]:
        """Splits that have a COCO json here, in train/val/test order (others after, by name)."""
        listed = self._files().get("coco") or {}
        names = list(listed) if listed else [p.stem for p in (self.path / COCO_DIR).glob("*.json")]
        order = {s: i for i, s in enumerate(SPLITS)}
        return sorted((s for s in names if self.coco_path(s).is_file()),
                      key=lambda s: (order.get(s, len(order)), s))

    # --------------------------------------------------------------------------- manifest
    def is_prepared(self) -> bool:
        """A folder with a ``manifest.json`` (written last by ``lesion prepare``)."""
        return self.manifest_path.is_file()

    @cached_property
    def manifest(self) -> dict:
        """``manifest.json`` as a dict; :class:`PreparedError` when missing or not JSON."""
        path = self.manifest_path
        try:
            doc = json.loads(path.read_text())
        except OSError:
            raise PreparedError(f"{path}: not found; PREPARED must be a folder written by "
                                "lesion prepare") from None
        except ValueError as exc:
            raise PreparedError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise PreparedError(f"{path}: expected a JSON object")
        return doc

    def _files(self) -> dict:
        if not self.is_prepared():
            return {}
        files = self.manifest.get("files")
        return files if isinstance(files, dict) else {}

    @property
    def config_hash(self) -> str | None:
        return self.manifest.get("config_hash")

    @property
    def options(self) -> dict:
        """The ``lesion prepare`` options recorded in the manifest (``task``, ``windows_hu``...)."""
        return self.manifest.get("options") or {}

    @property
    def counts(self) -> dict:
        return self.manifest.get("counts") or {}

    @property
    def classes(self) -> list[dict]:
        """``[{"class_index", "category_id", "name"}, ...]`` in class-index order (class index
        ``k`` is darknet's class ``k`` and torchvision's label ``k + 1``)."""
        classes = self.manifest.get("classes")
        if not isinstance(classes, list) or not classes:
            raise PreparedError(f"{self.manifest_path}: no 'classes' list")
        for k, entry in enumerate(classes):
            if not isinstance(entry, dict) or {"category_id", "name"} - set(entry):
                raise PreparedError(f"{self.manifest_path}: classes[{k}] needs category_id and "
                                    "name")
        return classes

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def read_coco(self, split: str) -> dict:
        """The COCO instances json of ``split``; :class:`PreparedError` when missing or bad."""
        path = self.coco_path(split)
        try:
            doc = json.loads(path.read_text())
        except OSError:
            raise PreparedError(f"{path}: not found (split {split!r} of {self.path})") from None
        except ValueError as exc:
            raise PreparedError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise PreparedError(f"{path}: not a COCO instances file (no 'images' list)")
        return doc
