"""Issue 13, items 4 and 5: a weights-only best.pt beside the full last.pt (predict takes either,
--resume refuses best.pt), progress lines of a long evaluation when piped, and the patient
bootstrap in --workers processes with results that do not depend on their number.

Real models and commands (mobilenet_v3_fpn at 96 px on a tiny synthetic set, as in
tests/test_faults_frcnn.py; the real evaluator and process pool), nothing mocked.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from deeplesion_cli.cli import main
from deeplesion_cli.evaluation import evaluate as ev
from deeplesion_cli.formats.detections import write_coco_results
from deeplesion_cli.formats.groundtruth import Detections, ground_truth_from_dict
from deeplesion_cli.frcnn import checkpoint as ckpt
from deeplesion_cli.frcnn import engine
from deeplesion_cli.progress import Progress

FAST = dict(arch="mobilenet_v3_fpn", size_px=96, batch_size=4, workers=0, augment="none",
            eval_train_images=0, deterministic=True, lr=1e-3, rois_per_image=64,
            rpn_pre_nms_train=300, rpn_post_nms_train=300, rpn_post_nms_test=300)


# ------------------------------------------------------------------ item 4: best.pt, last.pt

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run (best.pt and last.pt both of epoch 1) and its prepared folder."""
    from deeplesion_cli.deeplesion.synth import synthesize
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("ckpt")
    # one training image (one step per epoch: the cost here is the model's), seven val images
    synthesize(root / "synth", patients=4, seed=3, size_px=96, workers=1, show_progress=False)
    prepare(root / "synth", root / "prep",
            PrepareOptions(task="universal", split="patient", ratios=(0.25, 0.25, 0.5)),
            workers=1, show_progress=False)
    result = engine.train(root / "prep", root / "run", engine.TrainOptions(**FAST, epochs=1),
                          show_progress=False)
    assert result.best_epoch == 1 and result.epochs_done == 1
    return root / "run", root / "prep"


def test_best_pt_holds_weights_only_and_is_smaller(run):
    run_dir, _ = run
    best, last = ckpt.load(run_dir / "best.pt"), ckpt.load(run_dir / "last.pt")
    assert best["kind"] == "weights" and last["kind"] == "training"
    for key in ("optimizer", "scaler", "sampler", "rng"):
        assert key not in best and key in last
    # what predicting needs, and which epoch it is
    for key in ("model_args", "model", "classes", "options", "prepared_config_hash",
                "prepared_render", "epoch", "best"):
        assert best[key] == last[key] if key != "model" else best[key].keys() == last[key].keys()
    assert ckpt.is_weights_only(best) and not ckpt.is_weights_only(last)
    assert ckpt.peek(run_dir / "best.pt")["kind"] == "weights"
    size_best = (run_dir / "best.pt").stat().st_size
    size_last = (run_dir / "last.pt").stat().st_size
    # Adam keeps two tensors per weight: last.pt is about three times best.pt
    assert size_best < 0.5 * size_last, (size_best, size_last)


def test_predict_from_best_pt_equals_predict_from_last_pt(run, tmp_path):
    run_dir, prepared = run
    runner = CliRunner()
    outputs = {}
    for name in ("best.pt", "last.pt"):
        out = tmp_path / f"{name}.json"
        result = runner.invoke(main, ["predict", "frcnn", str(run_dir / name), str(prepared),
                                      "-o", str(out), "--workers", "0", "--split", "val"])
        assert result.exit_code == 0, result.output
        assert f"with {run_dir / name}, epoch 1" in result.output
        outputs[name] = json.loads(out.read_text())
    assert outputs["best.pt"] and outputs["best.pt"] == outputs["last.pt"]


def test_resume_refuses_best_pt_with_a_clear_message(run, tmp_path):
    run_dir, prepared = run
    only_best = tmp_path / "only_best"
    shutil.copytree(run_dir, only_best, ignore=shutil.ignore_patterns("last.pt"))
    runner = CliRunner()
    result = runner.invoke(main, ["train", "frcnn", str(prepared), "--out", str(only_best),
                                  "--resume", "--epochs", "2"])
    assert result.exit_code == 2, result.output
    assert f"{only_best / 'last.pt'} is missing" in result.output
    assert "holds model weights only" in result.output
    assert "--resume needs last.pt" in result.output
    assert "Traceback" not in result.output
    # a new run in that folder would replace best.pt silently: refused too
    result = runner.invoke(main, ["train", "frcnn", str(prepared), "--out", str(only_best),
                                  "--epochs", "1"])
    assert result.exit_code == 2 and "best.pt" in result.output, result.output
    # best.pt under last.pt's name (a copy by hand): refused, naming the file
    shutil.copy(only_best / "best.pt", only_best / "last.pt")
    result = runner.invoke(main, ["train", "frcnn", str(prepared), "--out", str(only_best),
                                  "--resume", "--epochs", "2"])
    assert result.exit_code == 2, result.output
    assert f"{only_best / 'last.pt'} holds model weights only" in result.output
    assert "--resume needs the run's last.pt" in result.output
    assert len(ckpt.peek(only_best / "best.pt")) == len(ckpt.peek(run_dir / "best.pt"))


# -------------------------------------------------------- item 5: progress, bootstrap workers

