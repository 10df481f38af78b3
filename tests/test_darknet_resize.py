"""`lesion predict yolo --size N|WxH` (issue 14): darknet weights predicted at another network size
than they were trained at, with the training cfg changed in [net] width/height only.

The cfg side is checked on the project's own templates (every arch) and on small hand-written
cfgs; the prediction side on Debian's real pjreddie darknet (a yolov3-tiny trained a few
iterations at 64 px, predicted at 64 and at 128 px); the matrix side through `lesion matrix
--print` and a real matrix run.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from deeplesion_cli import runs, steps
from deeplesion_cli.cli import main
from deeplesion_cli.darknet import resize
from deeplesion_cli.darknet import train as dtrain
from deeplesion_cli.darknet.cfg import check_cfg, errors, parse_cfg, weights_floats
from deeplesion_cli.darknet.errors import DarknetInputError, DarknetOptionError
from deeplesion_cli.darknet.generate import generate_cfg
from deeplesion_cli.formats.detections import read_detections
from deeplesion_cli.formats.groundtruth import load_ground_truth
from deeplesion_cli.spec.darknet import ARCHS, PREDICT_YOLO, YOLO_EXPERIMENT
from tests.conftest import darknet_safe_tmp, small_universal_prepared
from tests.test_faults_darknet import fast_cfg

needs_darknet = pytest.mark.darknet


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _sections(cfg):
    return [(s.name, dict(s.options)) for s in cfg.sections]


# ------------------------------------------------------------------------------ the cfg only

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size, wh", [("1024", (1024, 1024)), ("1024x608", (1024, 608))])
def test_resized_cfg_differs_only_in_width_and_height(arch, size, wh):
    text = generate_cfg(arch, classes=8, size=(416, 416), small_objects=arch == "yolov4")
    resized = resize.resized_cfg_text(text, size, f"{arch}.cfg")
    before, after = parse_cfg(text), parse_cfg(resized)
    # every section and option is the same but [net] width/height
    expected = _sections(before)
    expected[0][1].update(width=str(wh[0]), height=str(wh[1]))
    assert _sections(after) == expected
    # anchors exactly as trained (in pixels of the network input: the study kept them)
    anchors = [s.options["anchors"] for s in before.sections if s.name == "yolo"]
    assert anchors and [s.options["anchors"] for s in after.sections if s.name == "yolo"] == \
        anchors
    # line for line: only the two lines differ, so line numbers stay the trained cfg's
    changed = [(a, b) for a, b in zip(text.splitlines(), resized.splitlines()) if a != b]
    assert len(text.splitlines()) == len(resized.splitlines())
    assert changed == [("width=416", f"width={wh[0]}"), ("height=416", f"height={wh[1]}")]
    # darknet accepts it, and the trained weights fit: convolutions do not depend on the size
    assert errors(check_cfg(after)) == []
    assert weights_floats(after) == weights_floats(before) > 0


def test_sizes_that_are_not_multiples_of_32_are_refused_naming_them():
    text = generate_cfg("yolov3-tiny", classes=1, size=(416, 416))
    with pytest.raises(DarknetOptionError) as info:
        resize.resized_cfg_text(text, "1000", "t.cfg")
    assert str(info.value) == ("--size 1000: width 1000 and height 1000 are not multiples of "
                               "32 (darknet's network input must be; e.g. width 992 or 1024; "
                               "height 992 or 1024)")
    with pytest.raises(DarknetOptionError, match=r"^--size 1024x1000: height 1000 is not a "
                                                 r"multiple of 32 .*e\.g\. height 992 or 1024\)$"):
        resize.parse_predict_size("1024x1000")
    with pytest.raises(DarknetOptionError, match=r"^--size 'big': expected N or WxH"):
        resize.parse_predict_size("big")
    with pytest.raises(DarknetOptionError, match=r"^--size '0': expected N or WxH"):
        resize.parse_predict_size(0)
    assert resize.parse_predict_size(1024) == (1024, 1024)
    assert resize.parse_predict_size("608X416") == (608, 416)


_NET = "[net]\nbatch=1\nsubdivisions=1\nwidth=448\nheight=448\nchannels=3\nmax_batches=10\n"
_CONV = "[convolutional]\nfilters={f}\nsize={k}\nstride={s}\npad=1\nactivation=leaky\n"
_YOLO = "[yolo]\nmask=0\nanchors=10,14\nclasses=1\nnum=1\n"


def test_layers_whose_weights_depend_on_the_input_size_are_refused():
    # [connected] after a global [avgpool]: 1 x 1 x c at every size, so its weights still fit
    pooled = _NET + _CONV.format(f=16, k=3, s=2) + "[avgpool]\n" + \
        "[connected]\noutput=6\nactivation=linear\n"
    resized = parse_cfg(resize.resized_cfg_text(pooled, "256", "pooled.cfg"))
    assert weights_floats(resized) == weights_floats(parse_cfg(pooled))
    # [connected] on a feature map: its weights are w x h x c x output
    flat = _NET + _CONV.format(f=4, k=3, s=32) + "[connected]\noutput=6\nactivation=linear\n"
    with pytest.raises(DarknetInputError) as info:
        resize.resized_cfg_text(flat, "256", "flat.cfg")
    message = str(info.value)
    assert "problem with the cfg at --size 256 (trained at 448):" in message
    assert ("flat.cfg:14: [connected] takes the layer before it as a vector of w x h x c = "
            "784 values at the trained size but 256 at --size 256, so its weights do not "
            "fit") in message
    local = _NET + "[local]\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n" + _YOLO
    with pytest.raises(DarknetInputError, match=r"local\.cfg:8: \[local\] holds weights for "
                                                r"each output position"):
        resize.resized_cfg_text(local, "512", "local.cfg")


def test_layer_shapes_are_checked_at_the_new_size():
    """A stride-64 branch routed back at stride 32 fits at 448 px (7 -> 14 = 14) but not at 416
    (7 -> 14 against 13): the resized cfg is refused, naming the line and the size."""
    text = _NET + "".join(_CONV.format(f=8, k=3, s=2) for _ in range(6)) + \
        "[upsample]\nstride=2\n\n[route]\nlayers=-1,-3\n\n" + \
        _CONV.format(f=6, k=1, s=1) + _YOLO
    assert errors(check_cfg(parse_cfg(text))) == []
    assert resize.resized_cfg_text(text, "512", "deep.cfg")  # 512 = 64 x 8: fits
    with pytest.raises(DarknetInputError) as info:
        resize.resized_cfg_text(text, "416", "deep.cfg")
    assert "the cfg at --size 416 (trained at 448)" in str(info.value)
    # the route's layers= line, numbered as in the trained cfg
    assert "deep.cfg:48: route joins layers of different width x height" in str(info.value)


def test_resized_for_predict_writes_atomically_with_a_name_that_says_the_size(tmp_path):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(generate_cfg("yolov3-tiny", classes=1, size=(416, 416)))
    name = resize.resized_cfg_name(cfg, "1024x608")
    assert name == "tiny-1024x608.cfg"
    out = resize.resized_for_predict(cfg, "1024x608", tmp_path / "sub" / name)
    assert out == tmp_path / "sub" / "tiny-1024x608.cfg"
    assert resize.cfg_size(out) == (1024, 608) and resize.cfg_size(cfg) == (416, 416)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [name]  # no temporary left
    assert resize.resized_cfg_beside(tmp_path / "pred" / "yolo.json", cfg, 1024) == \
        tmp_path / "pred" / "yolo.tiny-1024x1024.cfg"


# ---------------------------------------------------------------- the option, once declared

def test_predict_size_is_declared_once_and_is_a_matrix_key():
    option = PREDICT_YOLO["predict_size"]
    assert (option.kind, option.default, option.cli_flag) == ("size", None, "--size")
    assert "--size 1024" in option.help and "832" in option.help
    assert YOLO_EXPERIMENT["predict_size"] is PREDICT_YOLO
    assert PREDICT_YOLO["darknet_map"].kind == "bool" and not PREDICT_YOLO["darknet_map"].compared
    words = steps.predict_yolo_words("prep", "y.cfg", "w.weights", "o.json",
                                     {"predict_size": "1024x608", "darknet_map": True})
    assert words[-5:] == ["--thresh", "0.005", "--size", "1024x608", "--darknet-map"]


def test_matrix_prints_the_size_in_the_predict_line_only(tmp_path, monkeypatch):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.json").write_text("{}")
    (tmp_path / "m.toml").write_text('prepared = "prepared"\n\n[[experiment]]\nname = "y832"\n'
                                     'backend = "yolo"\narch = "yolov4"\nsize = 832\n'
                                     'predict_size = 1024\n\n[[experiment]]\nname = "plain"\n'
                                     'backend = "yolo"\narch = "yolov4"\nsize = 832\n')
    monkeypatch.chdir(tmp_path)
    result = invoke("matrix", "m.toml", "--print")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    cfg_lines = [line for line in lines if " lesion cfg " in line]
    predict = [line for line in lines if line.startswith("lesion predict yolo ")]
    assert len(cfg_lines) == 2 and all("--size 832" in line for line in cfg_lines)
    assert len(predict) == 2
    assert predict[0].endswith(" --size 1024") and "-o matrix/y832/test.json " in predict[0]
    assert "--size" not in predict[1]
    # a size darknet cannot build is refused when the file is read, naming the key
    (tmp_path / "bad.toml").write_text('prepared = "prepared"\n\n[[experiment]]\nname = "b"\n'
                                       'backend = "yolo"\narch = "yolov4"\npredict_size = 1000\n')
    result = invoke("matrix", "bad.toml", "--print")
    assert result.exit_code == 2 and "predict_size" in result.output
    assert "multiples of 32" in result.output


# ------------------------------------------------------------- real pjreddie darknet

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return darknet_safe_tmp(tmp_path_factory, "darknet_resize")


@pytest.fixture(scope="module")
def prepared(base):
    return small_universal_prepared(base)


@pytest.fixture(scope="module")
def trained(prepared, base):
    """A yolov3-tiny run trained 4 iterations at 64 px by Debian's darknet."""
    cfg = fast_cfg(base / "cfg" / "tiny.cfg", max_batches=4, size=64)
    return dtrain.train(prepared, cfg, base / "run", show_progress=False)


