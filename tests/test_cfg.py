"""darknet cfg model, checks, shape inference and the generated training cfgs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deeplesion_cli.darknet.cfg import (
    PJ_ACTIVATIONS,
    PJ_KEYS,
    PJ_SECTIONS,
    Cfg,
    check_cfg,
    errors,
    layer_shapes,
    parse_cfg,
    pjreddie_problems,
    weights_floats,
)
from deeplesion_cli.darknet.generate import (
    ARCHS,
    TEMPLATE_ENV,
    CfgError,
    generate_cfg,
    split_anchors,
    template_dir,
)

REPO = Path(__file__).resolve().parents[1]
DEBIAN_CFG = Path("/usr/share/darknet/cfg")

#: Floats in the official COCO (80-class) weights files after their 20-byte header:
#: (file size - 20) / 4 for yolov3.weights 248007048 B, yolov3-tiny.weights 35434956 B,
#: yolov4.weights 257717640 B, yolov4-tiny.weights 24251276 B. The same count means the same
#: layers with the same channels in the same order of weights.
OFFICIAL_WEIGHTS_FLOATS = {
    "yolov3": (248007048 - 20) // 4,
    "yolov3-tiny": (35434956 - 20) // 4,
    "yolov4": (257717640 - 20) // 4,
    "yolov4-tiny": (24251276 - 20) // 4,
}

#: Layer count, and each [yolo] layer's index and stride, in cfg order.
EXPECTED = {
    "yolov4": (162, [(139, 8), (150, 16), (161, 32)]),
    "yolov4-tiny": (38, [(30, 32), (37, 16)]),
    "yolov3": (107, [(82, 32), (94, 16), (106, 8)]),
    "yolov3-tiny": (24, [(16, 32), (23, 16)]),
}


def yolo_heads(cfg: Cfg):
    """(index, [yolo] section, the layer before it) for each [yolo] layer."""
    return [(i, s, cfg.layers[i - 1]) for i, s in cfg.of_type("yolo")]


def line_of(text: str, predicate) -> int:
    """1-based line number of the first line matching ``predicate``."""
    for n, line in enumerate(text.splitlines(), 1):
        if predicate(line):
            return n
    raise AssertionError("no such line")


def replace_line(text: str, number: int, new: str) -> str:
    lines = text.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


def problems_at(problems, line: int, key: str | None = None, severity: str = "error"):
    return [p for p in problems if p.line == line and p.severity == severity
            and (key is None or p.key == key)]


# ---------------------------------------------------------------------------------------------
# templates and generated cfgs


def test_templates_are_up_to_date():
    spec = importlib.util.spec_from_file_location("build_templates",
                                                  REPO / "darknet_cfg" / "build_templates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.BUILDERS) == set(ARCHS)
    for arch in ARCHS:
        on_disk = (REPO / "darknet_cfg" / f"{arch}.cfg").read_text()
        assert module.render(arch) == on_disk, f"run darknet_cfg/build_templates.py ({arch})"
    assert template_dir() == REPO / "darknet_cfg"


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("size", [(416, 416), (608, 416)])
def test_generated_structure(arch, size):
    text = generate_cfg(arch, 8, size=size)
    cfg = parse_cfg(text)
    assert check_cfg(cfg, data_classes=8, names_count=8) == []
    n_layers, heads = EXPECTED[arch]
    shapes = layer_shapes(cfg)
    assert len(shapes) == len(cfg.layers) == n_layers == ARCHS[arch].layers
    width, height = size
    got = [(s.index, s.out_w, s.out_h, s.out_c) for s in shapes if s.type == "yolo"]
    assert got == [(i, width // st, height // st, 3 * 13) for i, st in heads]
    net = cfg.net
    assert (net.int("width"), net.int("height")) == size


def test_yolov4_416_reference_sizes():
    shapes = layer_shapes(parse_cfg(generate_cfg("yolov4", 1)))
    assert [(s.index, s.out_w, s.out_h) for s in shapes if s.type == "yolo"] == \
        [(139, 52, 52), (150, 26, 26), (161, 13, 13)]
    # the PANet joins: layer 54 (52x52x256) and 85 (26x26x512), the SPP concat (13x13x2048)
    assert shapes[54][2:] == (52, 52, 256)
    assert shapes[85][2:] == (26, 26, 512)
    assert shapes[113][2:] == (13, 13, 2048)
    tiny = layer_shapes(parse_cfg(generate_cfg("yolov4-tiny", 1)))
    assert tiny[3][2:] == (104, 104, 32)  # route groups=2 group_id=1: half the channels
    assert [(s.index, s.out_w) for s in tiny if s.type == "yolo"] == [(30, 13), (37, 26)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_same_network_as_official_weights(arch):
    cfg = parse_cfg(generate_cfg(arch, 80))
    assert weights_floats(cfg) == OFFICIAL_WEIGHTS_FLOATS[arch]


@pytest.mark.parametrize("arch", ["yolov3", "yolov3-tiny"])
def test_same_layers_as_debian_stock(arch):
    stock_path = DEBIAN_CFG / f"{arch}.cfg"
    if not stock_path.exists():
        pytest.skip("Debian's darknet package is not installed")
    keys = ("filters", "size", "stride", "pad", "activation", "batch_normalize", "layers",
            "from", "mask", "anchors", "num")
    stock = parse_cfg(stock_path.read_text())
    ours = parse_cfg(generate_cfg(arch, 80))
    assert [(s.type, {k: s.options.get(k) for k in keys}) for s in ours.layers] == \
        [(s.type, {k: s.options.get(k) for k in keys}) for s in stock.layers]


@pytest.mark.parametrize("classes,filters", [(1, 18), (8, 39)])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_classes_and_filters(arch, classes, filters):
    cfg = parse_cfg(generate_cfg(arch, classes))
    heads = yolo_heads(cfg)
    assert len(heads) == len(EXPECTED[arch][1])
    for _, yolo, conv in heads:
        assert yolo.int("classes") == classes
        assert conv.type == "convolutional" and conv.int("filters") == filters
        assert conv.get("activation") == "linear"
    assert check_cfg(cfg, data_classes=classes) == []
    assert errors(check_cfg(cfg, data_classes=classes + 1))


@pytest.mark.parametrize("kwargs,max_batches,steps,burn_in", [
    (dict(classes=1), 6000, "4800,5400", 1000),
    (dict(classes=3), 6000, "4800,5400", 1000),
    (dict(classes=4), 8000, "6400,7200", 1000),
    (dict(classes=8), 16000, "12800,14400", 1000),
    (dict(classes=2, n_train_images=9000), 9000, "7200,8100", 1000),
    (dict(classes=8, n_train_images=9000), 16000, "12800,14400", 1000),
    # short runs: a sixth of max_batches, so the warm-up ends and the rate reaches lr
    (dict(classes=2, max_batches=20), 20, "16,18", 3),
    (dict(classes=2, max_batches=600), 600, "480,540", 100),
    (dict(classes=2, max_batches=5999), 5999, "4799,5399", 999),
    (dict(classes=2, max_batches=1), 1, "0,0", 1),
    (dict(classes=2, max_batches=12345), 12345, "9876,11110", 1000),
    (dict(classes=2, max_batches=600, burn_in=0), 600, "480,540", 0),
    (dict(classes=2, max_batches=600, burn_in=250), 600, "480,540", 250),
])
def test_max_batches_steps_and_burn_in(kwargs, max_batches, steps, burn_in):
    net = parse_cfg(generate_cfg("yolov3-tiny", **kwargs)).net
    assert net.int("max_batches") == max_batches
    assert net.get("steps") == steps
    assert net.int("burn_in") == burn_in
    assert net.get("policy") == "steps" and net.get("scales") == ".1,.1"


def test_burn_in_at_or_beyond_max_batches_is_a_warning_with_the_rate_reached():
    cfg = parse_cfg(generate_cfg("yolov3-tiny", 1, max_batches=100, burn_in=1000))
    problems = check_cfg(cfg)
    assert [(p.key, p.severity) for p in problems] == [("burn_in", "warning")]
    assert "burn_in=1000 >= max_batches=100" in problems[0].message
    assert "0.0001 x learning_rate" in problems[0].message  # (100 / 1000) ** 4
    assert problems[0].line == cfg.net.option_lines["burn_in"]
    assert check_cfg(parse_cfg(generate_cfg("yolov3-tiny", 1, max_batches=100))) == []
    with pytest.raises(ValueError, match="burn_in must be >= 0"):
        generate_cfg("yolov3-tiny", 1, burn_in=-1)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_augmentation_and_training_defaults(arch):
    cfg = parse_cfg(generate_cfg(arch, 2))
    net = cfg.net
    assert net.get("flip") == "0" and net.get("mosaic") == "0"
    assert (net.int("batch"), net.int("subdivisions")) == (64, 16)
    assert net.float("learning_rate") == (0.00261 if arch == "yolov4-tiny" else 0.001)
    assert all(y.get("random") == "0" for _, y, _ in yolo_heads(cfg))

    cfg = parse_cfg(generate_cfg(arch, 2, flip=True, mosaic=True, random=True,
                                 learning_rate=0.0005, batch=32, subdivisions=8))
    net = cfg.net
    assert net.get("flip") == "1" and net.get("mosaic") == "1"
    assert net.float("learning_rate") == 0.0005
    assert (net.int("batch"), net.int("subdivisions")) == (32, 8)
    assert all(y.get("random") == "1" for _, y, _ in yolo_heads(cfg))


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 32"):
        generate_cfg("yolov4", 1, size=(400, 416))
    with pytest.raises(ValueError, match="multiple of 32"):
        generate_cfg("yolov3", 1, size=(416, 100))
    with pytest.raises(ValueError, match="subdivisions"):
        generate_cfg("yolov3", 1, batch=64, subdivisions=24)
    with pytest.raises(ValueError, match="unknown arch"):
        generate_cfg("yolov5", 1)
    with pytest.raises(ValueError, match="classes"):
        generate_cfg("yolov3", 0)
    with pytest.raises(ValueError, match="small_objects"):
        generate_cfg("yolov4-tiny", 1, small_objects=True)
    with pytest.raises(ValueError, match="anchors"):
        generate_cfg("yolov4", 1, anchors_px=[(10, 10), (20, 20)])
    with pytest.raises(ValueError, match="positive"):
        generate_cfg("yolov4", 1, anchors_px=[(10, 10), (0, 20), (30, 30)])


# ---------------------------------------------------------------------------------------------
# anchors and masks


def masks_and_filters(cfg: Cfg):
    return [(y.get("mask"), conv.int("filters")) for _, y, conv in yolo_heads(cfg)]


def test_custom_anchors_yolov4_split_by_readme_limits():
    # two below 30x30, three between 30x30 and 60x60, four above: given out of order
    anchors = [(100, 90), (12, 10), (40, 40), (300, 280), (20, 25), (50, 45), (70, 70),
               (35, 30), (150, 160)]
    cfg = parse_cfg(generate_cfg("yolov4", 2, anchors_px=anchors))
    # yolov4: the first [yolo] (stride 8) gets the smallest
    assert masks_and_filters(cfg) == [("0,1", 14), ("2,3,4", 21), ("5,6,7,8", 28)]
    for _, y, _ in yolo_heads(cfg):
        assert y.int("num") == 9
        assert y.get("anchors") == "12,10,20,25,35,30,40,40,50,45,70,70,100,90,150,160,300,280"
    assert check_cfg(cfg, data_classes=2) == []


def test_custom_anchors_yolov3_vice_versa():
    anchors = [(12, 10), (20, 25), (35, 30), (40, 40), (50, 45), (70, 70), (100, 90)]
    cfg = parse_cfg(generate_cfg("yolov3", 1, anchors_px=anchors))
    # yolov3: the first [yolo] (stride 32) gets the largest
    assert masks_and_filters(cfg) == [("5,6", 12), ("2,3,4", 18), ("0,1", 12)]
    assert all(y.int("num") == 7 for _, y, _ in yolo_heads(cfg))
    assert check_cfg(cfg, data_classes=1) == []


@pytest.mark.parametrize("arch", ["yolov4-tiny", "yolov3-tiny"])
def test_custom_anchors_tiny(arch):
    anchors = [(10, 10), (30, 30), (50, 55), (61, 70), (200, 150)]
    cfg = parse_cfg(generate_cfg(arch, 1, anchors_px=anchors))
    # first [yolo] is the stride-32 head: 60x60 and larger; the stride-16 head the rest
    assert masks_and_filters(cfg) == [("3,4", 12), ("0,1,2", 18)]
    assert check_cfg(cfg, data_classes=1) == []


def test_custom_anchors_fallback_never_leaves_a_head_empty():
    small = [(8, 9), (10, 12), (14, 14), (16, 20), (20, 24), (25, 25), (28, 30), (33, 35)]
    pairs, masks, rule = split_anchors(small, 3)
    assert rule.startswith("fallback")
    assert masks == [[0, 1, 2], [3, 4, 5], [6, 7]]
    cfg = parse_cfg(generate_cfg("yolov4", 1, anchors_px=small))
    assert masks_and_filters(cfg) == [("0,1,2", 18), ("3,4,5", 18), ("6,7", 12)]
    assert "fallback" in cfg_text_header(generate_cfg("yolov4", 1, anchors_px=small))
    # four anchors over three heads: the finest head takes the remainder
    assert split_anchors([(10, 10), (20, 20), (40, 40), (80, 80)], 3)[1] == [[0, 1], [2], [3]]
    # the README split when it fills every head
    assert split_anchors([(10, 10), (40, 40), (80, 80)], 3)[1:] == \
        ([[0], [1], [2]], "README: by area, limits 30x30, 60x60")
    with pytest.raises(ValueError):
        split_anchors([(10, 10)], 2)


def cfg_text_header(text: str) -> str:
    return "\n".join(line for line in text.splitlines()[:5] if line.startswith("#"))


def test_stock_anchors_and_masks_kept_without_custom_anchors():
    cfg = parse_cfg(generate_cfg("yolov4", 1))
    assert [y.get("mask") for _, y, _ in yolo_heads(cfg)] == ["0,1,2", "3,4,5", "6,7,8"]
    assert yolo_heads(cfg)[0][1].get("anchors").startswith("12,16,19,36,40,28")
    cfg = parse_cfg(generate_cfg("yolov3", 1))
    assert [y.get("mask") for _, y, _ in yolo_heads(cfg)] == ["6,7,8", "3,4,5", "0,1,2"]
    cfg = parse_cfg(generate_cfg("yolov4-tiny", 1))
    assert [y.get("mask") for _, y, _ in yolo_heads(cfg)] == ["3,4,5", "0,1,2"]


# ---------------------------------------------------------------------------------------------
# small objects


def test_small_objects_changes_exactly_three_values():
    plain = parse_cfg(generate_cfg("yolov4", 1))
    small = parse_cfg(generate_cfg("yolov4", 1, small_objects=True))
    assert len(plain.layers) == len(small.layers)
    changed = []
    for i, (a, b) in enumerate(zip(plain.layers, small.layers)):
        assert a.name == b.name and list(a.options) == list(b.options)
        changed += [(i, a.name, k, a.options[k], b.options[k])
                    for k in a.options if a.options[k] != b.options[k]]
    assert changed == [
        (128, "upsample", "stride", "2", "4"),
        (129, "route", "layers", "54", "23"),
        (141, "convolutional", "stride", "2", "4"),
    ]
    assert plain.net.options == small.net.options
    shapes = layer_shapes(small)
    assert [(s.index, s.out_w, s.out_h) for s in shapes if s.type == "yolo"] == \
        [(139, 104, 104), (150, 26, 26), (161, 13, 13)]
    assert check_cfg(small, data_classes=1) == []


def test_stopbackward_on_the_last_backbone_layer():
    cfg = parse_cfg(generate_cfg("yolov4", 1, stopbackward=800))
    assert [(i, s.get("stopbackward")) for i, s in enumerate(cfg.layers)
            if "stopbackward" in s.options] == [(104, "800")]
    assert "stopbackward" not in generate_cfg("yolov4", 1)
    with pytest.raises(ValueError):
        generate_cfg("yolov3", 1, stopbackward=800)


# ---------------------------------------------------------------------------------------------
# checks: each inconsistency at its line


@pytest.fixture(scope="module")
def v4_text():
    return generate_cfg("yolov4", 2)


@pytest.fixture(scope="module")
def v4(v4_text):
    return parse_cfg(v4_text)


def test_filters_mismatch(v4_text, v4):
    conv = yolo_heads(v4)[1][2]
    line = conv.option_lines["filters"]
    assert v4_text.splitlines()[line - 1] == "filters=21"
    problems = check_cfg(parse_cfg(replace_line(v4_text, line, "filters=255")), data_classes=2)
    assert [p.line for p in errors(problems)] == [line]
    assert problems[0].key == "filters" and "(classes + 5) x len(mask)" in problems[0].message
    assert "= 21" in problems[0].message


def test_classes_mismatch_between_yolo_layers_and_with_data(v4_text, v4):
    first, second, third = (y for _, y, _ in yolo_heads(v4))
    line = second.option_lines["classes"]
    text = replace_line(v4_text, line, "classes=3")
    problems = errors(check_cfg(parse_cfg(text)))
    # the second [yolo] differs from the first; its conv's filters (21) no longer fit either
    assert any(p.line == line and p.key == "classes" and "differs" in p.message
               for p in problems)
    conv_line = yolo_heads(v4)[1][2].option_lines["filters"]
    assert {p.line for p in problems} == {line, conv_line}

    problems = errors(check_cfg(v4, data_classes=5))
    assert [p.line for p in problems] == [y.option_lines["classes"]
                                          for y in (first, second, third)]
    assert all("obj.data has classes=5" in p.message for p in problems)
    problems = errors(check_cfg(v4, data_classes=2, names_count=3))
    assert [p.line for p in problems] == [y.option_lines["classes"]
                                          for y in (first, second, third)]
    assert "obj.names has 3 names" in problems[0].message


def test_missing_classes_reported_at_the_yolo_header(v4_text, v4):
    yolo = yolo_heads(v4)[0][1]
    text = replace_line(v4_text, yolo.option_lines["classes"], "# no classes")
    problems = errors(check_cfg(parse_cfg(text), data_classes=2))
    assert any(p.line == yolo.line and p.key == "classes" for p in problems)


def test_mask_index_beyond_anchors(v4_text, v4):
    yolo = yolo_heads(v4)[2][1]
    line = yolo.option_lines["mask"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, "mask=6,7,9")),
                                data_classes=2))
    assert [(p.line, p.key) for p in problems] == [(line, "mask")]
    assert "index 9" in problems[0].message


def test_num_and_anchors_must_agree(v4_text, v4):
    yolo = yolo_heads(v4)[0][1]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, yolo.option_lines["num"],
                                                       "num=8")), data_classes=2))
    assert [(p.line, p.key) for p in problems] == [(yolo.option_lines["anchors"], "anchors")]
    assert "9 anchors but num=8" in problems[0].message
    problems = errors(check_cfg(parse_cfg(replace_line(
        v4_text, yolo.option_lines["anchors"], "anchors=10,13,16,30,33,23,30,61,62,45,59,119,"
        "116,90,156,198,373")), data_classes=2))
    assert [(p.line, p.key) for p in problems] == [(yolo.option_lines["anchors"], "anchors")]


@pytest.mark.parametrize("value,fragment", [
    ("layers=-200", "-200 (= layer -60) is out of range for layer 140"),
    ("layers=-4,300", "300 is out of range for layer 140"),
    ("layers=140", "140 is out of range"),
])
def test_route_out_of_range(v4_text, v4, value, fragment):
    route = v4.layers[140]
    assert route.type == "route" and route.get("layers") == "-4"
    line = route.option_lines["layers"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, value)), data_classes=2))
    assert problems and all(p.line == line or p.line > line for p in problems)
    assert problems_at(problems, line, "layers")
    assert fragment in problems_at(problems, line, "layers")[0].message


def test_route_of_different_sizes(v4_text, v4):
    route = v4.layers[121]
    assert route.get("layers") == "-1,-3"
    line = route.option_lines["layers"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, "layers=-1,54")),
                                data_classes=2))
    assert problems[0].line == line
    assert "different width x height" in problems[0].message and "54: 52x52" in \
        problems[0].message
    # and the next layer gets no image, as darknet says
    assert any("must output image" in p.message for p in problems[1:])


def test_shortcut_out_of_range(v4_text, v4):
    shortcut = v4.layers[7]
    assert shortcut.type == "shortcut"
    line = shortcut.option_lines["from"]
    for value in ("from=-8", "from=9", "from=7"):
        problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, value)),
                                    data_classes=2))
        assert [(p.line, p.key) for p in problems] == [(line, "from")], value


def test_width_not_multiple_of_32(v4_text, v4):
    line = v4.net.option_lines["width"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, "width=600")),
                                data_classes=2))
    assert (problems[0].line, problems[0].key) == (line, "width")
    # 600 / 32 is not whole: the up-sampled maps no longer match the backbone's, as in darknet
    assert any("different width x height" in p.message for p in problems[1:])
    assert errors(check_cfg(parse_cfg(replace_line(v4_text, line, "width=608")))) == []
    line = v4.net.option_lines["height"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, "height=0")),
                                data_classes=2))
    assert problems_at(problems, line, "height")


def test_first_section_not_net(v4_text, v4):
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, v4.net.line, "[convolutional]"))))
    assert problems[0].line == v4.net.line and "first section" in problems[0].message
    text = "# a comment\n\n[convolutional]\nfilters=8\n\n" + v4_text
    problems = errors(check_cfg(parse_cfg(text)))
    assert problems[0].line == 3 and "first section" in problems[0].message
    assert any("only allowed as the first section" in p.message for p in problems)


def test_batch_subdivisions_and_schedule(v4_text, v4):
    net = v4.net
    line = net.option_lines["subdivisions"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, "subdivisions=24"))))
    assert [(p.line, p.key) for p in problems] == [(line, "subdivisions")]

    line = net.option_lines["max_batches"]
    # a step beyond max_batches never applies: darknet trains anyway, so it is a warning
    problems = check_cfg(parse_cfg(replace_line(v4_text, line, "max_batches=5000")))
    assert [(p.line, p.key, p.severity) for p in problems] == [
        (net.option_lines["steps"], "steps", "warning")]
    assert "5400 is beyond max_batches=5000" in problems[0].message

    line = net.option_lines["steps"]
    problems = errors(check_cfg(parse_cfg(replace_line(v4_text, line, "steps=5400,4800"))))
    assert [(p.line, p.key) for p in problems] == [(line, "steps")]
    assert "not increasing" in problems[0].message


def test_unknown_section_and_parse_warnings(v4_text, v4):
    up = v4.layers[118]
    assert up.type == "upsample"
    problems = check_cfg(parse_cfg(replace_line(v4_text, up.line, "[upsampel]")))
    assert problems_at(problems, up.line)
    assert "unknown section type [upsampel]" in problems_at(problems, up.line)[0].message
    assert "[Gaussian_yolo]" in problems_at(problems, up.line)[0].message

    line = v4.net.option_lines["hue"]
    problems = check_cfg(parse_cfg(replace_line(v4_text, line, "hue 0.1")))
    assert errors(problems) == []
    assert [(p.line, p.severity) for p in problems] == [(line, "warning")]

    text = replace_line(v4_text, line, "width=320")  # a second width: darknet keeps the first
    cfg = parse_cfg(text)
    assert cfg.net.int("width") == 416
    assert [(p.line, p.key, p.severity) for p in check_cfg(cfg)] == [(line, "width", "warning")]


# ---------------------------------------------------------------------------------------------
# parsing, writing, shapes


def test_parse_like_darknet():
    text = """
