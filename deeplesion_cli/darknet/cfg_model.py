"""The darknet ``.cfg`` model: parse a cfg as darknet does, write it back, and infer every layer's
output size (w x h x c, in cells/pixels and channels) and the size of its ``.weights`` file.

Reading follows darknet's ``read_cfg`` (AlexeyAB and pjreddie alike): all whitespace is removed
from a line (``strip``), a line starting with ``[`` opens a section, ``#``/``;`` start comments,
and anything else is ``key=value``. A line without ``=`` is kept by darknet as a junk option it
never reads, and ``key=`` (nothing after ``=``) is refused with "Config file error line ...": both
are ignored here and recorded as warnings. darknet's ``option_find`` returns the *first* of
duplicated keys, so the first one is kept and the others are warnings. Numbers are read with C's
``atoi``/``atof`` rules (``filters=18#x`` is 18, ``filters=x`` is 0).

Layer indices are darknet's: the position among the sections after ``[net]``, from 0; ``[route]
layers`` and ``[shortcut] from`` take negative (relative) and absolute indices.

The checks of a parsed cfg are in :mod:`deeplesion_cli.darknet.cfg`, which also re-exports every
name here (import from there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

#: Section spellings and the layer type each one means (both forks accept the short forms).
ALIASES = {
    "conv": "convolutional",
    "deconv": "deconvolutional",
    "network": "net",
    "conn": "connected",
    "max": "maxpool",
    "avg": "avgpool",
    "lrn": "normalization",
    "soft": "softmax",
    "local_avg": "local_avgpool",
}


def canonical_type(name: str) -> str:
    """The layer type a section name means (``conv`` -> ``convolutional``)."""
    return ALIASES.get(name, name)


# --------------------------------------------------------------------------------------------
# C number parsing (darknet reads every option with atoi/atof)

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def c_atoi(text: str) -> int:
    """C ``atoi``: the leading integer of ``text``, 0 when there is none."""
    m = _INT_RE.match(text.lstrip())
    return int(m.group()) if m else 0


def c_atof(text: str) -> float:
    """C ``atof``: the leading number of ``text``, 0.0 when there is none."""
    m = _FLOAT_RE.match(text.lstrip())
    return float(m.group()) if m else 0.0


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# --------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Problem:
    """One inconsistency. ``line`` is 1-based (0: the file as a whole); ``section`` the section
    name (without brackets, "" before any section); ``key`` the option ("" for the section)."""

    line: int
    section: str
    key: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = " ".join(x for x in (f"[{self.section}]" if self.section else "", self.key) if x)
        return f"line {self.line}: {self.severity}: " + (f"{where}: " if where else "") + \
            self.message


@dataclass
class Section:
    """One ``[name]`` block: options in file order, and where each came from."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0
    option_lines: dict[str, int] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return canonical_type(self.name)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def int(self, key: str, default: int = 0) -> int:
        value = self.options.get(key)
        return default if value is None else c_atoi(value)

    def float(self, key: str, default: float = 0.0) -> float:
        value = self.options.get(key)
        return default if value is None else c_atof(value)

    def ints(self, key: str) -> list[int] | None:
        """A comma list read as darknet does (each item with atoi; ``None`` when absent)."""
        value = self.options.get(key)
        return None if value is None else [c_atoi(v) for v in value.split(",")]

    def floats(self, key: str) -> list[float] | None:
        value = self.options.get(key)
        return None if value is None else [c_atof(v) for v in value.split(",")]

    def line_of(self, key: str) -> int:
        """The line of ``key``, or of the section header when the key is absent."""
        return self.option_lines.get(key, self.line)

    def set(self, key: str, value) -> None:
        """Set ``key`` (kept in place when present, appended otherwise)."""
        self.options[key] = _format_value(value)

    def remove(self, key: str) -> None:
        self.options.pop(key, None)
        self.option_lines.pop(key, None)


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "".join(str(value).split())


