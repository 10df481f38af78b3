"""darknet ``.cfg`` checks: every inconsistency that makes darknet fail or train something else than
meant, with its line number, before darknet is ever started; and what each fork knows.

The checks follow docs/darknet.md section 2 (AlexeyAB README rules) and section 12 (what
pjreddie's darknet builds from a modern cfg): see :func:`check_cfg` and :func:`pjreddie_problems`.

The cfg model (parsing, writing, shape inference) lives in :mod:`.cfg_model`; its names are
importable from here as well, so a caller needs one import for a cfg and its checks.
"""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli.darknet.cfg_model import (
    ALIASES,
    Cfg,
    LayerShape,
    Problem,
    Section,
    c_atof,
    c_atoi,
    c_div,
    canonical_type,
    known_shape,
    layer_shapes,
    parse_cfg,
    resolve_index,
    weights_floats,
)
from deeplesion_cli.errors import LesionInputError

# The model's names are re-exported: one import serves a cfg and its checks.
__all__ = [
    "AB_ONLY_ACTIVATIONS", "AB_ONLY_SECTIONS", "ALIASES", "DETECTION_TYPES", "KNOWN_SECTIONS",
    "PJ_ACTIVATIONS", "PJ_KEYS", "PJ_SECTIONS", "Cfg", "LayerShape", "Problem", "Section",
    "c_atof", "c_atoi", "c_div", "canonical_type", "check_cfg", "errors", "known_shape",
    "layer_shapes", "parse_cfg", "read_cfg_file", "CfgFileError", "pjreddie_problems",
    "resolve_index", "weights_floats",
]

# --------------------------------------------------------------------------------------------
# Layer types and keys each fork knows (docs/darknet.md section 12)

#: Section names pjreddie's ``string_to_layer_type`` knows (Debian ``0.0.0+git20180914``).
PJ_SECTIONS = frozenset(
    "shortcut crop cost detection region yolo iseg local conv convolutional deconv "
    "deconvolutional activation logistic l2norm net network crnn gru lstm rnn conn connected "
    "max maxpool reorg avg avgpool dropout lrn normalization batchnorm soft softmax route "
    "upsample".split()
)
#: Section names AlexeyAB adds (docs/darknet.md section 12).
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
    """The problems of severity ``error`` (those that stop a run)."""
    return [p for p in problems if p.severity == "error"]


class CfgFileError(LesionInputError):
    """A file given as a cfg that is not a text cfg (a weights file, an image...): exit 2."""


def read_cfg_file(path) -> Cfg:
    """Parse the cfg file ``path``; :class:`CfgFileError` naming it when it is not UTF-8 text
    (a binary file: darknet would read garbage sections from it)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
        bad = data.find(b"\0")
    except UnicodeDecodeError as exc:
        bad = exc.start
    if bad >= 0:
        raise CfgFileError(f"{path}: not a text cfg file (byte {bad} is 0x{data[bad]:02x}, not "
                           "UTF-8 text): give the .cfg, not a weights or image file")
    return parse_cfg(text, str(path))


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
                if 0 <= j < i and known_shape(prev) and shapes[j].out_w is not None:
                    if (shapes[j].out_w, shapes[j].out_h) != tuple(prev[:2]):
                        out.append(Problem(
                            s.line_of("from"), s.name, "from",
                            f"shortcut adds layer {j} ({shapes[j].out_w}x{shapes[j].out_h}) to "
                            f"layer {i - 1} ({prev[0]}x{prev[1]}): different sizes", "warning"))
        if t in _NEEDS_IMAGE and known_shape(prev) and min(prev) <= 0:
            where = "the input" if i == 0 else f"layer {i - 1}"
            out.append(Problem(s.line, s.name, "", f"layer {i} [{s.name}] gets no image from "
                               f"{where} ({prev[0]}x{prev[1]}x{prev[2]}) (darknet: 'Layer before "
                               f"{t} layer must output image')"))
        elif t in _NEEDS_IMAGE and known_shape(shapes[i][2:]) and min(shapes[i][2:]) <= 0:
            out.append(Problem(s.line, s.name, "", f"layer {i} [{s.name}] outputs "
                               f"{shapes[i].out_w}x{shapes[i].out_h}x{shapes[i].out_c}: "
                               "input too small for its size/stride"))
        if t == "convolutional":
            groups = s.int("groups", 1)
            if groups > 1 and known_shape(prev) and prev[2] % groups:
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
    """What pjreddie's (Debian's) darknet would not build as written (docs/darknet.md section
    12): section types and activations it does not know (errors: it builds another network or
    fails) and keys its parser never reads. Unknown layer keys are errors (the layer then behaves differently,
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
