"""darknet's own `detector map` (issue 14): `darknet_map` and `lesion predict yolo --darknet-map`.

No AlexeyAB or hank-ai binary runs here, so (as in tests/test_darknet_habits.py) AlexeyAB's side
is a script: it answers the fork probe, writes `detector test -out` JSON for the listed images,
and for `detector map` prints AlexeyAB's report (docs/darknet.md 6.1, the printf formats of
AlexeyAB's detector.c) with the ground-truth count it read from the labels of the listed images.
The report parser is also checked on hank-ai's layout (its detector_map.cpp and
format_map_ap_row_values, colour codes included). pjreddie's refusal is checked on Debian's real
binary. Set LESION_TEST_ALEXEYAB to a real AlexeyAB (or hank-ai) darknet to also run the real
`detector map` once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli.cli import main
from deeplesion_cli.darknet import log as dlog
from deeplesion_cli.darknet.errors import DarknetOptionError, DarknetRunError
from deeplesion_cli.darknet.map import (DarknetMap, darknet_map, map_command, map_json_path,
                                        map_unsupported)
from deeplesion_cli.formats.groundtruth import load_ground_truth
from tests.conftest import darknet_safe_tmp, small_universal_prepared

needs_darknet = pytest.mark.darknet

#: AlexeyAB's `detector map` report (docs/darknet.md 6.1): the rank counter ends in \r, so the
#: first class line shares its physical line; a second class; nan precision is printed as -nan
AB_REPORT = (
    "calculation mAP (mean average precision)...\n"
    " Detection layer: 30 - type = 28 \n"
    "\n detections_count = 54, unique_truth_count = 23  \n"
    " rank = 0 of ranks = 54 \r rank = 53 of ranks = 54 \r"
    "class_id = 0, name = lesion, ap = 95.46%   \t (TP = 21, FP = 0) \n"
    "class_id = 1, name = soft tissue, ap = 0.00%   \t (TP = 0, FP = 0) \n"
    "\n for conf_thresh = 0.25, precision = 1.00, recall = 0.91, F1-score = 0.95 \n"
    " for conf_thresh = 0.25, TP = 21, FP = 0, FN = 2, average IoU = 80.12 % \n"
    "\n IoU threshold = 75 %, used 101 Recall-points \n"
    " mean average precision (mAP@0.75) = 0.477300, or 47.73 % \n"
    "Total Detection Time: 1 Seconds\n"
    "\nSet -points flag:\n `-points 101` for MS COCO \n")

#: hank-ai v5 (detector_map.cpp): a table with AP, F1 and AvgIoU in %, "-> " lines, colours
_GREEN, _OFF = "\x1b[1;32m", "\x1b[0m"
HK_REPORT = (
    "Calculating mAP (mean average precision) with threshold 0.25 and IoU threshold 0.5.\n"
    "-> 12 validation images for 2 classes\n"
    "detections_count=54, unique_truth_count=23\n"
    "\rrank=0 of ranks=54\rrank=53 of ranks=54\n\n"
    " AP=average precision, TP=true positive, TN=true negative,\n"
    " FP=false positive, FN=false negative, GT=ground truth count\n\n"
    "  Id Name                       AP      TP      FP      FN      GT       F1   AvgIoU\n"
    "  -- -------------------- -------- ------- ------- ------- ------- -------- --------\n"
    f"   0 lesion               {_GREEN} 95.4631{_OFF}      21       0       2      23 "
    f"{_GREEN} 95.4545{_OFF}  80.1234\n"
    "   1 a-very-long-class-n+   0.0000       0       0       0       0   0.0000   0.0000\n"
    "\n-> for conf_thresh=0.25, precision=1, recall=0.913043, F1 score=0.954545\n"
    "-> for conf_thresh=0.25, TP=21, FP=0, FN=2, average IoU=80.1234%\n"
    "-> IoU threshold=50%, used area-under-curve for each unique recall\n"
    f"-> mean average precision (mAP@0.5)={_GREEN}47.73%{_OFF}\n"
    "mAP calculations took a total of 1.2 seconds.\n")


def test_alexeyab_report_parsed():
    report = dlog.parse_map_report(AB_REPORT)
    assert report.map == 0.4773 and report.iou_threshold == 0.75 and report.points == 101
    assert report.classes == (dlog.ClassAP(0, "lesion", 0.9546, 21, 0),
                              dlog.ClassAP(1, "soft tissue", 0.0, 0, 0))
    assert (report.detections, report.ground_truth) == (54, 23)
    assert (report.conf_thresh, report.precision, report.recall, report.f1) == \
        (0.25, 1.0, 0.91, 0.95)
    assert (report.tp, report.fp, report.fn, report.average_iou) == (21, 0, 2, 0.8012)
    # AlexeyAB divides by zero when nothing scores above 0.25: -nan is kept as NaN
    nan = dlog.parse_map_report(AB_REPORT.replace("precision = 1.00", "precision = -nan"))
    assert math.isnan(nan.precision)
    # no mAP line (darknet stopped early): no report
    assert dlog.parse_map_report(AB_REPORT.split(" mean average")[0]) is None


def test_hankai_report_parsed():
    report = dlog.parse_map_report(HK_REPORT)
    assert report.map == 0.4773 and report.iou_threshold == 0.5 and report.points == 0
    assert report.classes == (
        dlog.ClassAP(0, "lesion", 0.954631, 21, 0, 2, 23, 0.954545, 0.801234),
        dlog.ClassAP(1, "a-very-long-class-n+", 0.0, 0, 0, 0, 0, 0.0, 0.0))
    assert (report.precision, report.recall, report.f1) == (1.0, 0.913043, 0.954545)
    assert (report.tp, report.fp, report.fn, report.average_iou) == (21, 0, 2, 0.801234)
    assert (report.detections, report.ground_truth) == (54, 23)


def test_map_command_line():
    assert map_command("/d/darknet", "/s/map.data", "/r/y.cfg", "/r/y.weights") == [
        "/d/darknet", "detector", "map", "/s/map.data", "/r/y.cfg", "/r/y.weights",
        "-dont_show", "-iou_thresh", "0.5", "-points", "0"]
    assert map_command("d", "m", "c", "w", 0.75, 101)[-4:] == ["-iou_thresh", "0.75", "-points",
                                                               "101"]
    assert map_json_path("/p/yolo1024.json") == Path("/p/yolo1024.darknet_map.json")


# ------------------------------------------------------------------ a scripted AlexeyAB

FAKE_AB = r'''#!/bin/sh
if [ "$1" = version ]; then echo "Not an option: version" >&2; exit 0; fi
echo " GPU isn't used "
if [ "$#" -lt 3 ]; then
  echo "usage: $0 $1 [train/test/valid/demo/map] [data] [cfg] [weights (optional)]" >&2; exit 0
fi
names=$(sed -n 's/^names *= *//p' "$3")
valid=$(sed -n 's/^valid *= *//p' "$3")
width=$(sed -n 's/^width *= *//p' "$4")
printf '%s width=%s\n' "$*" "$width" >> "ARGV"
name=$(head -n 1 "$names")
case "$2" in
test)
  out=""; prev=""
  for a in "$@"; do [ "$prev" = "-out" ] && out="$a"; prev="$a"; done
  n=0; printf '[' > "$out"
  while IFS= read -r image; do
    n=$((n + 1)); [ "$n" -gt 1 ] && printf ',' >> "$out"
    printf '\n{"frame_id":%d, "filename":"%s", "objects": [ ' "$n" "$image" >> "$out"
    printf '{"class_id":0, "name":"%s", "confidence":0.9, ' "$name" >> "$out"
    printf '"relative_coordinates":{"center_x":0.5, "center_y":0.5, ' >> "$out"
    printf '"width":0.25, "height":0.25}} ]}' >> "$out"
    echo "$image: Predicted in 1.5 milli-seconds."
  done
  printf '\n]\n' >> "$out" ;;
map)
  [ "$MAP_SAYS" = nothing ] && exit 0
  truth=0
  while IFS= read -r image; do truth=$((truth + $(wc -l < "${image%.*}.txt"))); done < "$valid"
  printf '\n detections_count = 54, unique_truth_count = %d  \n' "$truth"
  printf ' rank = 0 of ranks = 54 \rclass_id = 0, name = %s, ap = 43.21%%   ' "$name"
  printf '\t (TP = 3, FP = 1) \n'
  printf '\n for conf_thresh = 0.25, precision = 0.75, recall = 0.60, F1-score = 0.67 \n'
  printf ' for conf_thresh = 0.25, TP = 3, FP = 1, FN = 2, average IoU = 61.50 %% \n'
  printf '\n IoU threshold = 50 %%, used Area-Under-Curve for each unique Recall \n'
  printf ' mean average precision (mAP@0.50) = 0.432100, or 43.21 %% \n'
  echo "Total Detection Time: 0 Seconds" >&2 ;;
esac
'''

#: a 1-class network of one 1 x 1 convolution at stride 32 and a [yolo] (2 x 2 cells at 64 px)
MINI_CFG = ("[net]\nbatch=1\nsubdivisions=1\nwidth=64\nheight=64\nchannels=3\nmax_batches=10\n\n"
            "[convolutional]\nfilters=18\nsize=1\nstride=32\npad=0\nactivation=linear\n\n"
            "[yolo]\nmask=0,1,2\nanchors=10,14,23,27,37,58\nclasses=1\nnum=3\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return darknet_safe_tmp(tmp_path_factory, "darknet_map")


@pytest.fixture(scope="module")
def prepared(base):
    return small_universal_prepared(base)


@pytest.fixture(scope="module")
def network(base):
    """MINI_CFG and its weights: zero weights and biases (every cell scores 0.5 x 0.5)."""
    cfg = base / "net" / "mini.cfg"
    cfg.parent.mkdir()
    cfg.write_text(MINI_CFG)
    weights = base / "net" / "mini.weights"
    weights.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + bytes(4 * (18 + 3 * 18)))
    return cfg, weights


@pytest.fixture()
def fake_ab(tmp_path):
    argv = tmp_path / "argv.txt"
    script = tmp_path / "fake-ab"
    script.write_text(FAKE_AB.replace('"ARGV"', f'"{argv}"'))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, argv


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_predict_with_darknet_map_on_alexeyab(prepared, network, fake_ab, base):
    cfg, weights = network
    fake, argv = fake_ab
    out = base / "ab" / "yolo128.json"
    result = invoke("predict", "yolo", prepared, "--cfg", cfg, "--weights", weights, "-o", out,
                    "--darknet", fake, "--darknet-map", "--size", "128")
    assert result.exit_code == 0, result.output
    written = out.with_name("yolo128.darknet_map.json")
    assert (f"darknet's own detector map (alexeyab, 128x128): mAP@0.50 0.4321 (all-point AP), "
            f"average IoU 61.50 % at score >= 0.25 -> {written}") in result.output
    assert f"wrote {len(json.loads(out.read_text()))} detections to {out}; " in result.output
    # the exact command: the split's relocated list in map.data, the cfg resized to 128 px
    calls = argv.read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [["detector", "test"], ["detector", "map"]]
    words = calls[1].split()   # the arguments, and the width of the cfg darknet was given
    assert words[-1] == "width=128"
    data, run_cfg = Path(words[2]), Path(words[3])
    assert data.name == "map.data" and data.parent.name.startswith("lesion-darknet-map-test-")
    assert run_cfg.name == "mini-128x128.cfg" and run_cfg.parent == data.parent
    assert words[4:-1] == [str(weights), "-dont_show", "-iou_thresh", "0.5", "-points", "0"]
    assert not data.parent.exists()  # the scratch folder is gone after success
    # the json: darknet's figures, the labels it read, what ran
    doc = json.loads(written.read_text())
    gt = load_ground_truth(prepared / "coco" / "test.json")
    assert doc["tool"] == "darknet detector map" and doc["fork"] == "alexeyab"
    assert (doc["map"], doc["iou_thresh"], doc["points"]) == (0.4321, 0.5, 0)
    assert doc["ap_per_class"] == {"lesion": 0.4321}
    assert (doc["precision"], doc["recall"], doc["f1"], doc["conf_thresh"]) == \
        (0.75, 0.6, 0.67, 0.25)
    assert (doc["tp"], doc["fp"], doc["fn"], doc["average_iou"]) == (3, 1, 2, 0.615)
    assert doc["ground_truth"] == len(gt.box_xywh) > 0 and doc["detections"] == 54
    assert doc["network_size"] == [128, 128] and doc["split"] == "test"
    assert doc["cfg"] == str(cfg) and doc["weights"] == str(weights)
    assert doc["binary"] == str(fake) and doc["command"][2] == "map"
    assert DarknetMap.read(written).to_dict() == doc


def test_darknet_map_options_and_failures(prepared, network, fake_ab, monkeypatch):
    cfg, weights = network
    fake, argv = fake_ab
    found = darknet_map(prepared, cfg, weights, split="val", darknet=fake, iou_thresh=0.75,
                        points=11)
    assert found.split == "val" and found.network_size == (64, 64)
    words = argv.read_text().split()
    assert words[3] == str(cfg) and words[5:-1] == ["-dont_show", "-iou_thresh", "0.75",
                                                    "-points", "11"]
    with pytest.raises(DarknetOptionError, match=r"points 1: 0 \(area under"):
        darknet_map(prepared, cfg, weights, darknet=fake, points=1)
    with pytest.raises(DarknetOptionError, match=r"iou_thresh 1.0: expected a number in \(0, 1\)"):
        darknet_map(prepared, cfg, weights, darknet=fake, iou_thresh=1.0)
    monkeypatch.setenv("MAP_SAYS", "nothing")
    with pytest.raises(DarknetRunError) as info:
        darknet_map(prepared, cfg, weights, darknet=fake)
    assert "darknet detector map (AlexeyAB darknet, test) failed: darknet printed no `mean " \
           "average precision (mAP@...)` line" in str(info.value)
    assert info.value.run_dir.is_dir()  # kept for inspection
    shutil.rmtree(info.value.run_dir)


@needs_darknet
def test_pjreddie_has_no_detector_map(prepared, network, base):
    cfg, weights = network
    with pytest.raises(DarknetOptionError) as info:
        darknet_map(prepared, cfg, weights)
    assert "is pjreddie darknet, which has no `detector map`" in str(info.value)
    assert "needs AlexeyAB or hank-ai darknet" in str(info.value)
    assert "pjreddie darknet" in map_unsupported()
    # the command predicts anyway and says why there is no darknet mAP
    out = base / "pj" / "yolo.json"
    result = invoke("predict", "yolo", prepared, "--cfg", cfg, "--weights", weights, "-o", out,
                    "--darknet-map")
    assert result.exit_code == 0, result.output
    assert "Warning: --darknet-map:" in result.output and "has no `detector map`" in \
        result.output and "predicting without it" in result.output
    assert len(json.loads(out.read_text())) > 0 and not map_json_path(out).exists()


@pytest.mark.skipif(not os.environ.get("LESION_TEST_ALEXEYAB"),
                    reason="set LESION_TEST_ALEXEYAB to an AlexeyAB or hank-ai darknet binary to "
                           "run its real `detector map`")
def test_real_alexeyab_detector_map(prepared, network):
    cfg, weights = network
    found = darknet_map(prepared, cfg, weights, darknet=os.environ["LESION_TEST_ALEXEYAB"])
    assert found.fork in ("alexeyab", "hankai") and 0 <= found.map <= 1
    assert list(found.ap_per_class) == ["lesion"] and found.ground_truth > 0