@dataclass
class Cfg:
    """A parsed cfg: its sections and what parsing had to say (``warnings``; stray options
    before the first section are errors)."""

    sections: list[Section] = field(default_factory=list)
    source: str = "x.cfg"
    warnings: list[Problem] = field(default_factory=list)

    @property
    def net(self) -> Section | None:
        """The ``[net]`` section when it comes first (as darknet requires), else None."""
        if self.sections and self.sections[0].type == "net":
            return self.sections[0]
        return None

    @property
    def layers(self) -> list[Section]:
        """The layers in darknet's order: every section but ``[net]``; index = position."""
        return [s for s in self.sections if s.type != "net"]

    def layer_index(self, section: Section) -> int:
        for i, s in enumerate(self.layers):
            if s is section:
                return i
        raise ValueError(f"[{section.name}] at line {section.line} is not a layer of this cfg")

    def of_type(self, *types: str) -> list[tuple[int, Section]]:
        """(index, section) of the layers of the given (canonical) types."""
        return [(i, s) for i, s in enumerate(self.layers) if s.type in types]

    def dumps(self, header: str | None = None, annotate: bool = False) -> str:
        """The cfg as text: ``[name]`` then ``key=value`` lines, a blank line between sections.
        ``header`` lines are written first as ``#`` comments; ``annotate`` adds before each layer
        a comment with its index and output size (from :func:`layer_shapes`)."""
        out: list[str] = []
        if header:
            out += [f"# {h}".rstrip() for h in header.splitlines()]
            out.append("")
        shapes = {s.index: s for s in layer_shapes(self)} if annotate else {}
        index = -1
        for n, section in enumerate(self.sections):
            if n:
                out.append("")
            if section.type != "net":
                index += 1
                if annotate:
                    shape = shapes.get(index)
                    size = (
                        f"{shape.out_w} x {shape.out_h} x {shape.out_c}"
                        if shape is not None and shape.out_w is not None
                        else "?"
                    )
                    out.append(f"# layer {index}: {size}")
            out.append(f"[{section.name}]")
            out += [f"{k}={v}" for k, v in section.options.items()]
        return "\n".join(out) + "\n"


def parse_cfg(text: str, source: str = "x.cfg") -> Cfg:
    """Parse cfg text as darknet's ``read_cfg`` does (see the module docstring)."""
    cfg = Cfg(source=source)
    current: Section | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            name = line[1:-1] if line.endswith("]") else line[1:]
            if not line.endswith("]"):
                cfg.warnings.append(Problem(number, name, "", f"section header {raw.strip()!r} "
                                            "does not end with ']'", "warning"))
            current = Section(name=name, line=number)
            cfg.sections.append(current)
            continue
        where = current.name if current else ""
        if "=" not in line:
            cfg.warnings.append(Problem(number, where, "", f"no '=' in {raw.strip()!r}: darknet "
                                        "ignores this line", "warning"))
            continue
        key, value = line.split("=", 1)
        if not value:
            cfg.warnings.append(Problem(number, where, key, f"{raw.strip()!r} has no value: "
                                        "darknet refuses this line and goes on", "warning"))
            continue
        if current is None:
            cfg.warnings.append(Problem(number, "", key, "option before any [section]"))
            continue
        if key in current.options:
            cfg.warnings.append(Problem(
                number, where, key, f"duplicate key: darknet uses the first one "
                f"(line {current.option_lines[key]}: {key}={current.options[key]})", "warning"))
            continue
        current.options[key] = value
        current.option_lines[key] = number
    return cfg


# --------------------------------------------------------------------------------------------
# Shape inference


class LayerShape(NamedTuple):
    """A layer's output size; ``None`` where it cannot be known (unknown type, broken input)."""

    index: int
    type: str
    out_w: int | None
    out_h: int | None
    out_c: int | None


_PASS_THROUGH = frozenset(
    "yolo Gaussian_yolo region detection dropout batchnorm activation logistic l2norm softmax "
    "cost scale_channels sam normalization empty silence iseg".split()
)


def resolve_index(value: int, current: int) -> int:
    """darknet's layer reference: negative values count back from the current layer."""
    return current + value if value < 0 else value


def layer_shapes(cfg: Cfg) -> list[LayerShape]:
    """Each layer's ``(index, type, out_w, out_h, out_c)``, computed as darknet sizes layers.

    Covers convolutional (size/stride/stride_x/stride_y/pad/padding/dilation), maxpool and
    local_avgpool (``padding`` defaults to size-1, so ``size=2 stride=1`` keeps the size),
    avgpool (global), upsample (negative stride downsamples), route (concatenation of inputs of
    equal w x h, divided by ``groups``), shortcut (the previous layer's size), reorg, connected,
    deconvolutional, and the size-preserving types (yolo, region, dropout, ...). A route of inputs
    of different w x h outputs 0 x 0 x 0, as in darknet ("Layer before ... must output image").
    """
    net = cfg.net
    if net is not None:
        prev: tuple | None = (net.int("width"), net.int("height"), net.int("channels"))
    else:
        prev = None
    shapes: list[LayerShape] = []
    for i, s in enumerate(cfg.layers):
        t = s.type
        out = _layer_output(t, s, i, prev, shapes)
        shapes.append(LayerShape(i, t, *(out if out is not None else (None, None, None))))
        prev = out
    return shapes


