"""What darknet reads, checked before it is launched, and the ``.data`` file that points to it.

darknet mishandles bad input silently (docs/darknet.md key fact 2: a 16-bit PNG trains on a
nearly flat image, a missing label is skipped, a path over 255 bytes is cut), so
:func:`validate_inputs` checks the cfg (:func:`read_cfg`, :func:`cfg_fork_problems`),
``obj.names``, the image lists, every listed image and its label, and the backup folder, and
raises one :class:`~deeplesion_cli.darknet.errors.DarknetInputError` listing every problem as
``file:line: reason``. :func:`write_data_file` writes the ``obj.data`` / ``predict.data`` a
darknet command reads; :func:`data_file_problems` refuses paths that file cannot hold.
Prepared-folder paths come from :class:`deeplesion_cli.prepared.Prepared`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.darknet.binary import FORK_NAMES
from deeplesion_cli.darknet.cfg import Cfg, check_cfg, parse_cfg, pjreddie_problems
from deeplesion_cli.darknet.cfg import errors as cfg_errors
from deeplesion_cli.darknet.errors import DarknetInputError
from deeplesion_cli.formats.darknet_results import darknet_id
from deeplesion_cli.formats.yolo import DARKNET_REWRITTEN_WORDS
from deeplesion_cli.prepared import LIST_NAMES, Prepared

#: other names of the prepared splits a list may be given as
SPLIT_ALIASES = {"valid": "val", "validation": "val"}

#: darknet reads `detector test` list lines with fgets(..., 256) (docs/darknet.md 8.1, 15)
MAX_PATH_BYTES = 255

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
# Label file names each fork derives from an image path (docs/darknet.md 3.2)
_PJ_EXTENSIONS = (".jpg", ".png", ".JPG", ".JPEG")
_AB_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm", ".PPM",
                  ".tiff", ".TIFF")
_AB_REWRITTEN = ("/images/train2017/", "/images/val2017/", "/images/train2014/",
                 "/images/val2014/", "/JPEGImages/")
# Layers that end a darknet detector and carry `classes=`
DETECTION_SECTIONS = ("yolo", "region", "gaussian_yolo", "detection")


# ---------------------------------------------------------------------------------------- the cfg

@dataclass
class CfgSummary:
    """What the runner needs from a darknet cfg (parsed by :mod:`deeplesion_cli.darknet.cfg`,
    the way darknet reads it)."""

    path: Path
    cfg: Cfg
    classes: int
    max_batches: int
    batch: int
    subdivisions: int
    width: int
    height: int
    burn_in: int = 0
    learning_rate: float = 0.0

    @property
    def base(self) -> str:
        """darknet's ``basecfg``: the file name up to its first ``.``; weights are named by it."""
        return darknet_id(self.path.name)