def _tiny(n_patients: int = 8, per_patient: int = 2, seed: int = 0):
    """Ground truth of ``n_patients`` patients (``per_patient`` images, one lesion each) and two
    detectors: jittered copies of the lesions plus false positives, the second missing some."""
    rng = np.random.default_rng(seed)
    images, anns, rows = [], [], []
    for i in range(n_patients * per_patient):
        images.append({"id": i, "file_name": f"{i}.png", "width": 128, "height": 128,
                       "patient_index": i // per_patient})
        box = [float(v) for v in rng.uniform(10, 80, 2)] + [12.0, 10.0]
        anns.append({"id": i + 1, "image_id": i, "category_id": 1, "bbox": box})
        rows.append((i, np.asarray(box) + rng.normal(0, 1.5, 4), rng.uniform(0.3, 1)))
        rows.append((i, np.asarray([*rng.uniform(0, 100, 2), 9, 9]), rng.uniform(0, 0.6)))
    gt = ground_truth_from_dict({"images": images, "annotations": anns,
                                 "categories": [{"id": 1, "name": "lesion"}]})

    def dets(keep):
        kept = [r for k, r in enumerate(rows) if keep(k)]
        return Detections("<test>", np.asarray([r[0] for r in kept], np.int64),
                          np.ones(len(kept), np.int64), np.asarray([r[1] for r in kept]),
                          np.asarray([r[2] for r in kept], np.float64))

    return gt, {"a": dets(lambda k: True), "b": dets(lambda k: k % 6 != 0)}


def test_bootstrap_in_two_processes_equals_one():
    gt, runs = _tiny()
    one = ev.bootstrap(gt, runs, ev.EvalOptions(bootstrap=12, seed=3, workers=1))
    two = ev.bootstrap(gt, runs, ev.EvalOptions(bootstrap=12, seed=3, workers=2))
    assert one["workers"] == 1 and two["workers"] == 2      # the pool really ran
    assert one["ci95"] == two["ci95"] and one["paired"] == two["paired"]
    # the intervals are real ones (not every resample gives the same value)
    assert one["ci95"]["a"]["coco.AP50"][0] < one["ci95"]["a"]["coco.AP50"][1]
    # metrics.json does not record the processes (results do not depend on them)
    document = ev.evaluate_runs(gt, runs, ev.EvalOptions(bootstrap=6, seed=3, workers=2))
    assert "workers" not in document["options"]
    assert document == ev.evaluate_runs(gt, runs, ev.EvalOptions(bootstrap=6, seed=3, workers=1))
    assert ev.bootstrap_workers(None, 3) >= 1 and ev.bootstrap_workers(8, 3) == 3


def test_progress_waits_for_long_work():
    quiet, loud = io.StringIO(), io.StringIO()
    for stream, after in ((quiet, 60.0), (loud, 0.0)):
        with Progress(3, "evaluate", unit="stages", interval_s=0.0, stream=stream,
                      after_s=after) as progress:
            for _ in range(3):
                progress.advance(info="a: coco")
    assert quiet.getvalue() == ""                              # short work stays quiet
    lines = loud.getvalue().splitlines()
    assert lines[0].startswith("evaluate: 1/3 stages (33.3%)") and lines[0].endswith("a: coco")
    assert lines[-1].startswith("evaluate: 3/3 stages (100.0%)")


def test_long_eval_prints_progress_lines_when_piped(monkeypatch, tmp_path):
    gt, runs = _tiny(n_patients=4)
    coco = {"images": [{"id": int(i), "file_name": n, "width": 128, "height": 128,
                        "patient_index": int(p)}
                       for i, n, p in zip(gt.image_ids, gt.image_names, gt.image_patients)],
            "annotations": [{"id": k + 1, "image_id": int(gt.image_ids[im]), "category_id": 1,
                             "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                             "iscrowd": 0}
                            for k, (im, box) in enumerate(zip(gt.image, gt.box_xywh))],
            "categories": [{"id": 1, "name": "lesion"}]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(coco))
    for name, dets in runs.items():
        write_coco_results(tmp_path / f"{name}.json", gt, dets)
    args = ["eval", str(gt_path), "--pred", f"a={tmp_path / 'a.json'}", "--pred",
            f"b={tmp_path / 'b.json'}", "--bootstrap", "6", "--workers", "2"]
    quiet = CliRunner().invoke(main, args)                    # a short evaluation: no lines
    assert quiet.exit_code == 0, quiet.output
    assert "evaluate:" not in quiet.output and "bootstrap:" not in quiet.output
    # the same evaluation taken for a long one (shown at once, a line per stage)
    monkeypatch.setattr(ev, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(ev, "PROGRESS_EVERY_S", 0.0)
    loud = CliRunner().invoke(main, args)
    assert loud.exit_code == 0, loud.output
    n = 2 * len(ev.STAGES)
    assert f"evaluate: 1/{n} stages" in loud.output and "a: coco" in loud.output
    assert f"evaluate: {n}/{n} stages (100.0%)" in loud.output and "b: strata" in loud.output
    assert "bootstrap: 6/6 resamples (100.0%)" in loud.output
    assert "\x1b" not in loud.output                          # plain lines, no terminal codes
    # apart from those lines, the output is the quiet run's
    rest = [line for line in loud.output.splitlines()
            if not line.startswith(("evaluate: ", "bootstrap: "))]
    assert rest == quiet.output.splitlines()