# comment
 ; another
[net]
width = 4 16
height=416 # trailing text is part of the value, read with atoi
channels=3
[convolutional]
filters = 18
layers
size=
stride=2
pad=1
[route]
layers = -1, 0
"""
    cfg = parse_cfg(text, "t.cfg")
    assert [s.name for s in cfg.sections] == ["net", "convolutional", "route"]
    assert [s.line for s in cfg.sections] == [4, 8, 14]
    net, conv, route = cfg.sections
    assert net.options == {"width": "416", "height": "416#trailingtextispartofthevalue,readwith"
                           "atoi", "channels": "3"}
    assert net.int("height") == 416
    assert conv.option_lines == {"filters": 9, "stride": 12, "pad": 13}
    assert route.ints("layers") == [-1, 0]
    assert [(p.line, p.severity) for p in cfg.warnings] == [(10, "warning"), (11, "warning")]
    shapes = layer_shapes(cfg)
    assert [tuple(s) for s in shapes] == [(0, "convolutional", 208, 208, 18),
                                          (1, "route", 208, 208, 36)]


def test_round_trip(v4_text):
    for text in (v4_text, generate_cfg("yolov3-tiny", 3, anchors_px=[(5, 5), (9, 9), (70, 70)])):
        cfg = parse_cfg(text)
        dumped = cfg.dumps()
        again = parse_cfg(dumped)
        assert [(s.name, s.options) for s in again.sections] == \
            [(s.name, s.options) for s in cfg.sections]
        assert again.dumps() == dumped
        assert "\n\n[" in dumped and "\n\n\n" not in dumped
        assert dumped.startswith("[net]\n")


def test_shapes_of_special_layers():
    cfg = parse_cfg("""[net]
