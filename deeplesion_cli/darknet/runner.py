"""Run darknet (pjreddie, AlexeyAB or hank-ai) as a subprocess: train, predict, judge the result.

darknet's exit code cannot be trusted (darknet.md 10: pjreddie exits 0 on a missing cfg, weights
file or backup folder; AlexeyAB finishes "successfully" after skipping missing images; hank-ai
ignores a weights path that does not exist), so this module

* validates every input before launching (:func:`validate_inputs`): images readable and 8-bit,
  labels beside them and in range, paths darknet can read back, the cfg consistent;
* passes each fork only the flags it knows (an unknown flag becomes a positional argument in
  pjreddie and AlexeyAB, darknet.md 4);
* streams the console into ``darknet.log`` and ``metrics.csv`` and judges the run itself
  (:func:`judge_training`): exit code, error lines, NaN average loss, last iteration reached,
  final weights present;
* runs every darknet process in its own working directory (darknet drops ``bad.list``,
  ``predictions.jpg``, ``chart.png`` ... into its CWD, darknet.md 11) with
  ``OMP_WAIT_POLICY=passive`` (OpenMP spinning slows a shared CPU 2-5x, darknet.md 1).

Commands per fork (``<x>`` = absolute paths):

================  ==========================================================================
train, pjreddie   ``darknet detector train <run>/obj.data <run>/<cfg> [<weights>] [-gpus L]``
train, AlexeyAB   ``... train <run>/obj.data <run>/<cfg> [<weights>] -dont_show [-map] [-gpus L]``
train, hank-ai    same as AlexeyAB, with ``yes`` on stdin (CPU builds ask for it, darknet.md 5.4)
predict, pjreddie ``darknet detector valid <scratch>/predict.data <cfg> <weights>`` (``valid=``
                  the split's list, ``results=<scratch>/results``, ``eval=voc``) -> per-class
                  ``comp4_det_test_<class>.txt``
predict, AB / HK  ``darknet detector test <scratch>/predict.data <cfg> <weights> -dont_show
                  -ext_output -thresh T -out <scratch>/result.json`` with the list on stdin
================  ==========================================================================
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplesion_cli import atomic, runlog
from deeplesion_cli.darknet import log as dlog
from deeplesion_cli.darknet.cfg import Cfg, check_cfg, parse_cfg, pjreddie_problems
from deeplesion_cli.darknet.cfg import errors as cfg_errors
from deeplesion_cli.formats.detections import darknet_id
from deeplesion_cli.formats.yolo import DARKNET_REWRITTEN_WORDS
from deeplesion_cli.progress import Progress

FORKS = ("pjreddie", "alexeyab", "hankai")
FORK_NAMES = {"pjreddie": "pjreddie darknet", "alexeyab": "AlexeyAB darknet",
              "hankai": "hank-ai darknet"}

#: prepared-folder list file of each split (as ``lesion prepare`` writes them)
LIST_NAMES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
SPLIT_ALIASES = {"valid": "val", "validation": "val"}

INSTALL_HINT = (
    "Install pjreddie's darknet with `sudo apt-get install darknet` (Debian/Ubuntu; CPU only, "
    "yolov3-style cfgs only), or build AlexeyAB's (https://github.com/AlexeyAB/darknet, "
    "recommended) or hank-ai's (https://github.com/hank-ai/darknet) darknet and pass "
    "--darknet /path/to/darknet or set $DARKNET.")

#: lines of darknet.log quoted in a DarknetRunError
LOG_TAIL_LINES = 20
#: how many input problems a DarknetInputError lists before counting the rest
MAX_PROBLEMS_SHOWN = 20
#: darknet reads `detector test` list lines with fgets(..., 256) (darknet.md 8.1, 15)
MAX_PATH_BYTES = 255
PROBE_TIMEOUT_S = 30
#: pjreddie's `detector valid` loads this many images at once, unguarded (see _padded_list)
PJ_VALID_THREADS = 4

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
# Label file names each fork derives from an image path (darknet.md 3.2)
_PJ_EXTENSIONS = (".jpg", ".png", ".JPG", ".JPEG")
_AB_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm", ".PPM",
                  ".tiff", ".TIFF")
_AB_REWRITTEN = ("/images/train2017/", "/images/val2017/", "/images/train2014/",
                 "/images/val2014/", "/JPEGImages/")
# Layers that end a darknet detector and carry `classes=`
_DETECTION_SECTIONS = ("yolo", "region", "gaussian_yolo", "detection")


# ------------------------------------------------------------------------------------------ errors

class DarknetError(RuntimeError):
    """Base class of everything this module raises about darknet."""


class DarknetNotFound(DarknetError):
    """No usable darknet binary; the message says how to get one."""


class DarknetInputError(DarknetError, ValueError):
    """Inputs darknet would mishandle (found before launching it). ``problems``: every one."""

    def __init__(self, problems: list[str], what: str = "darknet inputs"):
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} with the {what}:\n"
                         f"{shown}{tail}")


class DarknetRunError(DarknetError):
    """darknet ran but failed. ``reasons``: why; ``log_tail``: the log's last lines;
    ``run_dir`` / ``log_path``: kept for inspection."""

    def __init__(self, what: str, reasons: list[str], log_tail: list[str],
                 run_dir: Path | None = None, log_path: Path | None = None):
        self.reasons = list(reasons)
        self.log_tail = list(log_tail)
        self.run_dir = run_dir
        self.log_path = log_path
        text = f"{what} failed: " + "; ".join(self.reasons)
        if run_dir is not None:
            text += f"\n  kept for inspection: {run_dir}"
        if self.log_tail:
            text += (f"\n  last {len(self.log_tail)} lines of "
                     f"{log_path if log_path else 'its output'}:\n    "
                     + "\n    ".join(self.log_tail))
        super().__init__(text)


# ---------------------------------------------------------------------------------- binary & fork

def _resolve_binary(candidate: str, origin: str) -> Path:
    text = os.path.expanduser(str(candidate))
    if os.sep not in text and not os.path.exists(text):
        found = shutil.which(text)
        if found is None:
            raise DarknetNotFound(f"{origin}: no program named {text!r} on PATH. {INSTALL_HINT}")
        text = found
    path = Path(text)
    if path.is_dir():
        inner = path / "darknet"
        if inner.is_file():
            path = inner
        else:
            raise DarknetNotFound(f"{origin}: {path} is a folder without a darknet binary in "
                                  f"it. {INSTALL_HINT}")
    if not path.exists():
        raise DarknetNotFound(f"{origin}: {path} does not exist. {INSTALL_HINT}")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise DarknetNotFound(f"{origin}: {path} is not an executable file. {INSTALL_HINT}")
    return path.resolve()


def find_darknet(explicit=None) -> Path:
    """The darknet binary: ``explicit`` (``--darknet``: a path, a folder holding ``darknet``, or a
    program name on PATH), else ``$DARKNET``, else ``darknet`` on PATH.

    Raises :class:`DarknetNotFound` with installation instructions when there is none.
    """
    if explicit is not None and str(explicit) != "":
        return _resolve_binary(str(explicit), f"--darknet {explicit}")
    env = os.environ.get("DARKNET")
    if env:
        return _resolve_binary(env, f"$DARKNET={env}")
    found = shutil.which("darknet")
    if found is None:
        raise DarknetNotFound(f"darknet was not found (no --darknet, no $DARKNET, no `darknet` "
                              f"on PATH). {INSTALL_HINT}")
    return Path(found).resolve()


def _probe(binary: Path, args: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="lesion-darknet-probe-") as scratch:
        try:
            done = subprocess.run([str(binary), *args], cwd=scratch, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=PROBE_TIMEOUT_S, env=_child_env())
        except subprocess.TimeoutExpired:
            raise DarknetNotFound(f"{binary} {' '.join(args)} did not finish within "
                                  f"{PROBE_TIMEOUT_S} s; is it darknet?") from None
        except OSError as exc:
            raise DarknetNotFound(f"{binary} cannot be run: {exc.strerror or exc}. "
                                  f"{INSTALL_HINT}") from None
    return "\n".join(dlog.split_text(done.stdout.decode("utf-8", "replace")))


@functools.lru_cache(maxsize=16)
def _detect_fork_cached(binary: str, _mtime_ns: int, _size: int) -> str:
    path = Path(binary)
    version = _probe(path, ["version"])
    # hank-ai prints its version ("Darknet v5.1-104-gf684e1d7") first, whatever the command;
    # pjreddie and AlexeyAB have no `version` command and say "Not an option: version".
    if "Not an option" not in version and re.search(r"darknet\s+v?\d+\.\d+", version, re.I):
        return "hankai"
    usage = _probe(path, ["detector"])
    both = version + "\n" + usage
    # AlexeyAB: its usage lists demo/map, and main() reports GPU/OpenCV before any command
    if re.search(r"demo/map|GPU isn't used|CUDA-version|OpenCV (?:version|isn't used)", both):
        return "alexeyab"
    if "Not an option" in both or re.search(r"usage: .*detector", both):
        return "pjreddie"
    raise DarknetNotFound(f"{binary} does not behave like any darknet fork (`{binary} version` "
                          f"printed {version.strip()[:200]!r}, `{binary} detector` printed "
                          f"{usage.strip()[:200]!r}). {INSTALL_HINT}")


def detect_fork(binary) -> str:
    """``"pjreddie"``, ``"alexeyab"`` or ``"hankai"``: which darknet ``binary`` is.

    Probes (each in a scratch CWD, cached per binary and modification time): ``darknet version``
    prints a version only in hank-ai; ``darknet detector`` (usage) names ``demo/map`` and is
    preceded by a GPU/OpenCV report only in AlexeyAB; pjreddie prints neither.
    """
    path = Path(binary).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise DarknetNotFound(f"{path}: {exc.strerror or exc}. {INSTALL_HINT}") from None
    return _detect_fork_cached(str(path), st.st_mtime_ns, st.st_size)


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
    detection = cfg.of_type(*_DETECTION_SECTIONS)
    if not detection:
        problems.append(f"{path}: no [yolo] or [region] layer, so no class count")
    if problems:
        raise DarknetInputError(problems, "cfg")
    classes = detection[-1][1].int("classes", 20)  # darknet takes the last layer's (default 20)
    return CfgSummary(path, cfg, classes, max_batches, net.int("batch", 1) or 1,
                      net.int("subdivisions", 1) or 1, net.int("width", 0), net.int("height", 0),
                      net.int("burn_in", 0), net.float("learning_rate", 0.001))


def cfg_fork_problems(summary: CfgSummary, fork: str) -> list[str]:
    """What in the cfg the fork would silently build differently (pjreddie only; darknet.md 12):
    unknown sections, activations and layer keys (:func:`pjreddie_problems`), and ``random``
    other than 0 (pjreddie then trains at 320..608 px whatever the cfg says)."""
    if fork != "pjreddie":
        return []
    path = summary.path
    problems = [f"{path}:{p.line}: {p.message} (use AlexeyAB darknet, or a yolov3-style cfg)"
                for p in cfg_errors(pjreddie_problems(summary.cfg))]
    for _, section in summary.cfg.of_type(*_DETECTION_SECTIONS):
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
                    "slice turns nearly flat grey, darknet.md 15); write 8-bit windowed images "
                    "(`lesion prepare` does)")
        if colour not in (0, 2):
            return (f"PNG colour type {_PNG_COLOUR.get(colour, colour)}: use 8-bit grey or RGB")
        return None
    if head.startswith(b"\xff\xd8\xff"):
        return None
    if suffix in (".png", ".jpg", ".jpeg"):
        return f"not a valid {suffix[1:].upper()} file (bad signature)"
    return "darknet reads .png or .jpg images"


def label_path_for(image: str, fork: str) -> str | None:
    """The label path ``fork`` derives from ``image`` (darknet.md 3.2), or None if it cannot."""
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


def _read_list(list_path: Path) -> tuple[list[tuple[int, str]], list[str]]:
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


def _resolve_list(prepared_dir: Path, spec) -> Path:
    text = str(spec)
    split = SPLIT_ALIASES.get(text, text)
    if split in LIST_NAMES:
        return prepared_dir / LIST_NAMES[split]
    path = Path(spec)
    return path if path.is_absolute() else prepared_dir / path


def validate_inputs(prepared_dir, cfg_path, lists=("train",), fork: str = "pjreddie",
                    backup_dir=None, check_labels: bool = True,
                    unique_ids: bool = False) -> InputSummary:
    """Check everything darknet would mishandle, before launching it (darknet.md key fact 2).

    ``lists``: split names (``train``, ``val``, ``test``) or list files (relative to
    ``prepared_dir``). For every listed image: absolute path, at most 255 bytes, no ``"`` or
    ``\\``; readable 8-bit grey or RGB PNG (or JPEG); for pjreddie no ``images``, ``raw`` or
    ``JPEGImages`` anywhere in the path (it rewrites them to find the label). With
    ``check_labels``: the label ``.txt`` the fork derives is the one beside the image and
    exists; each line is ``class cx cy w h`` with ``class < classes`` of the cfg and the four
    numbers in (0, 1]. ``unique_ids``: image names up to their first ``.`` are unique (darknet's
    image id in ``detector valid``). Also: the cfg reads (:func:`read_cfg`) and suits the fork
    (:func:`cfg_fork_problems`), ``obj.names`` has one name per class, and ``backup_dir`` (if
    given) exists or is created.

    Raises :class:`DarknetInputError` listing every problem as ``file:line: reason``.
    """
    prepared_dir = Path(prepared_dir).resolve()
    cfg = read_cfg(cfg_path)
    problems = cfg_fork_problems(cfg, fork)
    names_path = prepared_dir / "obj.names"
    problems += _names_problems(names_path, cfg)
    counts: dict[str, int] = {}
    for spec in lists:
        list_path = _resolve_list(prepared_dir, spec)
        entries, list_problems = _read_list(list_path)
        problems += list_problems
        counts[str(list_path)] = len(entries)
        seen_ids: dict[str, int] = {}
        for number, image in entries:
            where = f"{list_path}:{number}: {image}"
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
                        f"{MAX_PATH_BYTES} (darknet.md 15)")
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


# ------------------------------------------------------------------------------- running darknet

def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(cores))
    return env


def _line_buffered(cmd: list[str]) -> list[str]:
    """Make darknet's stdout line-buffered (it is a pipe here) when coreutils' stdbuf exists,
    so progress arrives per iteration and stdout/stderr interleave in order."""
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", "-eL", *cmd] if stdbuf else cmd


@dataclass
class RunOutcome:
    """What one darknet process did: exit code, log, and the parsed events."""

    returncode: int
    log_path: Path
    lines: int = 0
    tail: deque = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    iterations: list = field(default_factory=list)      # dlog.Iteration
    maps: list = field(default_factory=list)            # dlog.MapResult
    problems: list = field(default_factory=list)        # dlog.Problem
    saved: list = field(default_factory=list)           # dlog.SavedWeights
    warnings: list = field(default_factory=list)        # "Unused field" and the like
    seconds: float = 0.0

    @property
    def last_iteration(self):
        return self.iterations[-1] if self.iterations else None

    def record(self, line: str):
        """Parse one clean log line into the matching list; return the event (or None)."""
        event = dlog.parse_line(line)
        if event is None:
            if "Unused field" in line and len(self.warnings) < 100:
                self.warnings.append(line.strip())
            return None
        bucket = {dlog.Iteration: self.iterations, dlog.MapResult: self.maps,
                  dlog.Problem: self.problems, dlog.SavedWeights: self.saved}.get(type(event))
        if bucket is not None:
            bucket.append(event)
        return event


def _describe_returncode(rc: int) -> str:
    """Popen's return code in words (a signal is negative; a shell would show 128 + signal)."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        meaning = {signal.SIGABRT: ": a failed assertion or fatal error",
                   signal.SIGSEGV: ": segmentation fault",
                   signal.SIGKILL: ": the system may have run out of memory"}.get(-rc, "")
        return f"darknet was killed by {name} (exit status {128 - rc}{meaning})"
    extra = {134: " (abort: a failed assertion or fatal error)",
             139: " (segmentation fault)"}.get(rc, "")
    return f"darknet exited with code {rc}{extra}"


