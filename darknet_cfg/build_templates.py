"""Write the four darknet cfg templates of this folder: yolov3-tiny.cfg, yolov3.cfg,
yolov4-tiny.cfg and yolov4.cfg.

The templates are complete, valid darknet cfgs for 1 class at 416 x 416 with this project's
training defaults; ``deeplesion_cli.darknet.generate.generate_cfg`` parses them and sets classes,
filters, anchors, masks, size and schedule. The architectures are those of the stock cfgs of
pjreddie's and AlexeyAB's darknet (see README.md here for the provenance and what differs);
this script writes them from the network's structure (stages of residual blocks, CSP stages,
SPP, PANet, heads) instead of copying those files.

Run after changing anything here (tests/test_cfg.py fails while the files are out of date):

    .venv/bin/python darknet_cfg/build_templates.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Stock anchors (w,h in network-input pixels), smallest first.
ANCHORS_V4 = "12,16, 19,36, 40,28, 36,75, 76,55, 72,146, 142,110, 192,243, 459,401"
ANCHORS_V3 = "10,13, 16,30, 33,23, 30,61, 62,45, 59,119, 116,90, 156,198, 373,326"
ANCHORS_TINY = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"

CLASSES = 1


class Builder:
    """Collects sections (with a comment for the ones that start a part of the network) and
    counts layers as darknet does (every section after [net], from 0)."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[list[str], str, list[tuple[str, str]]]] = []
        self.pending: list[str] = []
        self.count = 0

    def note(self, *lines: str) -> None:
        self.pending += lines

    def add(self, name: str, **options) -> int:
        self.blocks.append((self.pending, name, [(k, str(v)) for k, v in options.items()]))
        self.pending = []
        if name == "net":
            return -1
        self.count += 1
        return self.count - 1

    def conv(self, filters: int, size: int = 1, stride: int = 1, act: str = "leaky") -> int:
        return self.add("convolutional", batch_normalize=1, filters=filters, size=size,
                        stride=stride, pad=1, activation=act)

    def head_conv(self, classes: int, mask_len: int = 3) -> int:
        """The 1x1 linear convolution that feeds a [yolo] layer."""
        return self.add("convolutional", size=1, stride=1, pad=1,
                        filters=(classes + 5) * mask_len, activation="linear")

    def route(self, *layers: int, **extra) -> int:
        return self.add("route", layers=",".join(str(x) for x in layers), **extra)

    def shortcut(self, source: int = -3) -> int:
        return self.add("shortcut", **{"from": source, "activation": "linear"})

    def maxpool(self, size: int, stride: int) -> int:
        return self.add("maxpool", size=size, stride=stride)

    def upsample(self, stride: int = 2) -> int:
        return self.add("upsample", stride=stride)

    def render(self, shapes=None) -> str:
        out = [f"# {line}".rstrip() for line in self.title.strip().splitlines()]
        index = -1
        for notes, name, options in self.blocks:
            out.append("")
            out += [f"# {n}" for n in notes]
            if name != "net":
                index += 1
                if shapes is not None:
                    w, h, c = shapes[index]
                    out.append(f"# layer {index}: {w} x {h} x {c}")
            out.append(f"[{name}]")
            out += [f"{k}={v}" for k, v in options]
        return "\n".join(out) + "\n"


def net_section(b: Builder, momentum: str, learning_rate: str, mosaic: bool = True) -> None:
    opts = dict(batch=64, subdivisions=16, width=416, height=416, channels=3,
                momentum=momentum, decay="0.0005", angle=0, saturation="1.5", exposure="1.5",
                hue=".1", flip=0)
    if mosaic:
        opts["mosaic"] = 0
    opts.update(learning_rate=learning_rate, burn_in=1000, max_batches=6000, policy="steps",
                steps="4800,5400", scales=".1,.1")
    b.note("Training schedule for 1 class (generate_cfg rewrites it): max_batches =",
           "max(2000 x classes, training images, 6000), steps at 80% and 90%.",
           "flip=0: left and right differ in CT. random=0 in every [yolo].")
    b.add("net", **opts)


# ----------------------------------------------------------------------------------------------
# YOLOv3 family (pjreddie): leaky activations, keys pjreddie's parser reads, nothing else.


def yolo_v3_layer(b: Builder, mask: str, anchors: str, num: int) -> int:
    return b.add("yolo", mask=mask, anchors=anchors, classes=CLASSES, num=num, jitter=".3",
                 ignore_thresh=".7", truth_thresh=1, random=0)