width=64
height=32
channels=3
[maxpool]
size=2
stride=1
[maxpool]
size=2
stride=2
[upsample]
stride=2
[convolutional]
filters=8
size=3
stride=2
pad=1
[route]
layers=-1
groups=2
group_id=1
[route]
layers=-3,-2
[shortcut]
from=-3
[avgpool]
""")
    assert [tuple(s)[1:] for s in layer_shapes(cfg)] == [
        ("maxpool", 64, 32, 3), ("maxpool", 32, 16, 3), ("upsample", 64, 32, 3),
        ("convolutional", 32, 16, 8), ("route", 32, 16, 4), ("route", 0, 0, 0),
        ("shortcut", 0, 0, 0), ("avgpool", 1, 1, 0)]
    problems = errors(check_cfg(cfg))
    assert [p.line for p in problems][:1] == [23]  # route -3,-2 joins 64x32 and 32x16


# ---------------------------------------------------------------------------------------------
# Debian stock cfgs and pjreddie compatibility


@pytest.mark.parametrize("name,yolos", [("yolov3-tiny.cfg", [(16, 13), (23, 26)]),
                                        ("yolov3.cfg", [(82, 19), (94, 38), (106, 76)])])
def test_debian_stock_cfgs_pass(name, yolos):
    path = DEBIAN_CFG / name
    if not path.exists():
        pytest.skip("Debian's darknet package is not installed")
    cfg = parse_cfg(path.read_text(), str(path))
    assert check_cfg(cfg, data_classes=80) == []
    assert pjreddie_problems(cfg) == []
    assert [(s.index, s.out_w) for s in layer_shapes(cfg) if s.type == "yolo"] == yolos


@pytest.mark.parametrize("arch", ["yolov3", "yolov3-tiny"])
def test_yolov3_cfgs_run_on_pjreddie(arch):
    text = generate_cfg(arch, 3, anchors_px=[(6, 6), (12, 10), (25, 30), (40, 45), (64, 70),
                                             (120, 100)], random=True, mosaic=True, flip=True)
    cfg = parse_cfg(text)
    for s in cfg.sections:
        assert s.name in PJ_SECTIONS
        assert s.get("activation", "leaky") in PJ_ACTIVATIONS - {"relu"}
        allowed = PJ_KEYS[s.type] | ({"flip", "mosaic"} if s.type == "net" else set())
        assert set(s.options) <= allowed, (s.name, set(s.options) - allowed)
    problems = pjreddie_problems(cfg)
    assert errors(problems) == []
    # flip and mosaic are AlexeyAB's; pjreddie ignores [net] keys it does not know, silently
    assert sorted(p.key for p in problems) == ["flip", "mosaic"]


@pytest.mark.parametrize("arch", ["yolov4", "yolov4-tiny"])
def test_yolov4_cfgs_are_flagged_for_pjreddie(arch):
    problems = errors(pjreddie_problems(parse_cfg(generate_cfg(arch, 1))))
    keys = {p.key for p in problems}
    assert {"scale_x_y", "iou_loss"} <= keys
    assert ("activation" in keys) == (arch == "yolov4")  # mish
    assert ("groups" in keys) == (arch == "yolov4-tiny")


def test_template_dir_override(tmp_path, monkeypatch):
    broken = (REPO / "darknet_cfg" / "yolov3-tiny.cfg").read_text().replace("[upsample]",
                                                                             "[dropout]")
    (tmp_path / "yolov3-tiny.cfg").write_text(broken)
    monkeypatch.setenv(TEMPLATE_ENV, str(tmp_path))
    with pytest.raises(CfgError) as info:
        generate_cfg("yolov3-tiny", 1)
    assert any("different width x height" in p.message for p in info.value.problems)
    with pytest.raises(FileNotFoundError):
        generate_cfg("yolov3", 1)