def run_darknet(cmd: list[str], cwd: Path, log_path: Path, stdin_path: Path | None = None,
                on_event=None, on_line=None, append_log: bool = False) -> RunOutcome:
    """Run ``cmd`` in ``cwd`` (stdout and stderr merged), writing clean lines to ``log_path``
    and calling ``on_event(event)`` for each parsed :mod:`~deeplesion_cli.darknet.log` event.

    The child runs in its own session; on KeyboardInterrupt (or any error here) it is
    terminated, then killed, before the exception propagates.
    """
    outcome = RunOutcome(returncode=0, log_path=log_path)
    start = time.monotonic()
    stdin = open(stdin_path, "rb") if stdin_path is not None else subprocess.DEVNULL
    log = open(log_path, "a" if append_log else "w", encoding="utf-8")
    try:
        log.write("$ " + " ".join(_quote(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(_line_buffered(cmd), cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=_child_env(),
                                start_new_session=True)
        try:
            splitter = dlog.LineSplitter()
            fd = proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                lines = splitter.feed(chunk) if chunk else splitter.close()
                for line in lines:
                    _handle_line(line, outcome, log, on_event, on_line)
                if lines:
                    log.flush()
                if not chunk:
                    break
            outcome.returncode = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            proc.stdout.close()
    finally:
        log.close()
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    outcome.seconds = time.monotonic() - start
    return outcome


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def _handle_line(line: str, outcome: RunOutcome, log, on_event, on_line) -> None:
    log.write(line + "\n")
    outcome.lines += 1
    outcome.tail.append(line)
    if on_line is not None:
        on_line(line)
    event = outcome.record(line)
    if event is not None and on_event is not None:
        on_event(event)


# ------------------------------------------------------------------------------------------ train

@dataclass
class TrainResult:
    """A finished, checked training run."""

    run_dir: Path
    final_weights: Path
    iterations: int            # last iteration reached (= the cfg's max_batches)
    avg_loss: float            # darknet's running average loss at the last iteration
    metrics_csv: Path
    fork: str
    log_path: Path = None
    cfg_path: Path = None
    data_path: Path = None
    command: list = field(default_factory=list)
    seconds: float = 0.0       # wall-clock seconds of the darknet process
    first_iteration: int = 1   # > 1 when resumed
    warnings: list = field(default_factory=list)


def weights_paths(backup_dir: Path, base: str, fork: str) -> dict[str, Path]:
    """The weights darknet writes into ``backup_dir`` (darknet.md 5): ``final``, and ``resume``
    (what a resumed run starts from: ``_last`` for AlexeyAB/hank-ai, ``.backup`` for
    pjreddie)."""
    resume = (backup_dir / f"{base}.backup" if fork == "pjreddie"
              else backup_dir / f"{base}_last.weights")
    return {"final": backup_dir / f"{base}_final.weights", "resume": resume}


def train_command(binary, fork: str, data_path, cfg_path, weights=None, map: bool = False,
                  gpus: str | None = None) -> list[str]:
    """``darknet detector train`` for ``fork``, with only the flags that fork knows (an unknown
    flag would become the weights path in pjreddie, darknet.md 4)."""
    if fork not in FORKS:
        raise ValueError(f"fork {fork!r}: expected one of {', '.join(FORKS)}")
    cmd = [str(binary), "detector", "train", str(data_path), str(cfg_path)]
    if weights is not None:
        cmd.append(str(weights))
    if fork in ("alexeyab", "hankai"):
        cmd.append("-dont_show")
        if map:
            cmd.append("-map")
    elif map:
        raise ValueError("pjreddie darknet has no -map")
    if gpus is not None:
        cmd += ["-gpus", gpus]
    return cmd


def predict_command(binary, fork: str, data_path, cfg_path, weights, thresh: float,
                    result_json) -> list[str]:
    """pjreddie: ``detector valid`` (no flags: it knows none of AlexeyAB's); AlexeyAB /
    hank-ai: ``detector test ... -dont_show -ext_output -thresh T -out result_json`` (the image
    list comes on stdin)."""
    if fork not in FORKS:
        raise ValueError(f"fork {fork!r}: expected one of {', '.join(FORKS)}")
    if fork == "pjreddie":
        return [str(binary), "detector", "valid", str(data_path), str(cfg_path), str(weights)]
    return [str(binary), "detector", "test", str(data_path), str(cfg_path), str(weights),
            "-dont_show", "-ext_output", "-thresh", repr(float(thresh)), "-out",
            str(result_json)]


def outcome_from_log(log_path, returncode: int = 0) -> RunOutcome:
    """Re-parse a ``darknet.log`` (as :func:`run_darknet` wrote it) into a :class:`RunOutcome`,
    e.g. to judge a finished run again with :func:`judge_training`."""
    log_path = Path(log_path)
    outcome = RunOutcome(returncode=returncode, log_path=log_path)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    for line in text.split("\n"):
        if not line or line.startswith("$ "):
            continue
        outcome.lines += 1
        outcome.tail.append(line)
        outcome.record(line)
    return outcome


def judge_training(outcome: RunOutcome, max_batches: int, final_weights: Path,
                   burn_in: int | None = None) -> list[str]:
    """Why a training run failed (empty if it did not), whatever darknet's exit code says
    (darknet.md 10): non-zero exit; an error, missing-file, bad-data or out-of-memory line;
    NaN or infinite average loss; no iteration line; a learning rate printed as 0 at every
    iteration (the run never left its ``burn_in`` warm-up: weights barely moved); last iteration
    < ``max_batches``; ``final_weights`` missing."""
    reasons = []
    if outcome.returncode != 0:
        reasons.append(_describe_returncode(outcome.returncode))
    kinds = {"out-of-memory": "out of memory", "missing-file": "a file is missing",
             "bad-data": "bad training data", "error": "darknet reported an error"}
    seen = set()
    for problem in outcome.problems:
        if problem.kind in seen:
            continue
        seen.add(problem.kind)
        reasons.append(f"{kinds[problem.kind]}: {problem.message[:300]}")
    diverged = next((it for it in outcome.iterations if it.diverged), None)
    if diverged is not None:
        reasons.append(f"the average loss became {diverged.avg_loss} at iteration "
                       f"{diverged.iteration}: training diverged (lower learning_rate, raise "
                       "burn_in, or check the labels)")
    if outcome.iterations and all(it.rate == 0 for it in outcome.iterations):
        first, last_it = outcome.iterations[0].iteration, outcome.iterations[-1].iteration
        cause = (f"burn_in={burn_in} warm-up ramps the rate as learning_rate x (iteration / "
                 f"burn_in)^4, too small to print by iteration {last_it}; lower burn_in "
                 "(`lesion cfg --burn-in`, whose default suits --max-batches)"
                 if burn_in else "learning_rate is 0 or the policy brought it to 0")
        reasons.append(f"the learning rate was 0 at every iteration ({first}-{last_it}), so "
                       f"nothing was learnt: {cause}")
    last = outcome.last_iteration
    if last is None:
        reasons.append("darknet printed no training iteration")
    elif last.iteration < max_batches:
        reasons.append(f"training stopped at iteration {last.iteration} of max_batches="
                       f"{max_batches}")
    if not Path(final_weights).is_file():
        reasons.append(f"no final weights {final_weights}")
    return reasons


class _TrainProgress(Progress):
    """Progress whose description can change (iteration and average loss)."""

    def set_description(self, text: str) -> None:
        self.description = text
        if self._rich is not None:
            self._rich.update(self._task, description=text)


def _data_file_problems(paths: dict[str, Path]) -> list[str]:
    return [f"{key} = {path}: darknet deletes every space and tab from .data lines, so this "
            "path cannot be written into one; use a folder without whitespace"
            for key, path in paths.items() if re.search(r"\s", str(path))]


def _write_data_file(path: Path, entries: dict[str, object]) -> None:
    atomic.write_text(path, "".join(f"{k} = {v}\n" for k, v in entries.items()))


def _gpu_list(gpus) -> str | None:
    if gpus is None or gpus == "" or gpus == []:
        return None
    if isinstance(gpus, int):
        return str(gpus)
    if isinstance(gpus, str):
        text = gpus.replace(" ", "")
    else:
        text = ",".join(str(int(g)) for g in gpus)
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise ValueError(f"gpus {gpus!r}: expected GPU indices like 0 or 0,1")
    return text


def train(prepared_dir, cfg_path, run_dir, weights=None, darknet=None, gpus=None,
          map: bool = False, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train a darknet detector on a prepared folder and check that it really trained.

    ``run_dir`` receives: a copy of the cfg, ``obj.data`` (absolute paths, ``backup`` =
    ``run_dir/backup``), ``darknet.log`` (the clean console), ``metrics.csv``
    (:mod:`deeplesion_cli.runlog`, one row per iteration) and ``backup/<cfgbase>_final.weights``.
    darknet runs with ``run_dir`` as its working folder.

    ``weights``: initial weights (a pretrained backbone such as ``yolov3-tiny.conv.11``).
    ``map``: evaluate mAP@0.5 on the val list during training (AlexeyAB / hank-ai ``-map``; the
    values go to ``val_mAP50``); pjreddie cannot, which is an error. ``resume``: continue from
    ``backup/<cfgbase>_last.weights`` (AlexeyAB / hank-ai) or ``backup/<cfgbase>.backup``
    (pjreddie), or from ``_final.weights`` when ``max_batches`` was raised (the cfg given
    replaces the run's copy, so a resumed run can train longer); metrics.csv rows from the
    iteration it restarts at on are replaced, and darknet.log is appended to. ``gpus``: GPU
    indices (``"0,1"`` or ``[0, 1]``) for ``-gpus``.

    Raises :class:`DarknetNotFound`, :class:`DarknetInputError` (before launching) or
    :class:`DarknetRunError` (after: see :func:`judge_training`; the run folder is kept).
    """
    binary = find_darknet(darknet)
    fork = detect_fork(binary)
    prepared_dir = Path(prepared_dir).resolve()
    run_dir = Path(run_dir).resolve()
    cfg_source = Path(cfg_path).resolve()
    gpu_list = _gpu_list(gpus)
    if map and fork == "pjreddie":
        raise DarknetError("mAP during training (-map) needs AlexeyAB or hank-ai darknet; "
                           f"{binary} is pjreddie's, which has no -map. Train without it and run "
                           "`lesion predict` + `lesion eval` on the weights instead.")
    if not cfg_source.is_file():
        raise DarknetInputError([f"{cfg_source}: cfg file not found"], "cfg")
    if weights is not None and not Path(weights).is_file():
        raise DarknetInputError([f"{weights}: weights file not found (pjreddie would exit 0 "
                                 "without training, hank-ai would silently train from "
                                 "scratch)"], "weights")
    run_dir.mkdir(parents=True, exist_ok=True)
    backup_dir = run_dir / "backup"
    cfg_copy = run_dir / cfg_source.name
    data_path = run_dir / "obj.data"
    log_path = run_dir / "darknet.log"
    metrics_path = run_dir / "metrics.csv"
    train_list = prepared_dir / LIST_NAMES["train"]
    valid_list = prepared_dir / LIST_NAMES["val"]
    names_path = prepared_dir / "obj.names"

    problems = _data_file_problems({"train": train_list, "valid": valid_list,
                                    "names": names_path, "backup": backup_dir})
    if problems:
        raise DarknetInputError(problems, "run paths")
    lists = ["train", "val"] if map else ["train"]
    summary = validate_inputs(prepared_dir, cfg_source, lists, fork=fork, backup_dir=backup_dir)
    cfg = summary.cfg
    n_train = summary.images[str(train_list)]
    paths = weights_paths(backup_dir, cfg.base, fork)
    final_weights = paths["final"]

    start_weights = Path(weights).resolve() if weights is not None else None
    if resume:
        start_weights = _resume_weights(paths, metrics_path, cfg, fork)
    else:
        existing = sorted(backup_dir.glob("*.weights")) + sorted(backup_dir.glob("*.backup"))
        if existing:
            raise DarknetError(f"{run_dir} already holds trained weights ({existing[0].name}); "
                               "resume it (--resume) or choose a new run folder")

    if cfg_copy != cfg_source:
        shutil.copyfile(cfg_source, cfg_copy)
    _write_data_file(data_path, {"classes": cfg.classes, "train": train_list,
                                 "valid": valid_list, "names": names_path,
                                 "backup": backup_dir})
    if not resume:
        metrics_path.unlink(missing_ok=True)

    cmd = train_command(binary, fork, data_path, cfg_copy, start_weights, map, gpu_list)
    stdin_path = None
    if fork == "hankai":
        stdin_path = run_dir / ".stdin-yes"
        stdin_path.write_text("yes\n")

    state = _TrainState(metrics_path, n_train, cfg.max_batches, resume, show_progress)
    try:
        outcome = run_darknet(cmd, run_dir, log_path, stdin_path=stdin_path,
                              on_event=state.on_event, append_log=resume)
    finally:
        state.close()
        if stdin_path is not None:
            stdin_path.unlink(missing_ok=True)
    reasons = judge_training(outcome, cfg.max_batches, final_weights, cfg.burn_in)
    if reasons:
        raise DarknetRunError(f"darknet training ({FORK_NAMES[fork]})", reasons,
                              list(outcome.tail), run_dir, log_path)
    last = outcome.last_iteration
    return TrainResult(run_dir, final_weights, last.iteration, last.avg_loss, metrics_path, fork,
                       log_path, cfg_copy, data_path, cmd, outcome.seconds,
                       outcome.iterations[0].iteration, outcome.warnings)


def weights_images_seen(path) -> int | None:
    """Images a weights file has been trained on (darknet's ``seen`` in the header: three int32
    ``major, minor, revision``, then ``seen`` as uint64 when ``major * 10 + minor >= 2``, else as
    int32). None if the file is too short to hold a header."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 16:
        return None
    major, minor, _revision = struct.unpack("<iii", head[:12])
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        return struct.unpack("<Q", head[12:20])[0] if len(head) == 20 else None
    return struct.unpack("<i", head[12:16])[0]


def _resume_weights(paths: dict[str, Path], metrics_path: Path, cfg: CfgSummary,
                    fork: str) -> Path:
    final, last = paths["final"], paths["resume"]
    if final.is_file():
        done = 0
        if metrics_path.is_file():
            rows = runlog.read_metrics(metrics_path)
            done = max((r["step"] for r in rows if r["step"] is not None), default=0)
        seen = weights_images_seen(final)
        if seen is not None and cfg.batch > 0:
            done = max(done, seen // cfg.batch)  # darknet's own count (cfg batch = images/iter)
        if done >= cfg.max_batches:
            raise DarknetError(f"the run already reached max_batches={cfg.max_batches} "
                               f"({final}); raise max_batches in the cfg to train longer")
        return final
    if last.is_file():
        return last
    raise DarknetError(f"nothing to resume from: no {last} (darknet writes it every 100 "
                       f"iterations) and no {final}")


class _TrainState:
    """Turns iteration events into metrics.csv rows and progress updates.

    A row is held back until the next iteration (or the end), so that the mAP darknet prints
    after an iteration's line lands in that iteration's row.
    """

    def __init__(self, metrics_path: Path, n_train: int, max_batches: int, resume: bool,
                 show_progress: bool):
        self.metrics_path = metrics_path
        self.n_train = max(n_train, 1)
        self.max_batches = max_batches
        self.resume = resume
        self.show_progress = show_progress
        self.writer: runlog.MetricsWriter | None = None
        self.progress: _TrainProgress | None = None
        self.pending: dict | None = None
        self.previous = None
        self.first = None

    def on_event(self, event) -> None:
        if isinstance(event, dlog.Iteration):
            self._iteration(event)
        elif isinstance(event, dlog.MapResult) and event.kind == "train" and self.pending:
            if abs(event.iou_threshold - 0.5) < 1e-6:
                self.pending["val_mAP50"] = event.map

    def _iteration(self, it) -> None:
        if self.first is None:
            self.first = it.iteration
            if self.resume and self.metrics_path.exists():
                runlog.truncate_metrics(self.metrics_path, it.iteration)
            self.writer = runlog.MetricsWriter(self.metrics_path)
            self.progress = _TrainProgress(self.max_batches - it.iteration + 1, "darknet train",
                                           unit="iterations", enabled=self.show_progress)
            self.progress.__enter__()
        self._flush_pending()
        previous = self.previous
        if previous is not None and it.iteration > previous.iteration:
            step_images = (it.images - previous.images) / (it.iteration - previous.iteration)
        else:
            step_images = it.images / it.iteration if it.iteration else float("nan")
        per_s = (step_images / it.seconds
                 if it.seconds and it.seconds > 0 and np.isfinite(step_images) else None)
        self.pending = {"step": it.iteration, "epoch": it.images / self.n_train,
                        "loss": it.loss, "avg_loss": it.avg_loss, "lr": it.rate,
                        "images": it.images, "seconds": it.seconds, "images_per_s": per_s}
        self.previous = it
        done = it.iteration - self.first + 1
        self.progress.set_description(f"darknet train: iteration {it.iteration}/"
                                      f"{self.max_batches}, avg loss {it.avg_loss:.4g}")
        if done > self.progress.done:
            self.progress.advance(done - self.progress.done)

    def _flush_pending(self) -> None:
        if self.pending is not None and self.writer is not None:
            self.writer.write(self.pending)
        self.pending = None

    def close(self) -> None:
        self._flush_pending()
        if self.writer is not None:
            self.writer.close()
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------- predict

def predict(prepared_dir, cfg_path, weights, split: str = "test", out_json=None, darknet=None,
            thresh: float = 0.005, show_progress: bool = True) -> Path:
    """Detect on the ``split``'s image list and write COCO results json (``out_json``, default
    ``<prepared>/predictions/yolo_<split>.json``) in the prepared images' pixel frame, ready for
    ``lesion eval``. Returns the json's path.

    pjreddie: ``detector valid`` (its only machine-readable output; fixed 0.005 floor, NMS
    0.45, letterboxed) into per-class ``comp4_det_test_<class>.txt``; AlexeyAB / hank-ai:
    ``detector test -dont_show -ext_output -thresh <thresh> -out result.json`` with the list on
    stdin (NMS 0.45, 0.005 floor). Detections scoring below ``thresh`` are dropped. Each darknet
    process runs in a scratch folder, deleted on success and kept (named in the error) on
    failure. The output is checked: every listed image appears in the JSON (AB/HK), every class
    file exists (pjreddie).
    """
    from deeplesion_cli.evaluation.data import EvalInputError, load_ground_truth
    from deeplesion_cli.formats.detections import read_detections, read_names, \
        write_coco_results

    binary = find_darknet(darknet)
    fork = detect_fork(binary)
    prepared_dir = Path(prepared_dir).resolve()
    split = SPLIT_ALIASES.get(split, split)
    if split not in LIST_NAMES:
        raise ValueError(f"split {split!r}: expected one of {', '.join(LIST_NAMES)}")
    cfg_path = Path(cfg_path).resolve()
    weights = Path(weights).resolve()
    if not weights.is_file():
        raise DarknetInputError([f"{weights}: weights file not found"], "weights")
    if not cfg_path.is_file():
        raise DarknetInputError([f"{cfg_path}: cfg file not found"], "cfg")
    list_path = prepared_dir / LIST_NAMES[split]
    gt_path = prepared_dir / "coco" / f"{split}.json"
    names_path = prepared_dir / "obj.names"
    out_json = (Path(out_json) if out_json is not None
                else prepared_dir / "predictions" / f"yolo_{split}.json")
    if not np.isfinite(thresh) or thresh < 0:
        raise ValueError(f"thresh {thresh!r}: expected a non-negative number")

    summary = validate_inputs(prepared_dir, cfg_path, [split], fork=fork, check_labels=False,
                              unique_ids=True)
    n_images = summary.images[str(list_path)]
    try:
        gt = load_ground_truth(gt_path)
        names = read_names(names_path)
    except EvalInputError as exc:
        raise DarknetInputError([str(exc)]) from None

    scratch = Path(tempfile.mkdtemp(prefix=f"lesion-darknet-predict-{split}-"))
    log_path = scratch / "darknet.log"
    data_path = scratch / "predict.data"
    problems = _data_file_problems({"valid": list_path, "names": names_path,
                                    "results": scratch / "results"})
    if problems:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DarknetInputError(problems, "predict paths")
    data = {"classes": summary.cfg.classes, "train": list_path, "valid": list_path,
            "names": names_path}
    results = scratch / "results"
    result_json = scratch / "result.json"
    cmd = predict_command(binary, fork, data_path, cfg_path, weights, thresh, result_json)
    pad_ids: set[str] = set()
    if fork == "pjreddie":
        results.mkdir()  # darknet segfaults without it (darknet.md 7)
        data.update(results=results, eval="voc")
        stdin_path = None
        if n_images < PJ_VALID_THREADS:
            data["valid"], pad_ids = _padded_list(list_path, scratch, n_images)
    else:
        stdin_path = list_path
    _write_data_file(data_path, data)

    progress = Progress(n_images, f"darknet predict ({split})", unit="images",
                        enabled=show_progress)

    def on_line(line: str) -> None:
        text = line.strip()
        done = progress.done
        if fork == "pjreddie" and text.isdigit():
            done = min(int(text), n_images)       # `valid` counts images loaded so far
        elif ": Predicted in " in text:
            done = min(done + 1, n_images)
        if done > progress.done:
            progress.advance(done - progress.done)

    with progress:
        outcome = run_darknet(cmd, scratch, log_path, stdin_path=stdin_path, on_line=on_line)

    reasons = []
    if outcome.returncode != 0:
        reasons.append(_describe_returncode(outcome.returncode))
    for problem in outcome.problems:
        reasons.append(f"{problem.kind}: {problem.message[:300]}")
        if len(reasons) > 5:
            break
    dets = None
    if not reasons:
        try:
            if fork == "pjreddie":
                missing = [n for n in names
                           if not (results / f"comp4_det_test_{n}.txt").is_file()]
                if missing:
                    reasons.append(f"`detector valid` wrote no result file for class(es) "
                                   f"{', '.join(missing)} in {results}")
                else:
                    clean = _drop_padding(results, scratch / "results-unpadded", pad_ids)
                    dets = read_detections(clean, gt, fmt="darknet-valid")
            else:
                reasons += _check_result_json(result_json, list_path)
                if not reasons:
                    dets = read_detections(result_json, gt, fmt="darknet-json", names=names)
        except EvalInputError as exc:
            reasons.append(f"darknet's output does not match the ground truth: {exc}")
    if reasons:
        raise DarknetRunError(f"darknet prediction ({FORK_NAMES[fork]}, {split})", reasons,
                              list(outcome.tail), scratch, log_path)
    if thresh > 0 and len(dets):
        dets = dets.subset(dets.score >= thresh)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_coco_results(out_json, gt, dets)
    shutil.rmtree(scratch, ignore_errors=True)
    return out_json


def _padded_list(list_path: Path, scratch: Path, n_images: int) -> tuple[Path, set[str]]:
    """pjreddie's ``detector valid`` always starts loading 4 images (``nthreads = 4``, no guard
    for shorter lists) and segfaults on a list of fewer (verified: 3 images, rc 139). Give it a
    copy of the list padded with blank images whose ids are then dropped from its output."""
    from PIL import Image

    pad_dir = scratch / "pad"
    pad_dir.mkdir()
    entries, _ = _read_list(list_path)
    lines = [image for _, image in entries]
    pad_ids = set()
    for k in range(PJ_VALID_THREADS - n_images):
        pad = pad_dir / f"lesion_padding_{k}.png"
        Image.new("L", (32, 32)).save(pad)
        lines.append(str(pad))
        pad_ids.add(darknet_id(pad))
    padded = scratch / "padded_list.txt"
    padded.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return padded, pad_ids


def _drop_padding(results: Path, out: Path, drop_ids: set[str]) -> Path:
    """Copy ``detector valid``'s class files into ``out`` without the lines of ``drop_ids``
    (the padding images of :func:`_padded_list`)."""
    out.mkdir()
    for file in sorted(results.iterdir()):
        if file.is_file():
            lines = [line for line in file.read_text(encoding="utf-8", errors="replace").split("\n")
                     if not (line.split() and line.split()[0] in drop_ids)]
            (out / file.name).write_text("\n".join(lines), encoding="utf-8")
    return out


def _check_result_json(result_json: Path, list_path: Path) -> list[str]:
    """Every listed image appears in darknet's -out JSON (matched by file name, never by
    frame_id: a line over 255 bytes shifts the ids, darknet.md 15)."""
    if not result_json.is_file():
        return [f"darknet wrote no {result_json.name}"]
    try:
        frames = json.loads(result_json.read_bytes())
    except ValueError as exc:
        return [f"{result_json} is not valid JSON ({exc}); darknet stopped early, or a path or "
                "class name holds '\"' or '\\'"]
    if not isinstance(frames, list):
        return [f"{result_json}: not a list of frames"]
    seen = {f.get("filename") for f in frames if isinstance(f, dict)}
    entries, _ = _read_list(list_path)
    missing = [image for _, image in entries if image not in seen]
    if missing:
        return [f"{len(missing)} of {len(entries)} listed images are missing from "
                f"{result_json.name} (first: {missing[0]})"]
    return []