def known_shape(shape) -> bool:
    """Whether ``shape`` (w, h, c) is known (not ``None``, nor ``None`` sizes)."""
    return shape is not None and shape[0] is not None


def _layer_output(t: str, s: Section, i: int, prev, shapes: list[LayerShape]):
    if t == "route":
        refs = s.ints("layers") or []
        ins = []
        for r in refs:
            j = resolve_index(r, i)
            if not 0 <= j < i or shapes[j].out_w is None:
                return None
            ins.append(shapes[j])
        if not ins:
            return None
        w, h = ins[0].out_w, ins[0].out_h
        if any((x.out_w, x.out_h) != (w, h) for x in ins):
            return (0, 0, 0)
        groups = max(s.int("groups", 1), 1)
        return (w, h, c_div(sum(x.out_c for x in ins), groups))
    if t in ("connected",):
        return (1, 1, s.int("output", 1))
    if not known_shape(prev):
        return None
    w, h, c = prev
    if t == "convolutional":
        size = s.int("size", 1)
        stride = s.int("stride", 1)
        sx, sy = s.int("stride_x", stride), s.int("stride_y", stride)
        dilation = max(s.int("dilation", 1), 1)
        padding = s.int("padding", 0)
        if s.int("pad", 0):
            padding = size // 2
        if sx < 1 or sy < 1:
            return (0, 0, 0)
        span = dilation * (size - 1) + 1
        pad = padding * dilation
        return (c_div(w + 2 * pad - span, sx) + 1, c_div(h + 2 * pad - span, sy) + 1,
                s.int("filters", 1))
    if t == "deconvolutional":
        size, stride = s.int("size", 1), s.int("stride", 1)
        padding = size // 2 if s.int("pad", 0) else s.int("padding", 0)
        return ((w - 1) * stride + size - 2 * padding, (h - 1) * stride + size - 2 * padding,
                s.int("filters", 1))
    if t in ("maxpool", "local_avgpool"):
        stride = s.int("stride", 1)
        sx, sy = s.int("stride_x", stride), s.int("stride_y", stride)
        size = s.int("size", stride)
        padding = s.int("padding", size - 1)
        if sx < 1 or sy < 1:
            return (0, 0, 0)
        out_c = c
        if t == "maxpool" and s.int("maxpool_depth", 0):
            out_c = s.int("out_channels", 1)
        return (c_div(w + padding - size, sx) + 1, c_div(h + padding - size, sy) + 1, out_c)
    if t == "avgpool":
        return (1, 1, c)
    if t == "upsample":
        stride = s.int("stride", 2)
        if stride < 0:
            return (c_div(w, -stride), c_div(h, -stride), c)
        return (w * stride, h * stride, c)
    if t in ("reorg", "reorg3d"):
        stride = max(s.int("stride", 1), 1)
        if s.int("reverse", 0):
            return (w * stride, h * stride, c_div(c, stride * stride))
        return (c_div(w, stride), c_div(h, stride), c * stride * stride)
    if t == "shortcut":
        return (w, h, c)
    if t in _PASS_THROUGH:
        return (w, h, c)
    return None


def weights_floats(cfg: Cfg) -> int | None:
    """The number of floats a ``.weights`` file of this cfg holds after its header (20 bytes for
    AlexeyAB's and pjreddie's major=0 minor=2 files): per [convolutional] its biases, the batch
    norm scales, means and variances when ``batch_normalize=1``, and (channels / groups) x
    filters x size x size weights; likewise for [connected] and [batchnorm]. ``None`` when an
    input size is unknown. A weights file of another size belongs to another network."""
    shapes = layer_shapes(cfg)
    net = cfg.net
    total = 0
    for i, s in enumerate(cfg.layers):
        prev = (net.int("width"), net.int("height"), net.int("channels")) if i == 0 and net \
            else (shapes[i - 1][2:] if i else None)
        if s.type not in ("convolutional", "connected", "batchnorm"):
            continue
        if not known_shape(prev):
            return None
        bn = 3 if s.int("batch_normalize", 0) else 0
        if s.type == "convolutional":
            n, size = s.int("filters", 1), s.int("size", 1)
            groups = max(s.int("groups", 1), 1)
            total += n * (1 + bn) + c_div(prev[2], groups) * n * size * size
        elif s.type == "connected":
            n = s.int("output", 1)
            total += n * (1 + bn) + prev[0] * prev[1] * prev[2] * n
        else:
            total += 3 * prev[2]
    return total
