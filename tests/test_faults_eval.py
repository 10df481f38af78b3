"""Faults and mix-ups of `lesion eval` and `lesion report` (issue 12, items 1, 5, 6 and 14's
bootstrap): repeated run names, no detections, boxes in another frame, an eval and a prepared
folder of different data, absolute paths in metrics.json, a bootstrap over one patient. Every case
goes through the real commands (CliRunner), asserting exit codes and messages by content."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplesion_cli.cli import main
from deeplesion_cli.prepared import Prepared


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A hand-made COCO ground truth (4 images of 64 x 64 px of one patient, one lesion each,
    no prepared folder) and a detection file that finds every lesion."""
    root = tmp_path_factory.mktemp("tiny")
    boxes = [[30, 30, 8, 8], [40, 20, 6, 9], [25, 44, 10, 7], [44, 40, 9, 9]]
    gt = {"images": [{"id": i + 1, "file_name": f"{i + 1}.png", "width": 64, "height": 64,
                      "patient_index": 7} for i in range(4)],
          "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": b,
                           "area": b[2] * b[3], "iscrowd": 0} for i, b in enumerate(boxes)],
          "categories": [{"id": 1, "name": "lesion"}]}
    (root / "gt.json").write_text(json.dumps(gt))
    dets = [{"image_id": i + 1, "category_id": 1, "bbox": b, "score": 0.9 - 0.1 * i}
            for i, b in enumerate(boxes)]
    (root / "good.json").write_text(json.dumps(dets))
    (root / "empty.json").write_text("[]")
    return root


@pytest.fixture(scope="module")
def two_prepared(synth_set, tmp_path_factory):
    """The session's synthetic set prepared twice, with two HU windows: two folders of different
    data (different manifest config hashes) with the same image names."""
    from deeplesion_cli.prepare import PrepareOptions, prepare

    root, _ = synth_set
    out = tmp_path_factory.mktemp("faults_eval")
    folders = []
    for name, window in (("soft", (-160, 240)), ("lung", (-1400, 200))):
        prepare(root, out / name, PrepareOptions(task="universal", split="patient", seed=1,
                                                 windows=(window,)),
                workers=1, show_progress=False)
        folders.append(out / name)
    return folders


def lesion_results(prepared: Path, split: str, transform=lambda b: b) -> list[dict]:
    """A detection for every lesion of ``split`` (``transform``: what happens to its box),
    scores falling in annotation order."""
    doc = json.loads(Prepared(prepared).coco_path(split).read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [float(v) for v in transform(a["bbox"])],
             "score": round(0.99 - 0.001 * k, 4)} for k, a in enumerate(doc["annotations"])]


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]


# ---------------------------------------------------------------------- item 1: run names

def test_a_pred_name_given_twice_is_an_error_naming_both_files(tiny):
    result = invoke("eval", tiny / "gt.json", "--pred", f"a={tiny / 'good.json'}",
                    "--pred", f"a={tiny / 'empty.json'}")
    assert result.exit_code == 2, result.output
    assert "'a' is given twice" in result.output
    assert "good.json" in result.output and "empty.json" in result.output
    assert "Traceback" not in result.output


def test_a_pred_name_equal_to_a_positional_stem_is_an_error(tiny):
    result = invoke("eval", tiny / "gt.json", tiny / "good.json",
                    "--pred", f"good={tiny / 'empty.json'}")
    assert result.exit_code == 2, result.output
    assert "'good'" in result.output and "also a --pred or --run name" in result.output
    assert "good.json" in result.output and "empty.json" in result.output