def _boxes(path, gt):
    dets = read_detections(path, gt, fmt="coco")
    rows = json.loads(path.read_text())
    assert isinstance(rows, list) and len(rows) == len(dets)
    return sorted((r["image_id"], tuple(r["bbox"]), r["score"]) for r in rows), dets


@needs_darknet
def test_predict_at_another_size_with_the_trained_weights(trained, prepared, base):
    gt = load_ground_truth(prepared / "coco" / "test.json")
    own = base / "pred" / "own.json"
    result = invoke("predict", "yolo", prepared, "--cfg", trained.cfg_path, "--weights",
                    trained.final_weights, "-o", own)
    assert result.exit_code == 0, result.output
    larger = base / "pred" / "at128.json"
    result = invoke("predict", "yolo", prepared, "--cfg", trained.cfg_path, "--weights",
                    trained.final_weights, "-o", larger, "--size", "128")
    assert result.exit_code == 0, result.output
    resized = base / "pred" / "at128.tiny-128x128.cfg"
    assert f"predicted at network size 128x128 (trained at 64x64) with {resized}" in \
        result.output
    # the cfg darknet ran is recorded beside the detections: the trained one at 128 px
    assert resize.cfg_size(resized) == (128, 128)
    assert _sections(parse_cfg(resized.read_text()))[1:] == \
        _sections(parse_cfg(trained.cfg_path.read_text()))[1:]
    # both are COCO results json in the prepared images' pixels (128 x 128), and they differ
    own_rows, own_dets = _boxes(own, gt)
    big_rows, big_dets = _boxes(larger, gt)
    for dets in (own_dets, big_dets):
        assert len(dets) > 0
        x, y, w, h = dets.box_xywh.T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= 128).all() and (y + h <= 128).all()
    assert own_rows != big_rows
    assert not (base / "pred" / "own.tiny-64x64.cfg").exists()  # its own size: the cfg itself
    # a size darknet cannot build stops before darknet starts, naming it
    result = invoke("predict", "yolo", prepared, "--cfg", trained.cfg_path, "--weights",
                    trained.final_weights, "-o", base / "pred" / "bad.json", "--size", "100")
    assert result.exit_code == 2
    assert "--size 100: width 100 and height 100 are not multiples of 32" in result.output
    assert not (base / "pred" / "bad.json").exists()


