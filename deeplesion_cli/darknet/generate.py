"""Write a training cfg for yolov4, yolov4-tiny, yolov3 or yolov3-tiny from the templates in
``darknet_cfg/`` (complete 1-class cfgs this project writes; see darknet_cfg/README.md), following
AlexeyAB's README rules for custom detectors (docs/darknet.md 2):

* ``classes=`` in every ``[yolo]`` and ``filters=(classes + 5) x len(mask)`` in the convolution
  before it;
* ``width``/``height`` multiples of 32, ``batch``/``subdivisions``;
* ``max_batches = max(2000 x classes, training images, 6000)`` unless given, ``steps`` at 80% and
  90% of it, ``burn_in`` = the stock 1000 or a sixth of ``max_batches`` when that is less
  (:func:`default_burn_in`: a short run must leave its warm-up);
* ``flip=0`` (left and right differ in CT), ``mosaic=0``, ``random=0`` (pjreddie resizes to
  320..608 px whatever the cfg says) unless asked otherwise;
* custom anchors re-split over the ``[yolo]`` layers by size (:func:`split_anchors`);
* ``small_objects`` (yolov4 only): the README's three changes that move the first head to
  stride 4.

The result is parsed and checked with :func:`~deeplesion_cli.darknet.cfg.check_cfg`; any error
raises :class:`CfgError`, so what this module returns is a cfg darknet accepts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.spec.darknet import ARCHS as ARCH_NAMES

from .cfg import Cfg, Problem, Section, check_cfg, errors, layer_shapes, parse_cfg

#: Where the templates live: ``darknet_cfg/`` at the root of the source tree, or the folder
#: named by the environment variable LESION_DARKNET_CFG.
TEMPLATE_ENV = "LESION_DARKNET_CFG"


@dataclass(frozen=True)
class Arch:
    """What a template must build (verified against the upstream cfgs, see darknet_cfg/README)."""

    name: str
    layers: int  # layer count (sections after [net])
    yolo_layers: tuple[int, ...]  # indices of the [yolo] layers, in cfg order
    strides: tuple[int, ...]  # their strides at the default geometry, in cfg order
    pjreddie: bool  # also runs unchanged on pjreddie's (Debian's) darknet


ARCHS: dict[str, Arch] = {
    "yolov4": Arch("yolov4", 162, (139, 150, 161), (8, 16, 32), False),
    "yolov4-tiny": Arch("yolov4-tiny", 38, (30, 37), (32, 16), False),
    "yolov3": Arch("yolov3", 107, (82, 94, 106), (32, 16, 8), True),
    "yolov3-tiny": Arch("yolov3-tiny", 24, (16, 23), (32, 16), True),
}
# the names `lesion cfg --arch` offers are declared with its options; a template for each
assert tuple(ARCHS) == ARCH_NAMES, "deeplesion_cli.spec.darknet.ARCHS and the templates differ"

#: README thresholds (px at the network input) for re-splitting custom anchors, finest head
#: first: anchors smaller than 30x30 go to the stride-8 head, smaller than 60x60 to the stride-16
#: head, the rest to the coarsest. With two heads (the tiny models, strides 16 and 32) the
#: stride-16 head takes those smaller than 60x60.
SPLIT_THRESHOLDS = {3: (30.0, 60.0), 2: (60.0,)}

#: yolov4's backbone ends at this layer (AlexeyAB's yolov4-custom.cfg sets stopbackward=800 here).
YOLOV4_BACKBONE_END = 104


class CfgError(LesionInputError):
    """A generated cfg failed :func:`check_cfg`; ``problems`` lists every error."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message + "".join(f"\n  {p}" for p in problems))
        self.problems = problems