def build_yolov3() -> Builder:
    b = Builder(TITLES["yolov3"])
    net_section(b, momentum="0.9", learning_rate="0.001")
    b.note("Darknet-53 backbone: 52 convolutional layers in 5 down-sampling stages")
    b.conv(32, 3)
    skips = {}
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        b.note(f"Down-sample to {filters} channels, then {blocks} residual block(s)")
        b.conv(filters, 3, 2)
        for _ in range(blocks):
            b.conv(filters // 2, 1)
            b.conv(filters, 3)
            last = b.shortcut(-3)
        skips[filters] = last
    assert skips[256] == 36 and skips[512] == 61
    heads = (("6,7,8", 512, None), ("3,4,5", 256, skips[512]), ("0,1,2", 128, skips[256]))
    for n, (mask, width, skip) in enumerate(heads):
        if skip is not None:
            b.note(f"Head {n + 1}: stride {32 >> n}; up-sample and join layer {skip}, the end of "
                   "the backbone stage at this resolution")
            b.route(-4)
            b.conv(width, 1)
            b.upsample(2)
            b.route(-1, skip)
        else:
            b.note("Head 1: stride 32, the largest anchors")
        for _ in range(3):
            b.conv(width, 1)
            b.conv(width * 2, 3)
        b.head_conv(CLASSES)
        yolo_v3_layer(b, mask, ANCHORS_V3, 9)
    return b


def build_yolov3_tiny() -> Builder:
    b = Builder(TITLES["yolov3-tiny"])
    net_section(b, momentum="0.9", learning_rate="0.001")
    b.note("Backbone: 3x3 convolutions and 2x2 max-pools down to stride 32")
    for filters in (16, 32, 64, 128, 256):
        b.conv(filters, 3)
        b.maxpool(2, 2)
    b.conv(512, 3)
    b.note("size 2, stride 1: darknet pads, so the size stays 13 x 13 at 416")
    b.maxpool(2, 1)
    b.conv(1024, 3)
    b.note("Head 1: stride 32, the larger anchors")
    b.conv(256, 1)
    b.conv(512, 3)
    b.head_conv(CLASSES)
    yolo_v3_layer(b, "3,4,5", ANCHORS_TINY, 6)
    b.note("Head 2: stride 16; up-sample layer 13 and join layer 8 (stride 16)")
    b.route(-4)
    b.conv(128, 1)
    b.upsample(2)
    b.route(-1, 8)
    b.conv(256, 3)
    b.head_conv(CLASSES)
    yolo_v3_layer(b, "0,1,2", ANCHORS_TINY, 6)
    return b


# ----------------------------------------------------------------------------------------------
# YOLOv4 family (AlexeyAB): mish/leaky, CSP stages, route groups, CIoU loss.


def yolo_v4_layer(b: Builder, mask: str, anchors: str, num: int, scale_x_y: str,
                  tiny: bool = False) -> int:
    opts = dict(mask=mask, anchors=anchors, classes=CLASSES, num=num, jitter=".3",
                ignore_thresh=".7", truth_thresh=1, random=0, scale_x_y=scale_x_y)
    if not tiny:
        opts["iou_thresh"] = "0.213"
    opts.update(cls_normalizer="1.0", iou_normalizer="0.07", iou_loss="ciou",
                nms_kind="greedynms", beta_nms="0.6")
    if tiny:
        opts["resize"] = "1.5"
    else:
        opts["max_delta"] = 5
    return b.add("yolo", **opts)


def csp_stage(b: Builder, filters: int, blocks: int, first: bool) -> int:
    """A CSPDarknet53 stage: down-sample, split into two parts, residual blocks on one, join.
    Returns the index of its last layer (the stage's output)."""
    part = filters if first else filters // 2
    hidden = filters // 2
    b.note(f"CSP stage: down-sample to {filters} channels; {blocks} residual block(s) on one "
           "half, the other half joins after them")
    b.conv(filters, 3, 2, "mish")
    b.conv(part, 1, 1, "mish")
    b.route(-2)
    b.conv(part, 1, 1, "mish")
    for _ in range(blocks):
        b.conv(hidden, 1, 1, "mish")
        b.conv(part, 3, 1, "mish")
        b.shortcut(-3)
    b.conv(part, 1, 1, "mish")
    b.route(-1, -(blocks * 3 + 4))
    return b.conv(filters, 1, 1, "mish")


def build_yolov4() -> Builder:
    b = Builder(TITLES["yolov4"])
    net_section(b, momentum="0.949", learning_rate="0.001")
    b.note("CSPDarknet53 backbone")
    b.conv(32, 3, 1, "mish")
    ends = {}
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        ends[filters] = csp_stage(b, filters, blocks, first=filters == 64)
    assert ends == {64: 10, 128: 23, 256: 54, 512: 85, 1024: 104}, ends

    b.note("Neck: SPP (max-pools of 5, 9, 13 at stride 1, joined), then PANet")
    b.conv(512, 1)
    b.conv(1024, 3)
    spp_in = b.conv(512, 1)
    b.maxpool(5, 1)
    b.route(-2)
    b.maxpool(9, 1)
    b.route(-4)
    b.maxpool(13, 1)
    b.route(-1, -3, -5, -6)
    assert b.count - 1 == spp_in + 6
    b.conv(512, 1)
    b.conv(1024, 3)
    top = b.conv(512, 1)
    lateral = {}
    for width, skip in ((256, ends[512]), (128, ends[256])):
        b.note(f"PANet top-down: up-sample and join layer {skip}")
        b.conv(width, 1)
        b.upsample(2)
        b.route(skip)
        b.conv(width, 1)
        b.route(-1, -3)
        b.conv(width, 1)
        b.conv(width * 2, 3)
        b.conv(width, 1)
        b.conv(width * 2, 3)
        lateral[width] = b.conv(width, 1)
    assert lateral == {256: 126, 128: 136} and top == 116, (lateral, top)

    heads = (("0,1,2", "1.2", 128, None), ("3,4,5", "1.1", 256, lateral[256]),
             ("6,7,8", "1.05", 512, top))
    for n, (mask, scale, width, join) in enumerate(heads):
        if join is None:
            b.note("Head 1: stride 8, the smallest anchors")
            b.conv(width * 2, 3)
        else:
            b.note(f"Head {n + 1}: stride {8 << n}; PANet bottom-up: down-sample the previous "
                   f"head's input and join layer {join}")
            b.route(-4)
            b.conv(width, 3, 2)
            b.route(-1, join - b.count)
            for _ in range(3):
                b.conv(width, 1)
                b.conv(width * 2, 3)
        b.head_conv(CLASSES)
        yolo_v4_layer(b, mask, ANCHORS_V4, 9, scale)
    return b


def build_yolov4_tiny() -> Builder:
    b = Builder(TITLES["yolov4-tiny"])
    net_section(b, momentum="0.9", learning_rate="0.00261")
    b.note("CSPDarknet53-tiny backbone")
    b.conv(32, 3, 2)
    b.conv(64, 3, 2)
    ends = []
    for filters in (64, 128, 256):
        b.note(f"CSP block of {filters} channels: the second half of the channels "
               "(groups=2, group_id=1) goes through two 3x3 convolutions")
        b.conv(filters, 3)
        b.route(-1, groups=2, group_id=1)
        b.conv(filters // 2, 3)
        b.conv(filters // 2, 3)
        b.route(-1, -2)
        ends.append(b.conv(filters, 1))
        b.route(-6, -1)
        b.maxpool(2, 2)
    assert ends[-1] == 23, ends
    b.conv(512, 3)
    b.note("Head 1: stride 32, the larger anchors")
    b.conv(256, 1)
    b.conv(512, 3)
    b.head_conv(CLASSES)
    yolo_v4_layer(b, "3,4,5", ANCHORS_TINY, 6, "1.05", tiny=True)
    b.note("Head 2: stride 16; up-sample layer 27 and join layer 23")
    b.route(-4)
    b.conv(128, 1)
    b.upsample(2)
    b.route(-1, ends[-1])
    b.conv(256, 3)
    b.head_conv(CLASSES)
    yolo_v4_layer(b, "0,1,2", ANCHORS_TINY, 6, "1.05", tiny=True)
    return b


_GENERATED = ("Written by darknet_cfg/build_templates.py; do not edit by hand (see README.md).\n"
              "The template of `lesion cfg` / generate_cfg: 1 class, 416 x 416.\n")

TITLES = {
    "yolov3": "YOLOv3 (Redmon & Farhadi 2018): Darknet-53 and three [yolo] heads at strides 32, "
              "16, 8.\nThe network of pjreddie's cfg/yolov3.cfg: 107 layers, [yolo] at 82, 94, "
              "106. Runs on\npjreddie's (Debian) darknet and on AlexeyAB's.\n" + _GENERATED,
    "yolov3-tiny": "YOLOv3-tiny: 7 convolutions with max-pools and two [yolo] heads at strides "
                   "32 and 16.\nThe network of pjreddie's cfg/yolov3-tiny.cfg: 24 layers, [yolo] "
                   "at 16 and 23. Runs on\npjreddie's (Debian) darknet and on AlexeyAB's.\n"
                   + _GENERATED,
    "yolov4": "YOLOv4 (Bochkovskiy, Wang & Liao 2020): CSPDarknet53, SPP, PANet and three "
              "[yolo] heads\nat strides 8, 16, 32. The network of AlexeyAB's "
              "cfg/yolov4-custom.cfg: 162 layers, [yolo]\nat 139, 150, 161. AlexeyAB (or "
              "hank-ai) darknet only: pjreddie builds another network.\n" + _GENERATED,
    "yolov4-tiny": "YOLOv4-tiny: CSPDarknet53-tiny and two [yolo] heads at strides 32 and 16.\n"
                   "The network of AlexeyAB's cfg/yolov4-tiny-custom.cfg: 38 layers, [yolo] at "
                   "30 and 37.\nAlexeyAB (or hank-ai) darknet only: pjreddie ignores route "
                   "groups.\n" + _GENERATED,
}

BUILDERS = {
    "yolov3-tiny": build_yolov3_tiny,
    "yolov3": build_yolov3,
    "yolov4-tiny": build_yolov4_tiny,
    "yolov4": build_yolov4,
}


def render(arch: str) -> str:
    """The template text of ``arch``, each layer annotated with its index and output size."""
    sys.path.insert(0, str(HERE.parent))
    from deeplesion_cli.darknet.cfg import layer_shapes, parse_cfg

    b = BUILDERS[arch]()
    shapes = [s[2:] for s in layer_shapes(parse_cfg(b.render(), f"{arch}.cfg"))]
    return b.render(shapes)


def main() -> None:
    for arch in BUILDERS:
        path = HERE / f"{arch}.cfg"
        text = render(arch)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