@needs_darknet
def test_run_folder_cache_tells_the_sizes_apart(trained, prepared):
    chosen = runs.pick_checkpoint(trained.run_dir, "last")
    key = runs.cache_key(chosen, prepared, "test", {"thresh": 0.005, "predict_size": None})
    assert key != runs.cache_key(chosen, prepared, "test",
                                 {"thresh": 0.005, "predict_size": "128"})
    own = steps.predict_run(trained.run_dir, prepared, checkpoint="last", show_progress=False)
    own_text = own.path.read_text()
    big = steps.predict_run(trained.run_dir, prepared, checkpoint="last",
                            values={"predict_size": "128"}, show_progress=False)
    assert not big.reused and big.path != own.path
    assert big.path.read_text() != own_text
    again = steps.predict_run(trained.run_dir, prepared, checkpoint="last",
                              values={"predict_size": "128"}, show_progress=False)
    assert again.reused and again.path == big.path
    # the 64-px detections were replaced (one cache file per split and checkpoint): asked
    # again, they are predicted again, not taken from the 128-px file
    back = steps.predict_run(trained.run_dir, prepared, checkpoint="last", show_progress=False)
    assert not back.reused and back.path == own.path and not big.path.exists()


@needs_darknet
def test_matrix_run_predicts_at_the_experiments_size(trained, prepared, base):
    """The matrix's predict step (what `lesion matrix` runs) passes predict_size, as its printed
    line does: the trained run (not the cfg the matrix would write) is put where the matrix
    keeps experiment 'y', and the step run as `lesion matrix` runs it."""
    from deeplesion_cli import matrix as mx
    from deeplesion_cli.matrix.model import Step, yolo_final_weights
    from deeplesion_cli.matrix.run import _run_step

    toml = base / "m" / "m.toml"
    toml.parent.mkdir()
    toml.write_text(f'prepared = "{prepared}"\n\n[[experiment]]\nname = "y"\nbackend = "yolo"\n'
                    'arch = "yolov3-tiny"\nsize = 64\npredict_size = 128\n')
    matrix = mx.load_matrix(toml)
    exp = matrix.experiment("y")
    exp.cfg_path.parent.mkdir(parents=True)
    shutil.copy(trained.cfg_path, exp.cfg_path)
    yolo_final_weights(exp).parent.mkdir()
    shutil.copy(trained.final_weights, yolo_final_weights(exp))
    line = mx.yolo_predict_line(matrix, exp, base)
    assert line.endswith(" --size 128")
    _run_step(matrix, Step("y", "predict", line, False), show_progress=False)
    out = exp.predictions("test")
    assert out.is_file() and resize.cfg_size(out.with_name("test.y-128x128.cfg")) == (128, 128)


