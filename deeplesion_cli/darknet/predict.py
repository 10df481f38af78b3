"""Prediction with darknet: a split's image list in, COCO results json out (for ``lesion eval``).

Commands per fork (``<x>`` = absolute paths):

================  ==========================================================================
pjreddie          ``darknet detector valid <scratch>/predict.data <cfg> <weights>`` (``valid=``
                  the split's list, ``results=<scratch>/results``, ``eval=voc``) -> per-class
                  ``comp4_det_test_<class>.txt``
AlexeyAB/hank-ai  ``darknet detector test <scratch>/predict.data <cfg> <weights> -dont_show
                  -ext_output -thresh T -out <scratch>/result.json`` with the list on stdin
================  ==========================================================================

Each darknet process runs in a scratch folder; its output is checked against the list (every
image present) before it is converted, in the prepared images' pixel frame, by
:mod:`deeplesion_cli.formats.detections`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from deeplesion_cli import atomic
from deeplesion_cli.darknet.binary import FORK_NAMES, FORKS, detect_fork, find_darknet
from deeplesion_cli.darknet.errors import (DarknetInputError, DarknetInterrupted,
                                           DarknetOptionError, DarknetRunError)
from deeplesion_cli.darknet.inputs import (SPLIT_ALIASES, data_file_problems, read_cfg, read_list,
                                           relocated_list, validate_inputs, write_data_file)
from deeplesion_cli.darknet.cfg import parse_cfg
from deeplesion_cli.darknet.process import describe_returncode, run_darknet, signal_name
from deeplesion_cli.darknet.resize import (parse_predict_size, resized_cfg_beside,
                                           resized_cfg_name, resized_cfg_text)
from deeplesion_cli.darknet.weights import weights_problems
from deeplesion_cli.formats.darknet_results import darknet_id
from deeplesion_cli.prepared import LIST_NAMES, Prepared, PreparedError
from deeplesion_cli.progress import Progress

#: pjreddie's `detector valid` loads this many images at once, unguarded (see _padded_list)
PJ_VALID_THREADS = 4


def predict_command(binary, fork: str, data_path, cfg_path, weights, thresh: float,
                    result_json) -> list[str]:
    """pjreddie: ``detector valid`` (no flags: it knows none of AlexeyAB's); AlexeyAB /
    hank-ai: ``detector test ... -dont_show -ext_output -thresh T -out result_json`` (the image
    list comes on stdin)."""
    if fork not in FORKS:
        raise DarknetOptionError(f"fork {fork!r}: expected one of {', '.join(FORKS)}")
    if fork == "pjreddie":
        return [str(binary), "detector", "valid", str(data_path), str(cfg_path), str(weights)]
    return [str(binary), "detector", "test", str(data_path), str(cfg_path), str(weights),
            "-dont_show", "-ext_output", "-thresh", repr(float(thresh)), "-out",
            str(result_json)]


def predict(prepared_dir, cfg_path, weights, split: str = "test", out_json=None, darknet=None,
            thresh: float = 0.005, show_progress: bool = True, predict_size=None) -> Path:
    """Detect on the ``split``'s image list and write COCO results json (``out_json``, default
    ``<prepared>/predictions/yolo_<split>.json``) in the prepared images' pixel frame, ready for
    ``lesion eval``. Returns the json's path.

    pjreddie: ``detector valid`` (its only machine-readable output; fixed 0.005 floor, NMS
    0.45, letterboxed) into per-class ``comp4_det_test_<class>.txt``; AlexeyAB / hank-ai:
    ``detector test -dont_show -ext_output -thresh <thresh> -out result.json`` with the list on
    stdin (NMS 0.45, 0.005 floor). Detections scoring below ``thresh`` are dropped. Each darknet
    process runs in a scratch folder, deleted on success and kept (named in the error) on
    failure. The output is checked: every listed image appears in the JSON (AB/HK), every class
    file exists (pjreddie).

    Checked before darknet starts: ``weights`` is a darknet weights file of exactly the size
    the cfg's network needs (:func:`~deeplesion_cli.darknet.weights.weights_problems`; darknet
    itself would load a cfg or text file as garbage and detect nothing), and the split's list
    is re-rooted to the prepared folder's current location
    (:func:`~deeplesion_cli.darknet.inputs.relocated_list`). SIGTERM, SIGHUP and SIGINT stop
    darknet too and raise :class:`DarknetInterrupted`.

    ``predict_size`` (N or WxH, pixels, multiples of 32; None: the cfg's own size): predict at
    that network size with the cfg resized by :mod:`~deeplesion_cli.darknet.resize` (only
    ``[net]`` width/height change, anchors as trained; checked, layer shapes included, before
    darknet starts; the same weights fit). darknet reads the resized copy from the scratch
    folder; on success it is also written beside ``out_json`` as
    ``<out stem>.<cfg stem>-<W>x<H>.cfg``, the record of what ran. A size equal to the cfg's
    own predicts with the cfg itself.
    """
    from deeplesion_cli.formats.detections import read_detections, read_names, \
        write_coco_results
    from deeplesion_cli.formats.groundtruth import EvalInputError, load_ground_truth

    binary = find_darknet(darknet)
    fork = detect_fork(binary)
    prepared_dir = Path(prepared_dir).resolve()
    split = SPLIT_ALIASES.get(split, split)
    if split not in LIST_NAMES:
        raise DarknetOptionError(f"split {split!r}: expected one of {', '.join(LIST_NAMES)}")
    cfg_path = Path(cfg_path).resolve()
    weights = Path(weights).resolve()
    if not weights.is_file():
        raise DarknetInputError([f"{weights}: weights file not found"], "weights")
    if not cfg_path.is_file():
        raise DarknetInputError([f"{cfg_path}: cfg file not found"], "cfg")
    prepared = Prepared(prepared_dir)
    list_path = prepared.list_path(split)
    names_path = prepared.names_path
    try:
        gt_path = prepared.coco_path(split)
    except PreparedError as exc:  # a manifest that cannot be read
        raise DarknetInputError([str(exc)]) from None
    out_json = (Path(out_json) if out_json is not None
                else prepared_dir / "predictions" / f"yolo_{split}.json")
    if not np.isfinite(thresh) or thresh < 0:
        raise DarknetOptionError(f"thresh {thresh!r}: expected a non-negative number")
    cfg = read_cfg(cfg_path)
    resized = resized_name = None
    if predict_size is not None and parse_predict_size(predict_size) != (cfg.width, cfg.height):
        resized = resized_cfg_text(cfg_path.read_text(encoding="utf-8", errors="replace"),
                                   predict_size, str(cfg_path))
        resized_name = resized_cfg_name(cfg_path, predict_size)
    network = parse_cfg(resized, str(cfg_path)) if resized is not None else cfg.cfg
    problems = weights_problems(weights, network, cfg_path, whole=True)
    if problems:
        raise DarknetInputError(problems, "weights")

    scratch = Path(tempfile.mkdtemp(prefix=f"lesion-darknet-predict-{split}-"))
    run_cfg = cfg_path
    try:
        if resized is not None:   # darknet reads the resized copy (module resize)
            run_cfg = scratch / resized_name
            atomic.write_text(run_cfg, resized)
        # the split's list for the prepared folder's current location (copied or moved)
        source_list, list_path = list_path, relocated_list(prepared_dir, split, scratch)
        summary = validate_inputs(prepared_dir, run_cfg, [list_path], fork=fork,
                                  check_labels=False, unique_ids=True,
                                  list_sources={str(list_path): source_list})
        gt = load_ground_truth(gt_path)
        names = read_names(names_path)
        problems = data_file_problems({"valid": list_path, "names": names_path,
                                       "results": scratch / "results"})
        if problems:
            raise DarknetInputError(problems, "predict paths")
    except EvalInputError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DarknetInputError([str(exc)]) from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    n_images = summary.images[str(list_path)]
    log_path = scratch / "darknet.log"
    data_path = scratch / "predict.data"
    data = {"classes": summary.cfg.classes, "train": list_path, "valid": list_path,
            "names": names_path}
    results = scratch / "results"
    result_json = scratch / "result.json"
    cmd = predict_command(binary, fork, data_path, run_cfg, weights, thresh, result_json)
    pad_ids: set[str] = set()
    if fork == "pjreddie":
        results.mkdir()  # darknet segfaults without it (docs/darknet.md 7)
        data.update(results=results, eval="voc")
        stdin_path = None
        if n_images < PJ_VALID_THREADS:
            data["valid"], pad_ids = _padded_list(list_path, scratch, n_images)
    else:
        stdin_path = list_path
    write_data_file(data_path, data)

    progress = Progress(n_images, f"darknet predict ({split})", unit="images",
                        enabled=show_progress)

    def on_line(line: str) -> None:
        text = line.strip()
        done = progress.done
        if fork == "pjreddie" and text.isdigit():
            done = min(int(text), n_images)       # `valid` counts images loaded so far
        elif ": Predicted in " in text:
            done = min(done + 1, n_images)
        if done > progress.done:
            progress.advance(done - progress.done)

    with progress:
        outcome = run_darknet(cmd, scratch, log_path, stdin_path=stdin_path, on_line=on_line)
    if outcome.signum is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        name = signal_name(outcome.signum)
        raise DarknetInterrupted(f"darknet prediction ({FORK_NAMES[fork]}, {split}) stopped by "
                                 f"{name}; darknet got {name} too and has exited "
                                 f"({describe_returncode(outcome.returncode)}); {out_json} was "
                                 "not written", outcome.signum)

    reasons = []
    if outcome.returncode != 0:
        reasons.append(describe_returncode(outcome.returncode))
    for problem in outcome.problems:
        reasons.append(f"{problem.kind}: {problem.message[:300]}")
        if len(reasons) > 5:
            break
    dets = None
    if not reasons:
        try:
            if fork == "pjreddie":
                missing = [n for n in names
                           if not (results / f"comp4_det_test_{n}.txt").is_file()]
                if missing:
                    reasons.append(f"`detector valid` wrote no result file for class(es) "
                                   f"{', '.join(missing)} in {results}")
                else:
                    clean = _drop_padding(results, scratch / "results-unpadded", pad_ids)
                    dets = read_detections(clean, gt, fmt="darknet-valid")
            else:
                reasons += _check_result_json(result_json, list_path)
                if not reasons:
                    dets = read_detections(result_json, gt, fmt="darknet-json", names=names)
        except EvalInputError as exc:
            reasons.append(f"darknet's output does not match the ground truth: {exc}")
    if reasons:
        raise DarknetRunError(f"darknet prediction ({FORK_NAMES[fork]}, {split})", reasons,
                              list(outcome.tail), scratch, log_path)
    if thresh > 0 and len(dets):
        dets = dets.subset(dets.score >= thresh)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_coco_results(out_json, gt, dets)
    if resized is not None:
        atomic.write_text(resized_cfg_beside(out_json, cfg_path, predict_size), resized)
    shutil.rmtree(scratch, ignore_errors=True)
    return out_json


def _padded_list(list_path: Path, scratch: Path, n_images: int) -> tuple[Path, set[str]]:
    """pjreddie's ``detector valid`` always starts loading 4 images (``nthreads = 4``, no guard
    for shorter lists) and segfaults on a list of fewer (verified: 3 images, rc 139). Give it a
    copy of the list padded with blank images whose ids are then dropped from its output."""
    from PIL import Image

    pad_dir = scratch / "pad"
    pad_dir.mkdir()
    entries, _ = read_list(list_path)
    lines = [image for _, image in entries]
    pad_ids = set()
    for k in range(PJ_VALID_THREADS - n_images):
        pad = pad_dir / f"lesion_padding_{k}.png"
        Image.new("L", (32, 32)).save(pad)
        lines.append(str(pad))
        pad_ids.add(darknet_id(pad))
    padded = scratch / "padded_list.txt"
    padded.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return padded, pad_ids


def _drop_padding(results: Path, out: Path, drop_ids: set[str]) -> Path:
    """Copy ``detector valid``'s class files into ``out`` without the lines of ``drop_ids``
    (the padding images of :func:`_padded_list`)."""
    out.mkdir()
    for file in sorted(results.iterdir()):
        if file.is_file():
            lines = [line for line in file.read_text(encoding="utf-8", errors="replace").split("\n")
                     if not (line.split() and line.split()[0] in drop_ids)]
            (out / file.name).write_text("\n".join(lines), encoding="utf-8")
    return out


def _check_result_json(result_json: Path, list_path: Path) -> list[str]:
    """Every listed image appears in darknet's -out JSON (matched by file name, never by
    frame_id: a line over 255 bytes shifts the ids, docs/darknet.md 15)."""
    if not result_json.is_file():
        return [f"darknet wrote no {result_json.name}"]
    try:
        frames = json.loads(result_json.read_bytes())
    except ValueError as exc:
        return [f"{result_json} is not valid JSON ({exc}); darknet stopped early, or a path or "
                "class name holds '\"' or '\\'"]
    if not isinstance(frames, list):
        return [f"{result_json}: not a list of frames"]
    seen = {f.get("filename") for f in frames if isinstance(f, dict)}
    entries, _ = read_list(list_path)
    missing = [image for _, image in entries if image not in seen]
    if missing:
        return [f"{len(missing)} of {len(entries)} listed images are missing from "
                f"{result_json.name} (first: {missing[0]})"]
    return []
