"""AlexeyAB / hank-ai habits in `lesion cfg` and `lesion train yolo` (issue 13, item 6): anchors
rescaled from anchors.json's network size to --size, darknet's training flags passed only to the
forks that read them, `_best.weights` surfaced, --gpus on a CPU-only build, the resume message
that counts this session's iterations, and the run's curves.png over every session.

Real darknet here is Debian's pjreddie build (CPU only, 1-class yolov3-tiny at 64 px, a few
iterations). AlexeyAB cannot run here, so its side (flags it reads, `-map` lines, `_best.weights`)
is played by a script printing AlexeyAB's documented console lines (docs/darknet.md 0, 5.1, 5.2),
as tests/test_darknet_runner.py does for fork detection.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli import runlog
from deeplesion_cli.anchors import AnchorsInputError, anchors_for_size
from deeplesion_cli.cli import main
from deeplesion_cli.darknet import binary as dbinary
from deeplesion_cli.darknet import train as dtrain
from deeplesion_cli.darknet.errors import DarknetOptionError
from tests.test_darknet_runner import tiny_cfg
from tests.test_faults_darknet import fast_cfg
from tests.conftest import darknet_safe_tmp, small_universal_prepared

needs_darknet = pytest.mark.darknet


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return darknet_safe_tmp(tmp_path_factory, "darknet_habits")


@pytest.fixture(scope="module")
def prepared(base):
    return small_universal_prepared(base)


# ----------------------------------------------------------------------- anchors rescaled

def test_anchors_rescaled_by_the_width_and_height_ratios():
    doc = {"anchors": [[10, 14], [24, 28], [40, 60]], "network_size": [416, 416]}
    sized = anchors_for_size(doc, (208, 104))
    assert sized.anchors_px == [[5.0, 3.5], [12.0, 7.0], [20.0, 15.0]]
    assert sized.source_size == (416, 416) and sized.warnings == []
    assert "rescaled from 416x416 to 208x104 (widths x 0.5, heights x 0.25)" in sized.note
    same = anchors_for_size(doc, (416, 416))
    assert same.anchors_px == [[10.0, 14.0], [24.0, 28.0], [40.0, 60.0]]
    assert "rescaled" not in same.note
    # no network_size: used as they are, with a warning that says so
    bare = anchors_for_size({"anchors": [[10, 14]]}, (160, 160), "a.json")
    assert bare.anchors_px == [[10.0, 14.0]] and bare.source_size is None
    assert "a.json has no network_size" in bare.warnings[0]
    assert "unscaled at 160x160" in bare.warnings[0]
    with pytest.raises(AnchorsInputError, match="'network_size' must be"):
        anchors_for_size({"anchors": [[1, 2]], "network_size": [0, 416]}, (160, 160))
    with pytest.raises(AnchorsInputError, match="'anchors' must be a list"):
        anchors_for_size({"anchors": [[1, -2]], "network_size": [416, 416]}, (160, 160))


def test_cfg_writes_anchors_rescaled_to_its_size_and_says_so(prepared, base):
    # 416-px anchors (multiples of 13) into a 160-px cfg: each value x 160/416 = x 5/13
    anchors = base / "anchors416.json"
    anchors.write_text(json.dumps({"anchors": [[13, 26], [26, 39], [39, 65], [65, 91],
                                               [104, 130], [169, 208]],
                                   "network_size": [416, 416]}))
    out = base / "tiny160.cfg"
    result = invoke("cfg", prepared, "--arch", "yolov3-tiny", "--size", "160", "--anchors",
                    anchors, "-o", out)
    assert result.exit_code == 0, result.output
    assert "rescaled from 416x416 to 160x160 (widths x 0.3846, heights x 0.3846)" in result.output
    lines = {line.replace(" ", "") for line in out.read_text().splitlines()}
    assert "anchors=5,10,10,15,15,25,25,35,40,50,65,80" in lines
    # a json without network_size: used as it is, and the command warns
    bare = base / "bare.json"
    bare.write_text(json.dumps({"anchors": [[13, 26], [26, 39], [39, 65], [65, 91],
                                            [104, 130], [169, 208]]}))
    result = invoke("cfg", prepared, "--arch", "yolov3-tiny", "--size", "160", "--anchors",
                    bare, "-o", base / "bare160.cfg")
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.output and "has no network_size" in result.output
    lines = {line.replace(" ", "") for line in
             (base / "bare160.cfg").read_text().splitlines()}
    assert "anchors=13,26,26,39,39,65,65,91,104,130,169,208" in lines


# ------------------------------------------------------------- flags, forks, GPU builds

def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


#: AlexeyAB's side, scripted: its start-up line, its usage, and for `detector train` the
#: iteration lines from 1 (or 4 when given weights to resume from) to the cfg's max_batches, a
#: `-map` result at IoU 0.75 and `_best`/`_final` weights in the backup folder
FAKE_ALEXEYAB = r'''
if [ "$1" = version ]; then echo "Not an option: version" >&2; exit 0; fi
echo " GPU isn't used "
if [ "$#" -lt 3 ]; then
  echo "usage: $0 $1 [train/test/valid/demo/map] [data] [cfg] [weights (optional)]" >&2; exit 0
fi
echo "$@" >> argv.txt
backup=$(sed -n 's/^backup *= *//p' "$3")
last=$(sed -n 's/^max_batches *= *//p' "$4")
base=$(basename "$4" .cfg)
first=1
case "$5" in *.weights) first=4 ;; esac
i=$first
while [ "$i" -le "$last" ]; do
  printf '\n %d: 5.0, 6.0 avg loss, 0.001000 rate, 0.1 seconds, %d images, 0.0 hours left\n' \
    "$i" "$((i * 2))"
  i=$((i + 1))
done
printf '\n mean_average_precision (mAP@0.75) = 0.250000 \nNew best mAP!\n'
echo best > "$backup/${base}_best.weights"
echo "Saving weights to $backup/${base}_final.weights"
echo final > "$backup/${base}_final.weights"
'''


def test_train_flags_refused_where_the_fork_lacks_them():
    check = dtrain.check_train_flags
    with pytest.raises(DarknetOptionError) as info:
        check("pjreddie", "/usr/bin/darknet", True, map_epochs=2)
    assert str(info.value) == (
        "--map-epochs (darknet -mAP_epochs) needs AlexeyAB darknet; /usr/bin/darknet is "
        "pjreddie darknet, which has no -mAP_epochs (it would read the flag as a file name, "
        "docs/darknet.md 4)")
    with pytest.raises(DarknetOptionError, match="hank-ai darknet, which computes the mAP every "
                                                 "epoch"):
        check("hankai", "/x/darknet", True, map_epochs=2)
    with pytest.raises(DarknetOptionError, match=r"--iou-thresh \(darknet -iou_thresh\) changes "
                                                 "the mAP that --map computes.*add --map"):
        check("alexeyab", "/x/darknet", False, iou_thresh=0.75)
    check("hankai", "/x/darknet", True, iou_thresh=0.75, chart="/r/c.png")  # known: no error
    cmd = dtrain.train_command("/d", "alexeyab", "/r/obj.data", "/r/t.cfg", map=True,
                               map_epochs=2, iou_thresh=0.75, chart="/r/c.png")
    assert cmd[5:] == ["-dont_show", "-map", "-mAP_epochs", "2", "-iou_thresh", "0.75",
                       "-chart", "/r/c.png"]


def test_save_every_reaches_each_fork_its_own_way():
    assert dtrain.save_every_entry("alexeyab", "/d", 1000) == {"saveweights": 1000}
    assert dtrain.save_every_entry("hankai", "/d", 1000) is None
    assert dtrain.save_every_entry("pjreddie", "/d", None) == {}
    hank = dtrain.train_command("/d", "hankai", "/r/obj.data", "/r/t.cfg", save_every=1000)
    assert hank[-2:] == ["-saveweights", "1000"]
    ab = dtrain.train_command("/d", "alexeyab", "/r/obj.data", "/r/t.cfg", save_every=1000)
    assert "-saveweights" not in ab
    with pytest.raises(DarknetOptionError, match=r"--save-every 1000 needs AlexeyAB or hank-ai "
                                                 r"darknet; /d is pjreddie's, which saves"):
        dtrain.train_command("/d", "pjreddie", "/r/obj.data", "/r/t.cfg", save_every=1000)


@needs_darknet
def test_chart_on_pjreddie_is_refused_before_anything_is_written(prepared, base):
    cfg = fast_cfg(base / "cfg-refused" / "tiny.cfg", max_batches=3)
    run = base / "run-refused"
    result = invoke("train", "yolo", prepared, "--cfg", cfg, "--out", run, "--chart",
                    base / "chart.png")
    assert result.exit_code == 2, result.output
    assert "Error: --chart (darknet -chart) needs AlexeyAB darknet or hank-ai darknet" in \
        result.output and "is pjreddie darknet, which has no -chart" in result.output
    assert not run.exists()


def test_gpu_support_from_the_start_up_lines(tmp_path):
    cpu_ab = _script(tmp_path / "ab-cpu", FAKE_ALEXEYAB)
    assert dbinary.gpu_support(cpu_ab) == dbinary.GpuSupport(
        False, "it prints \"GPU isn't used\" at start-up")
    gpu_ab = _script(tmp_path / "ab-gpu", FAKE_ALEXEYAB.replace(
        "GPU isn't used", "CUDA-version: 12020 (12040), cuDNN: 8.9.7, GPU count: 1"))
    assert dbinary.gpu_support(gpu_ab).cuda is True
    hk = _script(tmp_path / "hk", 'echo "Darknet v5.1-104-gf684e1d7"\n'
                 'echo "Darknet is compiled to only use the CPU."\necho "  GPU is disabled."\n')
    assert dbinary.gpu_support(hk).cuda is False


def test_alexeyab_flags_best_weights_and_cpu_only_gpus(prepared, base):
    fake = _script(base / "fake-ab", FAKE_ALEXEYAB)
    cfg = tiny_cfg(base / "cfg-ab" / "tiny.cfg", max_batches=3)
    run = base / "run-ab"
    result = invoke("train", "yolo", prepared, "--cfg", cfg, "--out", run, "--darknet", fake,
                    "--map", "--map-epochs", "2", "--iou-thresh", "0.75", "--gpus", "0",
                    "--chart", base / "charts" / "c.png", "--save-every", "1000")
    assert result.exit_code == 0, result.output
    argv = (run / "argv.txt").read_text().split()
    assert argv[4:] == ["-dont_show", "-map", "-mAP_epochs", "2", "-iou_thresh", "0.75",
                        "-chart", str(base / "charts" / "c.png")]  # and no -gpus
    assert "Warning: --gpus 0:" in result.output
    assert "is a CPU-only build (it prints \"GPU isn't used\" at start-up)" in result.output
    assert "lesion does not pass -gpus to it" in result.output
    assert "trained 3 iterations" in result.output
    best = run / "backup" / "tiny_best.weights"
    assert f"best weights (highest --map mAP): {best}" in result.output
    rows = runlog.read_metrics(run / "metrics.csv")
    assert [(r["step"], r["val_mAP75"], r["val_mAP50"]) for r in rows] == \
        [(1, None, None), (2, None, None), (3, 0.25, None)]
    args = json.loads((run / "args.json").read_text())
    assert args["outputs"] == {"final": str(run / "backup" / "tiny_final.weights"),
                               "best": str(best), "resume": None}
    assert args["flags"] == {"clear": False, "map_epochs": 2, "iou_thresh": 0.75,
                             "chart": str(base / "charts" / "c.png"), "save_every": 1000}
    # AlexeyAB reads the save interval from the .data file (hank-ai from -saveweights)
    assert "saveweights = 1000\n" in (run / "obj.data").read_text()
    assert args["gpus"] is None  # what darknet got
    # resumed: this session's iterations, and the best mAP that AlexeyAB restarted
    longer = tiny_cfg(base / "cfg-ab-longer" / "tiny.cfg", max_batches=5)
    result = invoke("train", "yolo", prepared, "--cfg", longer, "--out", run, "--darknet", fake,
                    "--map", "--resume")
    assert result.exit_code == 0, result.output
    assert "trained iterations 4-5 (2 this session)" in result.output
    assert f"best weights (highest --map mAP): {best}" in result.output
    assert "starts its best mAP afresh when a run resumes: tiny_best.weights is the best of " \
           "iterations 4-5 only" in result.output


# --------------------------------------------------------- real pjreddie: gpus, resume

@pytest.fixture(scope="module")
def first_session(prepared, base):
    """`lesion train yolo --gpus 0` on Debian's darknet: 3 iterations."""
    run = base / "run-pj"
    cfg = fast_cfg(base / "cfg-pj" / "tiny.cfg", max_batches=3)
    return invoke("train", "yolo", prepared, "--cfg", cfg, "--out", run, "--gpus", "0"), run


@needs_darknet
def test_gpus_on_the_cpu_only_debian_build_warns(first_session):
    result, run = first_session
    assert result.exit_code == 0, result.output
    assert "Warning: --gpus 0:" in result.output
    assert "(pjreddie darknet) is a CPU-only build (it is linked with no CUDA library)" in \
        result.output
    assert "-gpus" not in (run / "darknet.log").read_text().splitlines()[0]
    assert "trained 3 iterations with pjreddie darknet" in result.output


@needs_darknet
def test_resume_counts_this_sessions_iterations_and_curves_cover_the_run(first_session,
                                                                          prepared, base):
    result, run = first_session
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").is_file()
    resumed = base / "run-pj-resumed"
    shutil.copytree(run, resumed)
    (resumed / "curves.png").unlink()
    longer = fast_cfg(base / "cfg-pj-longer" / "tiny.cfg", max_batches=5)
    result = invoke("train", "yolo", prepared, "--cfg", longer, "--out", resumed, "--resume")
    assert result.exit_code == 0, result.output
    assert "trained iterations 4-5 (2 this session) with pjreddie darknet" in result.output
    rows = runlog.read_metrics(resumed / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # both sessions, in one file
    assert (resumed / "curves.png").stat().st_size > 1000  # drawn from all of it