def test_darknet_valid_boxes_beyond_the_left_or_top_edge_become_edge_boxes(tmp_path):
    """pjreddie clips x1, y1 to >= 1 and x2, y2 to <= the image size separately, so a box of a
    letterboxed non-square network wholly left of the image comes out as x1 = 1 > x2."""
    from tests.conftest import make_gt

    gt = make_gt(1, [(0, 1, [10, 10, 20, 20])])
    folder = tmp_path / "valid"
    folder.mkdir()
    (folder / "comp4_det_test_a.txt").write_text("0 0.9 1 1 -31 128\n0 0.8 1 1 40 0.5\n"
                                                 "0 0.7 11 11 31 31\n")
    dets = read_detections(folder, gt, fmt="darknet-valid")
    # 1-based corners -> 0-based xywh: x = x1 - 1, w = x2 - x1 (zero-width on the left edge)
    assert dets.box_xywh.tolist() == [[0.0, 0.0, 0.0, 127.0], [0.0, 0.0, 39.0, 0.0],
                                      [10.0, 10.0, 20.0, 20.0]]
    (folder / "comp4_det_test_a.txt").write_text("0 0.9 20 1 10 128\n")  # reversed inside
    with pytest.raises(Exception, match="x2 < x1"):
        read_detections(folder, gt, fmt="darknet-valid")