def read_cfg(cfg_path) -> CfgSummary:
    """Parse and check ``cfg_path`` (:func:`~deeplesion_cli.darknet.cfg.check_cfg`).

    Raises :class:`DarknetInputError` naming the file and line of every error (no ``[net]``
    first, detection layers disagreeing on ``classes``, filters/masks mismatches, width/height
    not multiples of 32, no ``max_batches``, ...).
    """
    path = Path(cfg_path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DarknetInputError([f"{path}: cannot read: {exc.strerror or exc}"], "cfg") from None
    cfg = parse_cfg(text, str(path))
    problems = [f"{path}:{p.line}: {p.message}" for p in cfg_errors(check_cfg(cfg))]
    net = cfg.net
    max_batches = net.int("max_batches", 0) if net is not None else 0
    if net is not None and max_batches <= 0:
        problems.append(f"{path}:{net.line}: [net] has no positive max_batches "
                        "(darknet would not train)")
    detection = cfg.of_type(*DETECTION_SECTIONS)
    if not detection:
        problems.append(f"{path}: no [yolo] or [region] layer, so no class count")
    if problems:
        raise DarknetInputError(problems, "cfg")
    classes = detection[-1][1].int("classes", 20)  # darknet takes the last layer's (default 20)
    return CfgSummary(path, cfg, classes, max_batches, net.int("batch", 1) or 1,
                      net.int("subdivisions", 1) or 1, net.int("width", 0), net.int("height", 0),
                      net.int("burn_in", 0), net.float("learning_rate", 0.001))


def cfg_fork_problems(summary: CfgSummary, fork: str) -> list[str]:
    """What in the cfg the fork would silently build differently (pjreddie only;
    docs/darknet.md 12): unknown sections, activations and layer keys
    (:func:`pjreddie_problems`), and ``random`` other than 0 (pjreddie then trains at 320..608
    px whatever the cfg says)."""
    if fork != "pjreddie":
        return []
    path = summary.path
    problems = [f"{path}:{p.line}: {p.message} (use AlexeyAB darknet, or a yolov3-style cfg)"
                for p in cfg_errors(pjreddie_problems(summary.cfg))]
    for _, section in summary.cfg.of_type(*DETECTION_SECTIONS):
        if section.int("random", 0) != 0:
            problems.append(f"{path}:{section.line_of('random')}: [{section.name}] random="
                            f"{section.get('random')}: pjreddie then trains at 320..608 px "
                            "whatever the cfg width; set random=0")
    return problems


# ---------------------------------------------------------------------------------------- inputs

@dataclass
class InputSummary:
    """What :func:`validate_inputs` checked: the cfg, and image count per list file."""

    cfg: CfgSummary
    images: dict[str, int]
    backup_dir: Path | None = None


def _png_problem(path: Path) -> str | None:
    """Why darknet could not use this image, or None. Reads the header only."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except FileNotFoundError:
        return "image does not exist"
    except OSError as exc:
        return f"image cannot be read: {exc.strerror or exc}"
    suffix = path.suffix.lower()
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 33 or head[12:16] != b"IHDR":
            return "truncated or corrupt PNG (no IHDR header)"
        depth, colour = head[24], head[25]
        if depth != 8:
            return (f"{depth}-bit PNG: darknet keeps only the top byte of a 16-bit image (a CT "
                    "slice turns nearly flat grey, docs/darknet.md 15); write 8-bit windowed "
                    "images (`lesion prepare` does)")
        if colour not in (0, 2):
            return (f"PNG colour type {_PNG_COLOUR.get(colour, colour)}: use 8-bit grey or RGB")
        return None
    if head.startswith(b"\xff\xd8\xff"):
        return None
    if suffix in (".png", ".jpg", ".jpeg"):
        return f"not a valid {suffix[1:].upper()} file (bad signature)"
    return "darknet reads .png or .jpg images"


def label_path_for(image: str, fork: str) -> str | None:
    """The label path ``fork`` derives from ``image`` (docs/darknet.md 3.2), or None if it
    cannot."""
    if fork == "pjreddie":
        out = image
        for word in DARKNET_REWRITTEN_WORDS:
            out = out.replace(word, "labels", 1)
        for ext in _PJ_EXTENSIONS:
            out = out.replace(ext, ".txt", 1)
        return out
    out = image
    for part in _AB_REWRITTEN:
        if part in out:
            out = out.replace(part, "/labels/" if part == "/JPEGImages/" else
                              part.replace("/images/", "/labels/"))
    for ext in _AB_EXTENSIONS:
        if out.endswith(ext):
            return out[: -len(ext)] + ".txt"
    return None


def _label_problems(label: Path, classes: int) -> list[str]:
    try:
        text = label.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return [f"{label}: cannot read: {exc.strerror or exc}"]
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{number}"
        if len(fields) != 5:
            problems.append(f"{where}: {len(fields)} fields, expected 5 "
                            "'<class> <x_center> <y_center> <width> <height>'")
            continue
        if not re.fullmatch(r"\d+", fields[0]):
            problems.append(f"{where}: class id {fields[0]!r} is not a non-negative integer")
        elif int(fields[0]) >= classes:
            problems.append(f"{where}: class id {fields[0]} >= classes={classes} of the cfg "
                            f"(valid: 0..{classes - 1})")
        for name, value in zip(("x_center", "y_center", "width", "height"), fields[1:]):
            try:
                number_value = float(value)
            except ValueError:
                problems.append(f"{where}: {name} {value!r} is not a number")
                continue
            if not 0.0 < number_value <= 1.0:
                problems.append(f"{where}: {name} {value} is outside (0, 1] (darknet labels are "
                                "relative to the image size)")
    return problems


def read_list(list_path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """(line number, path) of a darknet list, read like darknet's fgetl, and its problems."""
    try:
        data = list_path.read_bytes()
    except OSError as exc:
        return [], [f"{list_path}: cannot read: {exc.strerror or exc}"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [f"{list_path}: not UTF-8 text (byte {exc.start})"]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    entries, problems = [], []
    for number, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            problems.append(f"{list_path}:{number}: blank line (darknet would try to load an "
                            "image named \"\")")
            continue
        entries.append((number, line))
    if not entries and not problems:
        problems.append(f"{list_path}: no images listed")
    return entries, problems


def resolve_list(prepared_dir: Path, spec) -> Path:
    """The list file of ``spec``: a split name (or alias) of the prepared folder, else a path
    (relative ones to ``prepared_dir``)."""
    text = str(spec)
    split = SPLIT_ALIASES.get(text, text)
    if split in LIST_NAMES:
        return Prepared(prepared_dir).list_path(split)
    path = Path(spec)
    return path if path.is_absolute() else prepared_dir / path


def relocated_list(prepared_dir, split: str, out_dir) -> Path:
    """Write ``split``'s image list, valid for the prepared folder's *current* location, into
    ``out_dir`` (same file name, e.g. ``<run>/train.txt``) and return its path.

    A prepared folder's lists hold absolute paths, so a copied or moved folder still names the
    original's images (darknet would train on those, or fail once they are gone). Each line
    naming a file outside the folder is re-rooted to the folder's ``<split>/`` image folder
    (:meth:`~deeplesion_cli.prepared.Prepared.image_dir`) when an image of that name is there;
    other lines are kept as they are, blank ones included, so line numbers stay those of the
    prepared list and :func:`validate_inputs` reports what remains wrong. A list that cannot
    be read or decoded is not copied: its own path is returned, for the validation to report.
    """
    prepared = Prepared(prepared_dir)
    source = prepared.list_path(split)
    try:
        text = source.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return source
    root = Path(prepared_dir).resolve()
    image_dir = prepared.image_dir(split).resolve()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for line in (line[:-1] if line.endswith("\r") else line for line in lines):
        path = Path(line)
        if line and not (path.is_absolute() and path.is_relative_to(root)):
            candidate = image_dir / path.name
            if candidate.is_file():
                line = str(candidate)
        out.append(line)
    target = Path(out_dir) / source.name
    atomic.write_text(target, "".join(f"{line}\n" for line in out))
    return target


def validate_inputs(prepared_dir, cfg_path, lists=("train",), fork: str = "pjreddie",
                    backup_dir=None, check_labels: bool = True,
                    unique_ids: bool = False, list_sources=None) -> InputSummary:
    """Check everything darknet would mishandle, before launching it (docs/darknet.md key
    fact 2).

    ``lists``: split names (``train``, ``val``, ``test``) or list files (relative to
    ``prepared_dir``). For every listed image: absolute path, at most 255 bytes, no ``"`` or
    ``\\``; readable 8-bit grey or RGB PNG (or JPEG); for pjreddie no ``images``, ``raw`` or
    ``JPEGImages`` anywhere in the path (it rewrites them to find the label). With
    ``check_labels``: the label ``.txt`` the fork derives is the one beside the image and
    exists; each line is ``class cx cy w h`` with ``class < classes`` of the cfg and the four
    numbers in (0, 1]. ``unique_ids``: image names up to their first ``.`` are unique (darknet's
    image id in ``detector valid``). ``list_sources``: list path -> the file messages name
    instead (the prepared list a :func:`relocated_list` was written from). Also: the cfg reads (:func:`read_cfg`) and suits the fork
    (:func:`cfg_fork_problems`), ``obj.names`` has one name per class, and ``backup_dir`` (if
    given) exists or is created.

    Raises :class:`DarknetInputError` listing every problem as ``file:line: reason``.
    """
    prepared_dir = Path(prepared_dir).resolve()
    cfg = read_cfg(cfg_path)
    problems = cfg_fork_problems(cfg, fork)
    names_path = Prepared(prepared_dir).names_path
    problems += _names_problems(names_path, cfg)
    counts: dict[str, int] = {}
    for spec in lists:
        list_path = resolve_list(prepared_dir, spec)
        entries, list_problems = read_list(list_path)
        shown = (list_sources or {}).get(str(list_path), list_path)
        problems += [p.replace(str(list_path), str(shown), 1) for p in list_problems]
        counts[str(list_path)] = len(entries)
        seen_ids: dict[str, int] = {}
        for number, image in entries:
            where = f"{shown}:{number}: {image}"
            problems += [f"{where}: {p}" for p in _path_problems(image, fork, check_labels)]
            path = Path(image)
            if not path.is_absolute():
                continue  # reported by _path_problems
            bad = _png_problem(path)
            if bad:
                problems.append(f"{where}: {bad}")
                continue
            if unique_ids:
                key = darknet_id(image)
                if key in seen_ids:
                    problems.append(f"{where}: darknet names this image {key!r}, like line "
                                    f"{seen_ids[key]}; image names must be unique up to their "
                                    "first '.'")
                seen_ids.setdefault(key, number)
            if check_labels:
                beside = path.with_suffix(".txt")
                derived = label_path_for(image, fork)
                if derived is None:
                    problems.append(f"{where}: {FORK_NAMES[fork]} cannot derive a label file "
                                    "name from this extension")
                elif derived != str(beside):
                    continue  # the rewritten-word problem is already reported
                elif not beside.is_file():
                    problems.append(f"{where}: no label file {beside} beside the image")
                else:
                    problems += _label_problems(beside, cfg.classes)
    if backup_dir is not None:
        backup_dir = Path(backup_dir)
        try:
            backup_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{backup_dir}: cannot create the backup folder: "
                            f"{exc.strerror or exc}")
    if problems:
        raise DarknetInputError(problems)
    return InputSummary(cfg, counts, backup_dir)


def _path_problems(image: str, fork: str, labels: bool = True) -> list[str]:
    problems = []
    if not os.path.isabs(image):
        problems.append("relative path: darknet resolves it against its own working folder; "
                        "list absolute paths (`lesion prepare` does)")
    if len(image.encode("utf-8")) > MAX_PATH_BYTES:
        problems.append(f"path is {len(image.encode('utf-8'))} bytes; darknet reads at most "
                        f"{MAX_PATH_BYTES} (docs/darknet.md 15)")
    if '"' in image or "\\" in image:
        problems.append("path contains '\"' or '\\', which darknet writes unescaped into JSON")
    if not labels:
        return problems
    if fork == "pjreddie":
        words = [w for w in DARKNET_REWRITTEN_WORDS if w in image]
        if words:
            problems.append(f"path contains {', '.join(repr(w) for w in words)}: pjreddie "
                            "darknet replaces it with 'labels' to find the label, so it would "
                            f"look for {label_path_for(image, fork)}; move the prepared folder")
        elif not image.endswith(_PJ_EXTENSIONS) or label_path_for(image, fork) != \
                image.rsplit(".", 1)[0] + ".txt":
            problems.append("pjreddie darknet finds the label by replacing the first '.png' or "
                            "'.jpg' in the path; use a .png/.jpg file name and no such text "
                            "earlier in the path")
    else:
        parts = [p for p in _AB_REWRITTEN if p in image]
        if parts:
            problems.append(f"path contains {parts[0]!r}: {FORK_NAMES[fork]} looks for the "
                            "label under a 'labels' folder instead "
                            f"({label_path_for(image, fork)})")
    return problems


def _names_problems(names_path: Path, cfg: CfgSummary) -> list[str]:
    try:
        text = names_path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"{names_path}: cannot read: {exc.strerror or exc}"]
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    problems = [f"{names_path}:{n}: blank line (it shifts every later class index)"
                for n, line in enumerate(lines, 1) if not line.strip()]
    if len(lines) != cfg.classes:
        problems.append(f"{names_path}: {len(lines)} class names, but the cfg {cfg.path} has "
                        f"classes={cfg.classes}")
    return problems


# -------------------------------------------------------------------------------- the .data file

def data_file_problems(paths: dict[str, Path]) -> list[str]:
    """Why each of ``paths`` (``.data`` key -> path) cannot be written into a ``.data`` file."""
    return [f"{key} = {path}: darknet deletes every space and tab from .data lines, so this "
            "path cannot be written into one; use a folder without whitespace"
            for key, path in paths.items() if re.search(r"\s", str(path))]


def write_data_file(path: Path, entries: dict[str, object]) -> None:
    """Write darknet's ``.data`` file (``key = value`` lines) atomically."""
    atomic.write_text(path, "".join(f"{k} = {v}\n" for k, v in entries.items()))
