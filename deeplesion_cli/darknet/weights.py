"""darknet ``.weights`` files: the header, and whether a file fits a cfg, checked before darknet
reads it.

A weights file (all three forks, docs/darknet.md 12 and 16) is a header, then float32 values
layer by layer in cfg order::

    int32 major, int32 minor, int32 revision     (AlexeyAB and pjreddie write 0, 2, 0..5)
    seen: uint64 when major * 10 + minor >= 2, else int32   (images trained on so far)
    float32 ... per [convolutional]: biases, [batch norm scales, means, variances], weights

darknet checks none of it: it reads what the cfg asks for and stops quietly at the end of the
file, so a cfg or a text file given as weights loads as garbage (``lesion predict yolo`` then
writes 0 detections with exit 0), a file of another network loads misaligned, and ``seen``
decides the iteration training starts at (``seen / batch``): a finished run's weights train
nothing. :func:`weights_problems` and :func:`start_iteration` find these before launching.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from deeplesion_cli.darknet.cfg import Cfg, weights_floats

#: layer types whose weights :func:`~deeplesion_cli.darknet.cfg.weights_floats` counts
_COUNTED = frozenset({"convolutional", "connected", "batchnorm"})
#: layer types that store nothing in a weights file
_NO_WEIGHTS = frozenset(
    "maxpool route upsample yolo Gaussian_yolo region detection dropout avgpool softmax reorg "
    "reorg3d cost local_avgpool empty silence logistic l2norm activation normalization crop sam "
    "scale_channels iseg".split())
#: the largest major/minor version a header may carry (darknet reads larger ones as transposed
#: weights of another era; a text or cfg file reads as a huge number)
_MAX_VERSION = 1000


@dataclass(frozen=True)
class WeightsHeader:
    """A weights file's header and size. ``header_bytes``: 20 (64-bit ``seen``) or 16."""

    major: int
    minor: int
    revision: int
    seen: int
    header_bytes: int
    file_bytes: int

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}"

    @property
    def floats(self) -> float:
        """Values after the header (a fraction when the size is not a whole number of them)."""
        return (self.file_bytes - self.header_bytes) / 4


def read_header(path) -> WeightsHeader | None:
    """The header of ``path`` as darknet reads it; None when the file is shorter than a header
    or its version numbers cannot be a weights file's (negative or above 1000)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(20)
    size = path.stat().st_size
    if len(head) < 16:
        return None
    major, minor, revision = struct.unpack("<iii", head[:12])
    if not (0 <= major <= _MAX_VERSION and 0 <= minor <= _MAX_VERSION and revision >= 0):
        return None
    if major * 10 + minor >= 2:
        if len(head) < 20:
            return None
        return WeightsHeader(major, minor, revision, struct.unpack("<Q", head[12:20])[0], 20,
                             size)
    return WeightsHeader(major, minor, revision, struct.unpack("<i", head[12:16])[0], 16, size)


def weights_images_seen(path) -> int | None:
    """Images a weights file has been trained on (darknet's ``seen`` in the header); None if the
    file cannot be read or holds no weights header."""
    try:
        header = read_header(path)
    except OSError:
        return None
    return header.seen if header is not None else None


def network_floats(cfg: Cfg) -> int | None:
    """The values a whole weights file of ``cfg`` holds after its header, or None where this
    cannot be counted (a layer type with weights :func:`weights_floats` does not count, such as
    [deconvolutional], [local], recurrent layers or a weighted [shortcut]; unknown sizes)."""
    for section in cfg.layers:
        kind = section.type
        if kind in _COUNTED or kind in _NO_WEIGHTS:
            continue
        if kind == "shortcut" and section.get("weights_type", "none") == "none":
            continue
        return None
    return weights_floats(cfg)


def weights_problems(path, cfg: Cfg, cfg_path, *, whole: bool) -> list[str]:
    """Why darknet would misread ``path`` as weights of the cfg ``cfg`` (read from ``cfg_path``):
    no weights header (a cfg, a text file, another format), a size that is not a whole number
    of values, and a size the network cannot have. ``whole``: the file must hold the whole
    network (``lesion predict yolo``); otherwise (initial weights of ``lesion train yolo``) it
    may hold its first layers only (a ``.conv.N`` file from ``darknet partial``)."""
    path = Path(path)
    try:
        header = read_header(path)
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    if header is None:
        with open(path, "rb") as f:
            start = f.read(12)
        size = path.stat().st_size
        shown = start.decode("ascii", "replace") if start.isascii() else start.hex(" ")
        return [f"{path}: not a darknet weights file ({size} bytes starting {shown!r}; a "
                ".weights file starts with three int32 version numbers such as 0 2 0 and the "
                "images-seen count): is it a cfg or text file? darknet would load it as "
                "garbage and detect nothing"]
    expected = network_floats(cfg)
    values = int(header.floats) if header.floats == int(header.floats) else header.floats
    where = (f"{header.file_bytes} bytes = {header.header_bytes}-byte header (version "
             f"{header.version}) + {values} values")
    if header.floats != int(header.floats):
        return [f"{path}: {where}: not a whole number of 4-byte values, so the file is cut "
                "short or not darknet weights"]
    if expected is None:
        return []
    need = (f"the cfg {cfg_path} needs {expected} values "
            f"({header.header_bytes + 4 * expected} bytes)")
    if whole and header.floats != expected:
        cause = ("cut short, or saved from a smaller network" if header.floats < expected
                 else "saved from another network (another arch, input channels or class count)")
        return [f"{path}: {where}, but {need}: the weights are {cause}; darknet would read "
                "them misaligned without a word. Use the weights trained with this cfg"]
    if not whole and header.floats > expected:
        return [f"{path}: {where}, more than the whole network of {cfg_path} "
                f"({expected} values): they were saved from another network (another arch or "
                "class count), and darknet would load every layer after the first difference "
                "misaligned. For transfer learning, cut them to the shared layers with "
                "`darknet partial OTHER.cfg OTHER.weights out.conv.N N`"]
    return []


def start_iteration(seen: int, batch: int) -> int:
    """The iteration darknet resumes counting from for weights that have seen ``seen`` images
    (``seen / batch``, ``batch`` = the cfg's images per iteration)."""
    return seen // max(batch, 1)
