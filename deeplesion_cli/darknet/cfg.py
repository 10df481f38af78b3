"""darknet ``.cfg`` files: parse them as darknet does, write them back, infer every layer's output
size and report every inconsistency with its line number before darknet is ever started.

Reading follows darknet's ``read_cfg`` (AlexeyAB and pjreddie alike): all whitespace is removed
from a line (``strip``), a line starting with ``[`` opens a section, ``#``/``;`` start comments,
and anything else is ``key=value``. A line without ``=`` is kept by darknet as a junk option it
never reads, and ``key=`` (nothing after ``=``) is refused with "Config file error line ...": both
are ignored here and recorded as warnings. darknet's ``option_find`` returns the *first* of
duplicated keys, so the first one is kept and the others are warnings. Numbers are read with C's
``atoi``/``atof`` rules (``filters=18#x`` is 18, ``filters=x`` is 0).

Layer indices are darknet's: the position among the sections after ``[net]``, from 0; ``[route]
layers`` and ``[shortcut] from`` take negative (relative) and absolute indices.

The checks follow darknet.md 2 (AlexeyAB README rules) and 12 (which fork knows what):
see :func:`check_cfg` and :func:`pjreddie_problems`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

# --------------------------------------------------------------------------------------------
# Layer types and keys each fork knows (darknet.md 12)

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

#: Section names pjreddie's ``string_to_layer_type`` knows (Debian ``0.0.0+git20180914``).
PJ_SECTIONS = frozenset(
    "shortcut crop cost detection region yolo iseg local conv convolutional deconv "
    "deconvolutional activation logistic l2norm net network crnn gru lstm rnn conn connected "
    "max maxpool reorg avg avgpool dropout lrn normalization batchnorm soft softmax route "
    "upsample".split()
)
#: Section names AlexeyAB adds (darknet.md 12).
AB_ONLY_SECTIONS = frozenset(
    "scale_channels sam Gaussian_yolo conv_lstm history local_avg local_avgpool reorg3d "
    "contrastive empty silence implicit".split()
)
#: Every section name this module accepts (pjreddie's and AlexeyAB's).
KNOWN_SECTIONS = PJ_SECTIONS | AB_ONLY_SECTIONS

#: Activations pjreddie knows (``src/activations.c``); anything else silently becomes ReLU there.
PJ_ACTIVATIONS = frozenset(
    "logistic loggy relu elu selu relie plse hardtan lhtan linear ramp leaky tanh stair".split()
)
#: Activations AlexeyAB adds.
AB_ONLY_ACTIVATIONS = frozenset(
    "swish mish hard_mish normalize_channels normalize_channels_softmax "
    "normalize_channels_softmax_maxval relu6 gelu revleaky".split()
)

#: Keys pjreddie's parser reads for every layer (``parse_network_cfg``).
_PJ_COMMON_KEYS = frozenset(
    "onlyforward stopbackward dontsave dontload numload dontloadscales learning_rate smooth".split()
)
#: Keys pjreddie's ``parse_*`` functions read, per layer type (canonical names). Any other key is
#: "Unused field" there: the layer then behaves differently from what the cfg says.
PJ_KEYS: dict[str, frozenset[str]] = {
    "net": frozenset(
        "batch learning_rate momentum decay subdivisions time_steps notruth random adam B1 B2 "
        "eps height width channels inputs max_crop min_crop max_ratio min_ratio center clip "
        "angle aspect saturation exposure hue policy burn_in power step scale steps scales "
        "gamma max_batches".split()
    ),
    "convolutional": frozenset(
        "filters size stride pad padding groups activation batch_normalize binary xnor flipped "
        "dot".split()
    ),
    "yolo": frozenset(
        "classes num mask max jitter ignore_thresh truth_thresh random map anchors".split()
    ),
    "region": frozenset(
        "coords classes num log sqrt softmax background max jitter rescore thresh classfix "
        "absolute random coord_scale object_scale noobject_scale mask_scale class_scale "
        "bias_match tree map anchors".split()
    ),
    "route": frozenset(["layers"]),
    "shortcut": frozenset("from activation alpha beta".split()),
    "upsample": frozenset("stride scale".split()),
    "maxpool": frozenset("stride size padding".split()),
    "avgpool": frozenset(),
    "dropout": frozenset(["probability"]),
    "reorg": frozenset("stride reverse flatten extra".split()),
    "connected": frozenset("output activation batch_normalize".split()),
    "softmax": frozenset("groups temperature tree spatial noloss".split()),
}

#: Detection layers: the loss layers whose ``classes`` must agree with obj.data.
DETECTION_TYPES = ("yolo", "Gaussian_yolo", "region")


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


def _known(shape) -> bool:
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
    if not _known(prev):
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
        if not _known(prev):
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


# --------------------------------------------------------------------------------------------
# Checks


def check_cfg(cfg: Cfg, data_classes: int | None = None,
              names_count: int | None = None) -> list[Problem]:
    """Every inconsistency of ``cfg`` that makes darknet fail or train something else than
    meant, with its line number, errors and warnings in file order.

    ``data_classes``: ``classes=`` of the obj.data it will run with; ``names_count``: the number
    of names in its obj.names. Checks:

    * the first section is ``[net]``/``[network]`` (and no later one is); unknown section types;
      options before any section; what parsing warned about (no ``=``, duplicates);
    * ``[net]``: width/height present and multiples of 32, channels present, batch divisible by
      subdivisions, policy=steps has steps and scales, steps increasing and within max_batches;
    * every ``[yolo]``/``[Gaussian_yolo]``/``[region]``: ``classes`` present, equal across layers
      and to ``data_classes``/``names_count``; ``num`` equal to the number of anchor pairs; mask
      indices within the anchors; the channels of the layer before it (``filters`` of its
      ``[convolutional]``) = (classes + 5) x len(mask) (x num without mask; classes + 9 for
      Gaussian_yolo; (classes + coords + 1) x num for region);
    * ``[route] layers`` and ``[shortcut] from`` in range (relative and absolute); route inputs
      of equal w x h; a group_id below groups;
    * every layer that needs an image gets one and outputs a size > 0 (shape inference).
    """
    problems = list(cfg.warnings)
    if not cfg.sections:
        problems.append(Problem(0, "", "", "no sections: darknet says 'Config file has no "
                                "sections'"))
        return problems
    first = cfg.sections[0]
    if first.type != "net":
        problems.append(Problem(first.line, first.name, "", "first section must be [net] or "
                                f"[network], not [{first.name}]"))
    for s in cfg.sections[1:]:
        if s.type == "net":
            problems.append(Problem(s.line, s.name, "", f"[{s.name}] is only allowed as the "
                                    "first section"))
    for s in cfg.sections:
        if s.name not in KNOWN_SECTIONS:
            problems.append(Problem(s.line, s.name, "", f"unknown section type [{s.name}]; "
                                    "darknet knows " + ", ".join(
                                        f"[{n}]" for n in sorted(KNOWN_SECTIONS, key=str.lower))))
    if cfg.net is not None:
        problems += _check_net(cfg.net)
    shapes = layer_shapes(cfg)
    problems += _check_layers(cfg, shapes)
    problems += _check_detection(cfg, shapes, data_classes, names_count)
    return sorted(problems, key=lambda p: p.line)


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def _check_net(net: Section) -> list[Problem]:
    out: list[Problem] = []

    def err(key, msg, severity="error"):
        out.append(Problem(net.line_of(key), net.name, key, msg, severity))

    for key in ("width", "height"):
        if key not in net.options:
            err(key, f"{key} missing (darknet: 'No input parameters supplied')")
        elif net.int(key) <= 0 or net.int(key) % 32:
            err(key, f"{key}={net.options[key]} is not a positive multiple of 32 "
                "(darknet: 'Layer before convolutional layer must output image')")
    if "channels" not in net.options or net.int("channels") <= 0:
        err("channels", "channels missing or not positive")
    batch, subdivisions = net.int("batch", 1), net.int("subdivisions", 1)
    if batch < 1:
        err("batch", f"batch={batch} must be at least 1")
    if subdivisions < 1:
        err("subdivisions", f"subdivisions={subdivisions} must be at least 1")
    elif batch >= 1 and batch % subdivisions:
        err("subdivisions", f"batch={batch} is not divisible by subdivisions={subdivisions} "
            f"(darknet would use {batch // subdivisions} x {subdivisions} = "
            f"{batch // subdivisions * subdivisions} images per iteration)")
    max_batches = net.int("max_batches", 0) if "max_batches" in net.options else None
    if max_batches is None:
        err("max_batches", "max_batches missing: training would stop at once", "warning")
    elif max_batches < 1:
        err("max_batches", f"max_batches={max_batches} must be at least 1")
    policy = net.get("policy", "constant")
    steps = net.ints("steps")
    if policy == "steps":
        if steps is None or "scales" not in net.options:
            err("steps" if steps is None else "scales",
                "policy=steps needs both steps= and scales=")
        elif len(net.floats("scales")) < len(steps):
            err("scales", f"{len(steps)} steps but only {len(net.floats('scales'))} scales "
                "(darknet reads past the end of scales=)")
    if steps is not None:
        for a, b in zip(steps, steps[1:]):
            if b < a:
                err("steps", f"steps={net.options['steps']} is not increasing ({b} after {a})")
                break
            if b == a:
                err("steps", f"steps={net.options['steps']} repeats {a}", "warning")
        if max_batches is not None and max_batches >= 1:
            for st in steps:
                if st > max_batches:
                    err("steps", f"step {st} is beyond max_batches={max_batches}: it never "
                        "applies", "warning")
                elif st == max_batches:
                    err("steps", f"step {st} equals max_batches: it never applies", "warning")
    burn_in = net.int("burn_in", 0) if "burn_in" in net.options else 0
    if burn_in > 0 and max_batches is not None and max_batches >= 1 and burn_in >= max_batches:
        power = net.float("power", 4.0) if "power" in net.options else 4.0
        reached = (max_batches / burn_in) ** power
        err("burn_in", f"burn_in={burn_in} >= max_batches={max_batches}: the whole run is "
            f"warm-up, ending at {reached:.2g} x learning_rate (rate x (iteration / burn_in) ^ "
            f"{power:g}); set burn_in below max_batches (`lesion cfg --burn-in`)", "warning")
    return out


_NEEDS_IMAGE = frozenset(
    "convolutional deconvolutional maxpool local_avgpool avgpool upsample reorg reorg3d local "
    "crop".split()
)


def _check_layers(cfg: Cfg, shapes: list[LayerShape]) -> list[Problem]:
    out: list[Problem] = []
    net = cfg.net
    net_shape = (net.int("width"), net.int("height"), net.int("channels")) if net else None
    for i, s in enumerate(cfg.layers):
        t = s.type
        prev = net_shape if i == 0 else shapes[i - 1][2:]
        if t == "route":
            out += _check_refs(s, i, "layers", shapes, "Route Layer must specify input layers")
            refs = s.ints("layers") or []
            ins = [resolve_index(r, i) for r in refs]
            if all(0 <= j < i for j in ins) and all(shapes[j].out_w is not None for j in ins):
                sizes = {(shapes[j].out_w, shapes[j].out_h) for j in ins}
                if len(sizes) > 1:
                    listed = ", ".join(f"{j}: {shapes[j].out_w}x{shapes[j].out_h}" for j in ins)
                    out.append(Problem(s.line_of("layers"), s.name, "layers",
                                       f"route joins layers of different width x height "
                                       f"({listed}); darknet outputs nothing here"))
            groups, group_id = s.int("groups", 1), s.int("group_id", 0)
            if groups < 1:
                out.append(Problem(s.line_of("groups"), s.name, "groups",
                                   f"groups={groups} must be at least 1"))
            elif not 0 <= group_id < groups:
                out.append(Problem(s.line_of("group_id"), s.name, "group_id",
                                   f"group_id={group_id} must be in 0..{groups - 1}"))
        elif t == "shortcut":
            out += _check_refs(s, i, "from", shapes, "shortcut needs from=")
            refs = s.ints("from") or []
            for r in refs:
                j = resolve_index(r, i)
                if 0 <= j < i and _known(prev) and shapes[j].out_w is not None:
                    if (shapes[j].out_w, shapes[j].out_h) != tuple(prev[:2]):
                        out.append(Problem(
                            s.line_of("from"), s.name, "from",
                            f"shortcut adds layer {j} ({shapes[j].out_w}x{shapes[j].out_h}) to "
                            f"layer {i - 1} ({prev[0]}x{prev[1]}): different sizes", "warning"))
        if t in _NEEDS_IMAGE and _known(prev) and min(prev) <= 0:
            where = "the input" if i == 0 else f"layer {i - 1}"
            out.append(Problem(s.line, s.name, "", f"layer {i} [{s.name}] gets no image from "
                               f"{where} ({prev[0]}x{prev[1]}x{prev[2]}) (darknet: 'Layer before "
                               f"{t} layer must output image')"))
        elif t in _NEEDS_IMAGE and _known(shapes[i][2:]) and min(shapes[i][2:]) <= 0:
            out.append(Problem(s.line, s.name, "", f"layer {i} [{s.name}] outputs "
                               f"{shapes[i].out_w}x{shapes[i].out_h}x{shapes[i].out_c}: "
                               "input too small for its size/stride"))
        if t == "convolutional":
            groups = s.int("groups", 1)
            if groups > 1 and _known(prev) and prev[2] % groups:
                out.append(Problem(s.line_of("groups"), s.name, "groups",
                                   f"{prev[2]} input channels are not divisible by "
                                   f"groups={groups}"))
    return out


def _check_refs(s: Section, i: int, key: str, shapes, missing: str) -> list[Problem]:
    refs = s.ints(key)
    if refs is None:
        return [Problem(s.line, s.name, key, missing)]
    out = []
    for r in refs:
        j = resolve_index(r, i)
        if not 0 <= j < i:
            rel = f" (= layer {j})" if r < 0 else ""
            out.append(Problem(s.line_of(key), s.name, key,
                               f"{key}={s.options[key]}: {r}{rel} is out of range for layer {i}; "
                               f"it may refer to layers 0..{i - 1} (or -1..-{i})"
                               if i else f"{key}={s.options[key]}: layer 0 has no earlier layer"))
    return out


def _check_detection(cfg: Cfg, shapes, data_classes, names_count) -> list[Problem]:
    out: list[Problem] = []
    heads = cfg.of_type(*DETECTION_TYPES)
    first_classes: tuple[int, int] | None = None  # (classes, line)
    for i, s in heads:
        t = s.type
        if "classes" not in s.options:
            out.append(Problem(s.line, s.name, "classes", "classes missing (darknet uses 20)"))
            classes = 20
        else:
            classes = s.int("classes")
            cl_line = s.line_of("classes")
            if classes < 1:
                out.append(Problem(cl_line, s.name, "classes", f"classes={classes} must be >= 1"))
            if first_classes is None:
                first_classes = (classes, cl_line)
            elif classes != first_classes[0]:
                out.append(Problem(cl_line, s.name, "classes",
                                   f"classes={classes} differs from classes={first_classes[0]} "
                                   f"of the first detection layer (line {first_classes[1]})"))
            if data_classes is not None and classes != data_classes:
                out.append(Problem(cl_line, s.name, "classes",
                                   f"classes={classes} but obj.data has classes={data_classes}"))
            if names_count is not None and classes != names_count:
                out.append(Problem(cl_line, s.name, "classes",
                                   f"classes={classes} but obj.names has {names_count} names"))
        num = s.int("num", 1)
        anchors = s.floats("anchors")
        if anchors is not None:
            if len(anchors) % 2:
                out.append(Problem(s.line_of("anchors"), s.name, "anchors",
                                   f"{len(anchors)} anchor values: not (w,h) pairs"))
            elif len(anchors) // 2 != num:
                out.append(Problem(s.line_of("anchors"), s.name, "anchors",
                                   f"{len(anchors) // 2} anchors but num={num}"))
        elif t != "region":
            out.append(Problem(s.line, s.name, "anchors", "anchors missing", "warning"))
        n_anchors = len(anchors) // 2 if anchors is not None else num
        mask = s.ints("mask") if t != "region" else None
        if mask is not None:
            bad = [m for m in mask if not 0 <= m < min(num, n_anchors)]
            if bad:
                out.append(Problem(s.line_of("mask"), s.name, "mask",
                                   f"mask={s.options['mask']}: index {bad[0]} is beyond the "
                                   f"{min(num, n_anchors)} anchors (num={num}, "
                                   f"{n_anchors} anchor pairs)"))
        per_anchor = {"yolo": classes + 5, "Gaussian_yolo": classes + 9,
                      "region": classes + s.int("coords", 4) + 1}[t]
        n = len(mask) if mask is not None else num
        expected = per_anchor * n
        if i == 0:
            out.append(Problem(s.line, s.name, "", f"[{s.name}] cannot be the first layer"))
            continue
        before = cfg.layers[i - 1]
        got = shapes[i - 1].out_c
        formula = {"yolo": "(classes + 5)", "Gaussian_yolo": "(classes + 9)",
                   "region": "(classes + coords + 1)"}[t]
        count = "len(mask)" if mask is not None else "num"
        if before.type == "convolutional":
            got = before.int("filters", 1)
            if got != expected:
                out.append(Problem(before.line_of("filters"), before.name, "filters",
                                   f"filters={got} before the [{s.name}] at line {s.line} "
                                   f"(layer {i}); it must be {formula} x {count} = "
                                   f"{per_anchor} x {n} = {expected}"))
        elif got is not None and got != expected:
            out.append(Problem(s.line, s.name, "", f"layer {i - 1} outputs {got} channels; "
                               f"[{s.name}] needs {formula} x {count} = {expected}"))
    return out


# --------------------------------------------------------------------------------------------
# pjreddie compatibility


def pjreddie_problems(cfg: Cfg) -> list[Problem]:
    """What pjreddie's (Debian's) darknet would not build as written (darknet.md 12): section
    types and activations it does not know (errors: it builds another network or fails) and keys
    its parser never reads. Unknown layer keys are errors (the layer then behaves differently,
    e.g. MSE instead of CIoU loss); unknown ``[net]`` keys are warnings, since pjreddie ignores
    them silently (e.g. ``flip``: pjreddie always flips at random; ``mosaic``)."""
    out: list[Problem] = []
    for s in cfg.sections:
        t = s.type
        if s.name not in PJ_SECTIONS:
            out.append(Problem(s.line, s.name, "", f"pjreddie does not know [{s.name}]"))
            continue
        act = s.get("activation")
        if act is not None and act not in PJ_ACTIVATIONS:
            out.append(Problem(s.line_of("activation"), s.name, "activation",
                               f"pjreddie does not know activation={act} (it uses ReLU instead)"))
        known = PJ_KEYS.get(t)
        if known is None:
            continue
        for key in s.options:
            if key in known or (t != "net" and key in _PJ_COMMON_KEYS):
                continue
            if t == "net":
                out.append(Problem(s.line_of(key), s.name, key,
                                   f"pjreddie ignores {key}= silently", "warning"))
            else:
                out.append(Problem(s.line_of(key), s.name, key,
                                   f"pjreddie does not read {key}= in [{s.name}] "
                                   "('Unused field'): the layer works differently there"))
    return out