def template_dir() -> Path:
    env = os.environ.get(TEMPLATE_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "darknet_cfg"


def template_path(arch: str) -> Path:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    path = template_dir() / f"{arch}.cfg"
    if not path.is_file():
        raise FileNotFoundError(f"darknet cfg template missing: {path} (set {TEMPLATE_ENV} to "
                                "the darknet_cfg folder of the lesion source tree)")
    return path


def load_template(arch: str) -> Cfg:
    """The template of ``arch`` as a :class:`Cfg` (1 class, 416 x 416)."""
    path = template_path(arch)
    return parse_cfg(path.read_text(), source=str(path))


def default_max_batches(classes: int, n_train_images: int = 0) -> int:
    """README: ``classes x 2000``, but not less than the training images and not less than 6000."""
    return max(2000 * classes, n_train_images, 6000)


#: The stock cfgs' warm-up (iterations) and the README's smallest max_batches it was set for.
STOCK_BURN_IN = 1000
STOCK_MIN_MAX_BATCHES = 6000


def default_burn_in(max_batches: int) -> int:
    """``burn_in`` for a run of ``max_batches`` iterations: the stock 1000, or a sixth of
    ``max_batches`` when that is less (the stock ratio at 6000 iterations), at least 1.

    darknet's warm-up multiplies the rate by ``(iteration / burn_in) ** power`` (power 4): with
    the stock burn_in=1000, a 100-iteration run trains at 1e-4 of ``learning_rate`` at best,
    which its log prints as ``0.000000 rate``, so nothing is learnt."""
    return max(1, min(STOCK_BURN_IN, max_batches * STOCK_BURN_IN // STOCK_MIN_MAX_BATCHES))


def default_steps(max_batches: int) -> tuple[int, int]:
    """README: 80% and 90% of max_batches."""
    return max_batches * 8 // 10, max_batches * 9 // 10


def split_anchors(anchors_px, n_heads: int
                  ) -> tuple[list[tuple[float, float]], list[list[int]], str]:
    """Sort anchors by area and split them over ``n_heads`` [yolo] layers, finest head first.

    Returns (anchors sorted by area, masks finest head first, rule used). The README rule
    (:data:`SPLIT_THRESHOLDS`; "smaller than 30x30" read as w x h < 30 x 30) is used when every
    head gets at least one anchor. Otherwise (e.g. all anchors of small lesions below 60x60) the
    fallback splits the sorted anchors into ``n_heads`` runs as equal as possible (finest heads
    take the remainder), so no [yolo] layer has an empty mask. Raises ValueError for fewer
    anchors than heads or for non-positive sizes.
    """
    pairs = []
    for a in anchors_px:
        if len(a) != 2:
            raise ValueError(f"anchor {a!r} is not a (width, height) pair")
        w, h = float(a[0]), float(a[1])
        if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
            raise ValueError(f"anchor {a!r} must have positive finite width and height")
        pairs.append((w, h))
    if len(pairs) < n_heads:
        raise ValueError(f"{len(pairs)} anchors for {n_heads} [yolo] layers: each needs one")
    pairs.sort(key=lambda p: p[0] * p[1])
    thresholds = SPLIT_THRESHOLDS.get(n_heads)
    if thresholds is not None:
        masks: list[list[int]] = [[] for _ in range(n_heads)]
        for i, (w, h) in enumerate(pairs):
            head = sum(1 for t in thresholds if w * h >= t * t)
            masks[head].append(i)
        if all(masks):
            limits = ", ".join(f"{t:g}x{t:g}" for t in thresholds)
            return pairs, masks, f"README: by area, limits {limits}"
    k = len(pairs)
    masks, start = [], 0
    for j in range(n_heads):
        n = k // n_heads + (1 if j < k % n_heads else 0)
        masks.append(list(range(start, start + n)))
        start += n
    return pairs, masks, "fallback: equal runs by area (the README limits left a head empty)"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def generate_cfg(arch: str, classes: int, size=(416, 416), anchors_px=None, batch: int = 64,
                 subdivisions: int = 16, max_batches: int | None = None,
                 n_train_images: int = 0, small_objects: bool = False, mosaic: bool = False,
                 flip: bool = False, learning_rate: float | None = None, random: bool = False,
                 stopbackward: int | None = None, burn_in: int | None = None) -> str:
    """A checked darknet training cfg (text) for ``arch`` with ``classes`` classes.

    ``size``: (width, height), multiples of 32. ``anchors_px``: k (w, h) pairs in network-input
    pixels (any order; e.g. from ``darknet detector calc_anchors``), put in every [yolo] with
    ``num=k`` and masks re-split (:func:`split_anchors`); default: the arch's stock anchors and
    masks. ``max_batches``: default :func:`default_max_batches`; ``steps`` are always 80%/90%.
    ``burn_in``: warm-up iterations, default :func:`default_burn_in` of ``max_batches``.
    ``learning_rate``: default the stock cfg's (0.001; 0.00261 for yolov4-tiny). ``flip``,
    ``mosaic``: [net] flip=1 / mosaic=1 (mosaic needs an OpenCV build of AlexeyAB's darknet).
    ``random``: random=1 in every [yolo] (multi-scale training; pjreddie then trains at
    320..608 px). ``small_objects`` (yolov4 only): the README's change for objects below 16x16
    at 416 (first head at stride 4). ``stopbackward`` (yolov4 only): AlexeyAB's stock
    ``stopbackward=800`` on the last backbone layer (104), for training from yolov4.conv.137;
    off by default (no use from scratch, and hank-ai's CPU build crashes on it).
    Raises ValueError for bad arguments and :class:`CfgError` if the result fails the check.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    info = ARCHS[arch]
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive integer, not {classes!r}")
    width, height = (int(v) for v in size)
    for name, v in (("width", width), ("height", height)):
        if v <= 0 or v % 32:
            raise ValueError(f"{name} {v} is not a positive multiple of 32 (darknet README)")
    if batch < 1 or subdivisions < 1 or batch % subdivisions:
        raise ValueError(f"batch={batch} must be a positive multiple of subdivisions="
                         f"{subdivisions}")
    if n_train_images < 0:
        raise ValueError("n_train_images must be >= 0")
    if max_batches is None:
        max_batches = default_max_batches(classes, n_train_images)
    elif max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, not {max_batches}")
    if burn_in is None:
        burn_in = default_burn_in(max_batches)
    elif burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, not {burn_in}")
    if learning_rate is not None and not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be positive, not {learning_rate!r}")
    if small_objects and arch != "yolov4":
        raise ValueError("small_objects applies to yolov4 only (the README gives its changes "
                         "for yolov4.cfg)")
    if stopbackward is not None and (arch != "yolov4" or stopbackward < 1):
        raise ValueError("stopbackward needs arch yolov4 and a positive iteration count")

    cfg = load_template(arch)
    net = cfg.net
    layers = cfg.layers
    if net is None or len(layers) != info.layers or \
            tuple(i for i, _ in cfg.of_type("yolo")) != info.yolo_layers:
        raise CfgError(f"template {cfg.source} does not have the {arch} structure", [])

    steps = default_steps(max_batches)
    net.set("batch", batch)
    net.set("subdivisions", subdivisions)
    net.set("width", width)
    net.set("height", height)
    net.set("flip", 1 if flip else 0)
    net.set("mosaic", 1 if mosaic else 0)
    if learning_rate is not None:
        net.set("learning_rate", f"{learning_rate:g}")
    net.set("burn_in", burn_in)
    net.set("max_batches", max_batches)
    net.set("steps", f"{steps[0]},{steps[1]}")

    if small_objects:
        _small_objects(cfg)
    if stopbackward is not None:
        layers[YOLOV4_BACKBONE_END].set("stopbackward", stopbackward)

    heads = cfg.of_type("yolo")
    anchor_note = "stock anchors and masks"
    if anchors_px is not None:
        shapes = layer_shapes(cfg)
        # finest head (largest output) first
        order = sorted(range(len(heads)), key=lambda n: -(shapes[heads[n][0]].out_w or 0))
        pairs, masks, rule = split_anchors(anchors_px, len(heads))
        anchors_text = ", ".join(f"{_fmt(w)},{_fmt(h)}" for w, h in pairs)
        for rank, n in enumerate(order):
            _, s = heads[n]
            s.set("mask", ",".join(str(m) for m in masks[rank]))
            s.set("anchors", anchors_text)
            s.set("num", len(pairs))
        anchor_note = f"{len(pairs)} custom anchors; masks {rule}"

    for i, s in heads:
        s.set("classes", classes)
        s.set("random", 1 if random else 0)
        _conv_before(cfg, i).set("filters", (classes + 5) * len(s.ints("mask")))

    header = "\n".join([
        f"lesion: {arch} for {classes} class(es) at {width} x {height}, written by "
        "deeplesion_cli.darknet.generate",
        f"from darknet_cfg/{arch}.cfg ({info.layers} layers, [yolo] at "
        f"{', '.join(str(i) for i in info.yolo_layers)}). "
        + ("Runs on pjreddie's and AlexeyAB's darknet." if info.pjreddie
           else "Needs AlexeyAB's (or hank-ai's) darknet."),
        f"burn_in={burn_in}, max_batches={max_batches}, steps={steps[0]},{steps[1]}; "
        f"{anchor_note}"
        + ("; small objects: first head at stride 4" if small_objects else ""),
    ])
    text = cfg.dumps(header=header, annotate=True)
    problems = errors(check_cfg(parse_cfg(text, f"{arch}.cfg"), data_classes=classes))
    if problems:
        raise CfgError(f"generated {arch} cfg fails the check", problems)
    return text


def _conv_before(cfg: Cfg, index: int) -> Section:
    before = cfg.layers[index - 1]
    if before.type != "convolutional":
        raise CfgError(f"layer {index - 1} before the [yolo] at line "
                       f"{cfg.layers[index].line} is not a [convolutional]", [])
    return before


def _small_objects(cfg: Cfg) -> None:
    """AlexeyAB README (docs/darknet.md 2), for yolov4: the second [upsample] gets stride=4, the
    [route] after it layers=23 instead of 54, and the down-sampling 3x3 [convolutional] after the
    first [yolo] (and its ``[route] layers=-4``) gets stride=4."""
    layers = cfg.layers
    ups = [i for i, s in cfg.of_type("upsample")]
    first_yolo = cfg.of_type("yolo")[0][0]
    up = layers[ups[1]]
    route = layers[ups[1] + 1]
    route4, conv = layers[first_yolo + 1], layers[first_yolo + 2]
    if not (route.type == "route" and route.get("layers") == "54" and up.get("stride") == "2"
            and route4.type == "route" and route4.get("layers") == "-4"
            and conv.type == "convolutional" and conv.get("stride") == "2"):
        raise CfgError(f"template {cfg.source} is not the yolov4 the README's small-objects "
                       "change describes", [])
    up.set("stride", 4)
    route.set("layers", 23)
    conv.set("stride", 4)