def test_positional_files_with_one_stem_keep_both_runs(tiny, tmp_path):
    other = tmp_path / "good.json"
    other.write_text("[]")
    result = invoke("eval", tiny / "gt.json", tiny / "good.json", other, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert list(runs) == ["good", "good_"]
    assert runs["good"]["n_detections"] == 4 and runs["good_"]["n_detections"] == 0


def test_run_names_that_look_alike_on_disk_get_their_own_plots(tiny, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("eval", tiny / "gt.json", "--pred", f"a/b={tiny / 'good.json'}",
                    "--pred", f"a_b={tiny / 'empty.json'}", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "pr_a_b.png").is_file() and (out / "pr_a_b_2.png").is_file()
    assert (out / "confusion_a_b_2.png").is_file()


# ------------------------------------------------------------------ item 5: no detections

def test_no_detections_warn_and_show_undefined_not_one(tiny, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("eval", tiny / "gt.json", "--pred", f"none={tiny / 'empty.json'}",
                    "--pred", f"good={tiny / 'good.json'}", "--out", out)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        "Warning: run none: no detections at all: AP, recall and FROC sensitivity are 0; "
        "precision and the best-F1 threshold are undefined (null in metrics.json, '–' in "
        "tables)"]
    doc = json.loads((out / "metrics.json").read_text())
    none, good = doc["runs"]["none"], doc["runs"]["good"]
    assert none["at_score"]["precision"] is None and none["at_score"]["recall"] == 0.0
    assert none["best_f1"]["score"] is None and none["best_f1"]["precision"] is None
    assert none["coco"]["AP"] == 0 and none["voc"]["map_all"] == 0
    assert none["warnings"] and good["warnings"] == []
    assert good["at_score"]["precision"] == 1.0 and good["best_f1"]["score"] == pytest.approx(0.6)
    assert doc["warnings"] == [f"run none: {none['warnings'][0]}"]
    # the console table, summary.md: undefined as "–", never 1.0000
    for text in (result.stdout, (out / "summary.md").read_text()):
        rows = {line.split("│" if "│" in line else "|")[1].strip(): line
                for line in text.splitlines() if "precision @score" in line
                or "best-F1 score threshold" in line}
        assert len(rows) == 2, text
        for line in rows.values():
            cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
            assert cells[1] == "–", line          # run "none"
            assert cells[2] != "–", line          # run "good"
    assert "## Warnings" in (out / "summary.md").read_text()
    # the report's tables (Markdown, LaTeX, CSV) and its warnings
    report = tmp_path / "report"
    result = invoke("report", "--eval", out, "--out", report)
    assert result.exit_code == 0, result.output
    assert "Warning: eval cmp: run none: no detections at all" in result.stderr
    backends = list(csv.DictReader(io.StringIO((report / "tables/backends.csv").read_text())))
    assert [r["run"] for r in backends] == ["none", "good"]
    assert backends[0]["precision"] == "" and backends[1]["precision"] == "1.0"
    md = [line for line in (report / "tables/backends.md").read_text().splitlines()
          if line.startswith("| none |")]
    assert len(md) == 1 and "1.000" not in md[0].split("|")[-4]   # precision cell
    assert md[0].split("|")[-4].strip() == "–"
    tex = [line for line in (report / "tables/backends.tex").read_text().splitlines()
           if line.startswith("none &")]
    assert tex[0].split("&")[-3].strip() == "--"
    assert "no detections at all" in (report / "index.md").read_text()


def test_nothing_above_the_score_threshold_warns(tiny):
    result = invoke("eval", tiny / "gt.json", tiny / "good.json", "--score", "0.95", "--json")
    assert result.exit_code == 0, result.output
    block = json.loads(result.stdout)["runs"]["good"]
    assert block["at_score"]["precision"] is None and block["at_score"]["tp"] == 0
    assert warnings_of(result) == [
        "Warning: run good: no detection scores >= 0.95 (the highest scores 0.9): precision at "
        "that score is undefined; lower --score"]


# ------------------------------------------------------------- item 6a: another frame

@pytest.mark.parametrize("label, transform, expected", [
    ("x8", lambda b: [v * 8 for v in b], "px outside their image"),
    # here most boxes reach outside; on 512-px DeepLesion they would mostly overlap no lesion
    ("xyxy", lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]], "another frame"),
    # boxes of a half-size image: inside the image, but on no lesion
    ("half", lambda b: [v / 2 for v in b], "highest-scored detections overlap no lesion"),
])
def test_boxes_in_another_frame_warn(two_prepared, tmp_path, label, transform, expected):
    prepared = two_prepared[0]
    right, wrong = tmp_path / "right.json", tmp_path / f"{label}.json"
    right.write_text(json.dumps(lesion_results(prepared, "train")))
    wrong.write_text(json.dumps(lesion_results(prepared, "train", transform)))
    result = invoke("eval", prepared, right, wrong, "--split", "train", "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert runs["right"]["warnings"] == []
    assert runs["right"]["coco"]["AP50"] == pytest.approx(1.0)
    assert runs[label]["coco"]["AP50"] < 0.2
    mine = [w for w in warnings_of(result) if w.startswith(f"Warning: run {label}: ")]
    assert any(expected in w and "another frame" in w and "[x, y, w, h]" in w for w in mine), \
        result.stderr
    assert not any("run right:" in w for w in warnings_of(result))


# -------------------------------------------- items 6c, 6d: paths and the data's identity

def test_metrics_json_stores_absolute_paths_and_the_config_hash(two_prepared, tmp_path,
                                                                monkeypatch):
    prepared = two_prepared[0]
    (tmp_path / "dets.json").write_text(json.dumps(lesion_results(prepared, "test")))
    monkeypatch.chdir(tmp_path)
    relative = Path("..") / tmp_path.name / "link"
    (tmp_path / "link").symlink_to(prepared)
    result = invoke("eval", relative, "dets.json", "--out", "cmp")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert doc["ground_truth"] == str(Prepared(prepared).coco_path("test").resolve())
    assert doc["runs"]["dets"]["detections"] == str((tmp_path / "dets.json").resolve())
    assert doc["prepared"] == {"path": str(prepared.resolve()), "split": "test",
                               "config_hash": Prepared(prepared).config_hash}
    # a COCO file of a prepared folder is recognised too; one elsewhere records no folder
    result = invoke("eval", Prepared(prepared).coco_path("test"), "dets.json", "--json")
    assert json.loads(result.stdout)["prepared"]["config_hash"] == Prepared(prepared).config_hash
    outside = tmp_path / "test.json"
    outside.write_text(Prepared(prepared).coco_path("test").read_text())
    result = invoke("eval", outside, "dets.json", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prepared"] is None


def test_report_refuses_an_eval_of_other_data(two_prepared, tmp_path):
    soft, lung = two_prepared
    assert Prepared(soft).config_hash != Prepared(lung).config_hash
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(lesion_results(soft, "test")))
    assert invoke("eval", soft, dets, "--out", tmp_path / "cmp").exit_code == 0
    result = invoke("report", "--eval", tmp_path / "cmp", "--prepared", lung,
                    "--out", tmp_path / "report")
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert message.startswith("Error: ") and "Traceback" not in result.output
    assert str(tmp_path / "cmp") in message and str(lung) in message
    assert str(soft.resolve()) in message and "holds other data" in message
    assert not (tmp_path / "report" / "index.md").exists()  # refused before writing
    result = invoke("report", "--eval", tmp_path / "cmp", "--prepared", soft, "--n-overlay", "0",
                    "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------- item 14: tiny bootstrap

def test_a_bootstrap_over_one_patient_warns(tiny, tmp_path):
    result = invoke("eval", tiny / "gt.json", tiny / "good.json", "--bootstrap", "3",
                    "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        "Warning: bootstrap over 1 patient(s): every resample holds the same images, so the 95% "
        "intervals have no width and mean nothing; evaluate a split with more patients "
        "(patients come from the COCO images' patient_index)"]
    doc = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert doc["warnings"] == [warnings_of(result)[0].removeprefix("Warning: ")]
    assert doc["runs"]["good"]["bootstrap"]["n"] == 3
