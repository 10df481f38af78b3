"""The whole-command steps, written once: ``cli``, ``matrix`` and ``demo`` call these.

Each step is a library function that does what one ``lesion`` command does and returns values
(no printing), and a ``*_words`` companion that gives the exact command line doing the same, built
from the options' one declaration (:mod:`deeplesion_cli.spec`): ``lesion matrix --print`` and
``lesion demo`` show those lines, so what is shown is what runs.

==============  ============================================  ======================
step            does                                          command
==============  ============================================  ======================
write_cfg       darknet cfg for a prepared folder             ``lesion cfg``
train_frcnn     Faster R-CNN training (curves.png per epoch)  ``lesion train frcnn``
predict_frcnn   COCO results json of a run                    ``lesion predict frcnn``
train_yolo      darknet training                              ``lesion train yolo``
predict_yolo    COCO results json of darknet weights          ``lesion predict yolo``
evaluate        metrics.json, tables and plots                ``lesion eval``
report          figures and tables of runs and evaluations    ``lesion report``
predict_run     a run folder's detections, cached in it       ``lesion eval --run``
score_test      a run's test metrics into ``<run>/test/``     ``train ... --test``
==============  ============================================  ======================

Heavy modules (torch, numpy, matplotlib) are imported inside the functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from deeplesion_cli import atomic
from deeplesion_cli.lock import locks, rank_zero
from deeplesion_cli.errors import LesionInputError
from deeplesion_cli.prepared import Prepared
from deeplesion_cli.spec import darknet as darknet_spec
from deeplesion_cli.spec import evaluation as eval_spec
from deeplesion_cli.spec import frcnn as frcnn_spec
from deeplesion_cli.spec.core import shell_path


def _values(spec, given: Mapping | None) -> dict:
    """``given`` over the spec's defaults."""
    values = spec.defaults()
    values.update({k: v for k, v in (given or {}).items()})
    return values


def _words(command: Sequence[str], positional: Sequence, cwd: Path | None) -> list[str]:
    return ["lesion", *command, *(shell_path(p, cwd) for p in positional)]


# ------------------------------------------------------------------------------------- cfg

class AnchorsFileError(LesionInputError):
    """An anchors.json that cannot be read."""


def read_anchors_px(path, size):
    """The anchors of an anchors.json of ``lesion anchors`` fitted to the network ``size`` (w, h):
    :class:`deeplesion_cli.anchors.SizedAnchors` (pixels rescaled from the json's
    ``network_size``, with a note saying so)."""
    from deeplesion_cli.anchors import AnchorsInputError, anchors_for_size

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AnchorsFileError(f"cannot read anchors from {path} ({exc})") from None
    try:
        return anchors_for_size(doc, size, str(path))
    except AnchorsInputError as exc:
        raise AnchorsFileError(str(exc)) from None


def cfg_text(prepared, values: Mapping | None = None, *, max_batches: int | None = None) -> str:
    """The darknet cfg ``lesion cfg`` writes for ``prepared`` with ``values`` (the options of
    :data:`deeplesion_cli.spec.darknet.CFG`; ``max_batches`` overrides theirs). ValueError (from
    the generator) when the options cannot make a valid cfg."""
    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.generate import generate_cfg

    prepared = Prepared(prepared)
    v = _values(darknet_spec.CFG, values)
    size = parse_size(v["size"])
    anchors = read_anchors_px(v["anchors"], size) if v["anchors"] else None
    return generate_cfg(
        v["arch"], classes=prepared.num_classes, size=size,
        anchors_px=anchors.anchors_px if anchors else None, batch=v["batch"],
        subdivisions=v["subdivisions"],
        max_batches=max_batches if max_batches is not None else v["max_batches"],
        burn_in=v["burn_in"], n_train_images=prepared.counts["train"]["images"],
        small_objects=v["small_objects"], mosaic=v["mosaic"], flip=v["flip"],
        learning_rate=v["lr"])


@dataclass
class CfgWritten:
    path: Path
    arch: str
    net: dict                      # [net] options of the written cfg (strings)
    classes: int
    yolo_layers: int
    warnings: list[str] = field(default_factory=list)
    anchors_note: str | None = None   # where the anchors came from (rescaled to --size?)


def write_cfg(prepared, out_path, values: Mapping | None = None) -> CfgWritten:
    """Write :func:`cfg_text` to ``out_path`` atomically; the result carries the cfg's [net]
    values, the warnings of ``lesion cfg --check`` and, with ``anchors``, how anchors.json was
    fitted to ``size`` (rescaled from its ``network_size``; a json without one: a warning)."""
    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.cfg import check_cfg, parse_cfg

    v = _values(darknet_spec.CFG, values)
    anchors = read_anchors_px(v["anchors"], parse_size(v["size"])) if v["anchors"] else None
    text = cfg_text(prepared, values)
    out_path = Path(out_path)
    atomic.write_text(out_path, text)
    cfg = parse_cfg(text, str(out_path))
    warnings = [f"{out_path}:{p}" for p in check_cfg(cfg) if p.severity == "warning"]
    return CfgWritten(out_path, v["arch"], dict(cfg.net.options),
                      Prepared(prepared).num_classes, len(cfg.of_type("yolo")),
                      (anchors.warnings if anchors else []) + warnings,
                      anchors.note if anchors else None)


def cfg_words(prepared, out_path, values: Mapping | None = None, cwd: Path | None = None, *,
              changed_only: bool = False) -> list[str]:
    """``lesion cfg PREPARED [options] -o OUT`` (``changed_only``: only options off their
    default)."""
    return (_words(["cfg"], [prepared], cwd)
            + darknet_spec.CFG.words(dict(values or {}), cwd, changed_only=changed_only)
            + ["-o", shell_path(out_path, cwd)])


# ----------------------------------------------------------------------------- Faster R-CNN

def _draw_curves(event) -> None:
    """Redraw the run's curves.png from metrics.csv after each epoch (the report draws; the
    engine only announces the epoch). A figure must never stop a training run: a failure is a
    train.log warning."""
    from deeplesion_cli import runlog
    from deeplesion_cli.report.plots import training_curves

    png = event.run_dir / "curves.png"
    try:
        training_curves(runlog.read_metrics(event.metrics_path), png, title=event.options.arch)
    except Exception as exc:  # noqa: BLE001 - drawing is best effort
        event.log(f"warning: could not draw {png.name}: {exc}")


@locks("run_dir", "lesion train frcnn", when=rank_zero)
def train_frcnn(prepared, run_dir, options=None, *, resume: bool = False,
                overrides: dict | None = None, stop_after: int | None = None,
                show_progress: bool = True, curves: bool = True):
    """``lesion train frcnn``: :func:`deeplesion_cli.frcnn.engine.train`, drawing curves.png
    after every epoch (``curves``)."""
    from deeplesion_cli.frcnn import engine

    return engine.train(prepared, run_dir, options, resume=resume, overrides=overrides,
                        stop_after=stop_after, show_progress=show_progress,
                        on_epoch=_draw_curves if curves else None)


def resume_overrides(options) -> dict:
    """The options a resumed run may take again (``--epochs``, ``--workers``, ``--device``...)."""
    from deeplesion_cli.frcnn.options import RESUMABLE_OVERRIDES

    return {name: getattr(options, name) for name in sorted(RESUMABLE_OVERRIDES)}


def train_frcnn_words(prepared, run_dir, options, cwd: Path | None = None, *,
                      resume: bool = False, changed_only: bool = False) -> list[str]:
    """``lesion train frcnn PREPARED --out RUN [options]`` (``resume``: ``--resume`` and only the
    options a resumed run may change; ``changed_only``: only options off their default)."""
    import dataclasses

    spec = frcnn_spec.TRAIN_FRCNN
    values = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    words = _words(["train", "frcnn"], [prepared], cwd) + ["--out", shell_path(run_dir, cwd)]
    if resume:
        words.append("--resume")
    only = sorted(spec.resumable) if resume else None
    return words + spec.words(values, cwd, changed_only=changed_only, only=only)


def predict_frcnn(run, prepared, out_json, values: Mapping | None = None, *,
                  show_progress: bool = True):
    """``lesion predict frcnn``: COCO results json of a run's best (else last) checkpoint."""
    from deeplesion_cli.frcnn.predict import predict

    v = _values(frcnn_spec.PREDICT_FRCNN, values)
    result = predict(run, prepared, out_json, split=v["split"], batch_size=v["batch_size"],
                     workers=v["workers"], device=v["device"], amp=v["amp"],
                     score_thresh=v["score_thresh"], detections_per_img=v["max_dets"],
                     nms_iou=v["nms_iou"], allow_other_render=v["allow_other_render"],
                     show_progress=show_progress)
    if v["draw"]:   # --draw N: pictures beside the detections (backends may not draw)
        from deeplesion_cli.report.overlays import draw_predictions

        draw_predictions(prepared, v["split"], result.out_json, v["draw"])
    return result


def predict_frcnn_words(run, prepared, out_json, values: Mapping | None = None,
                        cwd: Path | None = None) -> list[str]:
    v = dict(values or {})
    split = v.pop("split", frcnn_spec.PREDICT_FRCNN["split"].default)
    return (_words(["predict", "frcnn"], [run, prepared], cwd)
            + ["--split", split, "-o", shell_path(out_json, cwd)]
            + frcnn_spec.PREDICT_FRCNN.words(v, cwd))


# ----------------------------------------------------------------------------------- darknet

@locks("run_dir", "lesion train yolo")
def train_yolo(prepared, cfg_path, run_dir, values: Mapping | None = None, *,
               resume: bool = False, show_progress: bool = True):
    """``lesion train yolo``: the real darknet, judged by lesion (weights written, rate > 0...),
    then ``<run>/curves.png`` drawn from metrics.csv: every session of the run (darknet's own
    chart.png restarts when a run resumes), also after a failed or stopped run."""
    from deeplesion_cli.darknet.train import train

    v = _values(darknet_spec.TRAIN_YOLO, values)
    try:
        result = train(prepared, cfg_path, run_dir, weights=None if resume else v["weights"],
                       darknet=v["darknet"], gpus=v["gpus"], map=v["map"], resume=resume,
                       show_progress=show_progress, clear=False if resume else v["clear"],
                       map_epochs=v["map_epochs"], iou_thresh=v["iou_thresh"],
                       chart=v["chart"], save_every=v["save_every"])
    except Exception:
        _draw_yolo_curves(Path(run_dir), [])  # what the run logged before it failed
        raise
    _draw_yolo_curves(Path(run_dir), result.warnings)
    return result


def _draw_yolo_curves(run_dir: Path, warnings: list) -> Path | None:
    """``<run>/curves.png`` from all of metrics.csv (best effort: a failure is a warning)."""
    from deeplesion_cli import runlog

    metrics = run_dir / "metrics.csv"
    png = run_dir / "curves.png"
    try:
        rows = runlog.read_metrics(metrics) if metrics.is_file() else []
        if not rows:
            return None
        from deeplesion_cli.report.plots import DARKNET_CURVES, training_curves

        training_curves(rows, png, title=run_dir.name, **DARKNET_CURVES)
    except Exception as exc:  # noqa: BLE001 - drawing is best effort
        warnings.append(f"could not draw {png}: {exc}")
        return None
    return png


def train_yolo_words(prepared, cfg_path, run_dir, values: Mapping | None = None,
                     cwd: Path | None = None, *, resume: bool = False) -> list[str]:
    v = dict(values or {})
    if resume:
        v.pop("weights", None)
        v.pop("clear", None)
    words = (_words(["train", "yolo"], [prepared], cwd)
             + ["--cfg", shell_path(cfg_path, cwd), "--out", shell_path(run_dir, cwd)]
             + darknet_spec.TRAIN_YOLO.words(v, cwd))
    return words + (["--resume"] if resume else [])


def final_weights(run_dir, cfg_path) -> Path:
    """darknet's last weights of a run: ``<run>/backup/<cfg stem>_final.weights``."""
    return Path(run_dir) / "backup" / f"{Path(cfg_path).stem}_final.weights"


def predict_yolo(prepared, cfg_path, weights, out_json, values: Mapping | None = None, *,
                 show_progress: bool = True) -> Path:
    """``lesion predict yolo``: COCO results json of darknet weights over a split (at
    ``predict_size`` when given). With ``darknet_map``, darknet's own ``detector map`` of the
    same split at the same size is written to ``<out stem>.darknet_map.json`` beside it
    (:func:`deeplesion_cli.darknet.map.darknet_map`); a fork without it (pjreddie) is refused
    before anything is predicted."""
    from deeplesion_cli.darknet.predict import predict

    v = _values(darknet_spec.PREDICT_YOLO, values)
    if v["darknet_map"]:
        from deeplesion_cli.darknet.errors import DarknetOptionError
        from deeplesion_cli.darknet.map import map_unsupported

        reason = map_unsupported(v["darknet"])
        if reason:
            raise DarknetOptionError(f"--darknet-map: {reason}")
    path = predict(prepared, cfg_path, weights, split=v["split"], out_json=out_json,
                   darknet=v["darknet"], thresh=v["thresh"], show_progress=show_progress,
                   predict_size=v["predict_size"])
    if v["draw"]:   # --draw N: pictures beside the detections (backends may not draw)
        from deeplesion_cli.report.overlays import draw_predictions

        draw_predictions(prepared, v["split"], path, v["draw"])
    if v["darknet_map"]:
        from deeplesion_cli.darknet.map import darknet_map, map_json_path

        darknet_map(prepared, cfg_path, weights, split=v["split"], darknet=v["darknet"],
                    iou_thresh=0.5 if v["map_iou"] is None else v["map_iou"],
                    predict_size=v["predict_size"]).write(map_json_path(path))
    return path


def predict_yolo_words(prepared, cfg_path, weights, out_json, values: Mapping | None = None,
                       cwd: Path | None = None) -> list[str]:
    v = _values(darknet_spec.PREDICT_YOLO, values)
    return (_words(["predict", "yolo"], [prepared], cwd)
            + ["--cfg", shell_path(cfg_path, cwd), "--weights", shell_path(weights, cwd),
               "--split", v.pop("split"), "-o", shell_path(out_json, cwd)]
            + darknet_spec.PREDICT_YOLO.words(v, cwd))


# -------------------------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    document: dict                 # metrics.json
    ground_truth_path: Path
    n_images: int
    n_boxes: int
    written: list[Path] = field(default_factory=list)


@locks("out_dir", "lesion eval")
def evaluate(ground_truth, predictions: Mapping[str, Path], values: Mapping | None = None, *,
             split: str = "test", pred_format: str = "auto", names=None, out_dir=None,
             show_progress: bool = False, class_base: int | None = None) -> Evaluation:
    """``lesion eval``: read the ground truth (a COCO json, or a prepared folder's ``split``) and
    each named detections file, score them side by side, and write metrics.json, tables and
    plots into ``out_dir`` when given. ``class_base`` (0, 1 or None: detected) is the class-id
    base of Ultralytics files; how a file was read (``Detections.reading``) joins its run's
    metrics.json block."""
    from deeplesion_cli.evaluation.evaluate import EvalOptions, evaluate_runs
    from deeplesion_cli.evaluation.outputs import prepared_record, resolve_ground_truth
    from deeplesion_cli.formats.detections import read_detections, read_names
    from deeplesion_cli.formats.groundtruth import load_ground_truth

    v = _values(eval_spec.EVAL, values)
    gt_path, default_names = resolve_ground_truth(ground_truth, split)
    gt = load_ground_truth(gt_path)
    names_path = names or default_names
    class_names = read_names(names_path) if names_path else None
    fmt = None if pred_format == "auto" else pred_format
    runs = {name: read_detections(path, gt, fmt=fmt, names=class_names, class_base=class_base)
            for name, path in predictions.items()}
    document = evaluate_runs(gt, runs, EvalOptions(**v), ground_truth_path=str(gt_path),
                             show_progress=show_progress,
                             prepared=prepared_record(ground_truth, gt_path))
    for name, dets in runs.items():
        document["runs"][name].update(dets.reading)
    written = []
    if out_dir is not None:
        from deeplesion_cli.report.eval_outputs import write_eval_outputs

        written = write_eval_outputs(document, out_dir)
    return Evaluation(document, Path(gt_path), gt.n_images, len(gt.image), written)


def evaluate_words(ground_truth, predictions: Mapping[str, Path], values: Mapping | None = None,
                   cwd: Path | None = None, *, split: str = "test", out_dir=None,
                   runs: Mapping[str, Path] | None = None,
                   checkpoint: str = "best") -> list[str]:
    """``lesion eval GT --split S --pred NAME=FILE... [--run NAME=RUN... --checkpoint C]
    [options] [--out DIR]``."""
    words = _words(["eval"], [ground_truth], cwd) + ["--split", split]
    for name, path in predictions.items():
        words += ["--pred", f"{name}={shell_path(path, cwd)}"]
    for name, path in (runs or {}).items():
        words += ["--run", f"{name}={shell_path(path, cwd)}"]
    if runs and checkpoint != "best":
        words += ["--checkpoint", checkpoint]
    words += eval_spec.EVAL.words(_values(eval_spec.EVAL, values), cwd)
    return words + (["--out", shell_path(out_dir, cwd)] if out_dir is not None else [])


# ------------------------------------------------------------------------------------ report

@locks("out_dir", "lesion report")
def report(runs: Sequence[Path], evals: Sequence[Path], prepared, out_dir,
           values: Mapping | None = None):
    """``lesion report``: figures and tables of runs, evaluations and the prepared data."""
    from deeplesion_cli.report.build import build_report

    v = _values(eval_spec.REPORT, values)
    return build_report(list(runs), list(evals), prepared, out_dir, pdf=v["pdf"],
                        images=list(v["images"]), n_overlay=v["n_overlay"])


def report_words(runs: Sequence[Path], evals: Sequence[Path], prepared, out_dir,
                 values: Mapping | None = None, cwd: Path | None = None) -> list[str]:
    words = _words(["report"], runs, cwd)
    for folder in evals:
        words += ["--eval", shell_path(folder, cwd)]
    if prepared is not None:
        words += ["--prepared", shell_path(prepared, cwd)]
    words += ["--out", shell_path(out_dir, cwd)]
    return words + eval_spec.REPORT.words(dict(values or {}), cwd, changed_only=True)


# ------------------------------------------------------------------------------- run folders

def _predict_values(spec, values: Mapping | None, split: str) -> dict:
    chosen = {k: v for k, v in (values or {}).items() if k in spec}
    return {**_values(spec, chosen), "split": split}


def predict_run(run_dir, prepared, *, split: str = "test", checkpoint="best",
                values: Mapping | None = None, show_progress: bool = True):
    """Detections of run folder ``run_dir`` over ``prepared``'s ``split``, from the checkpoint
    ``checkpoint`` (best|last) means (:func:`deeplesion_cli.runs.pick_checkpoint`), or from
    ``checkpoint`` itself when it is a :class:`deeplesion_cli.runs.RunCheckpoint` (one of
    :func:`deeplesion_cli.runs.list_checkpoints`; ``run_dir`` is then not read), cached in
    ``<run>/detections/`` (:func:`deeplesion_cli.runs.cache_path`): a second call with the same
    inputs predicts nothing; a new cache file replaces the older ones of that split and
    checkpoint. ``values``: prediction options of either backend (``device``, ``workers``,
    ``score_thresh``, ``thresh``, ``darknet``...; those of the other backend are ignored).
    Holds the run folder's lock while it predicts (a run still training is refused). Returns
    a :class:`deeplesion_cli.runs.RunDetections`."""
    from deeplesion_cli import runs
    from deeplesion_cli.lock import folder_lock

    if isinstance(checkpoint, runs.RunCheckpoint):
        chosen = checkpoint
    else:
        chosen = runs.pick_checkpoint(run_dir, checkpoint)
    if chosen.backend == "frcnn":
        v = _predict_values(frcnn_spec.PREDICT_FRCNN, values, split)
    else:
        v = _predict_values(darknet_spec.PREDICT_YOLO, values, split)
        if v["darknet"] is None and chosen.darknet and Path(chosen.darknet).is_file():
            v["darknet"] = chosen.darknet   # the binary the run trained with
    with folder_lock(chosen.run_dir, "lesion eval --run"):
        path = runs.cache_path(chosen, prepared, split, v)
        if path.is_file():
            try:
                n = len(json.loads(path.read_text()))
            except (OSError, ValueError):  # a damaged cache file is predicted again
                path.unlink(missing_ok=True)
            else:
                return runs.RunDetections(chosen, path, split, True, n)
        if chosen.backend == "frcnn":
            result = predict_frcnn(chosen.checkpoint, prepared, path, v,
                                   show_progress=show_progress)
            found = runs.RunDetections(chosen, path, split, False, result.n_detections,
                                       result.epoch, result.seconds, list(result.warnings))
        else:
            import time

            start = time.monotonic()
            predict_yolo(prepared, chosen.cfg, chosen.checkpoint, path, v,
                         show_progress=show_progress)
            n = len(json.loads(path.read_text()))
            found = runs.RunDetections(chosen, path, split, False, n,
                                       seconds=time.monotonic() - start)
        for old in runs.stale_caches(path):
            old.unlink(missing_ok=True)
        return found


@dataclass
class RunTest:
    """``train ... --test``: the test split scored from the run's own checkpoint."""

    name: str
    detections: object             # deeplesion_cli.runs.RunDetections
    evaluation: Evaluation
    out_dir: Path                  # <run>/test: the `lesion eval --out` folder

    @property
    def headline(self) -> str:
        from deeplesion_cli.runs import headline

        return headline(self.evaluation.document["runs"][self.name])


def score_test(run_dir, prepared, *, name: str | None = None, checkpoint: str = "best",
               values: Mapping | None = None, eval_values: Mapping | None = None,
               show_progress: bool = True) -> RunTest:
    """Predict the test split from ``run_dir``'s best (else last) checkpoint into its cache
    (:func:`predict_run`) and score it as ``lesion eval --out <run>/test`` does (metrics.json,
    summary.md, plots), the run named ``name`` (default: the run folder's name)."""
    run_dir = Path(run_dir)
    name = name or run_dir.resolve().name
    found = predict_run(run_dir, prepared, split="test", checkpoint=checkpoint, values=values,
                        show_progress=show_progress)
    out_dir = run_dir / "test"
    evaluation = evaluate(prepared, {name: found.path}, eval_values, split="test",
                          out_dir=out_dir)
    return RunTest(name, found, evaluation, out_dir)


def score_test_words(run_dir, prepared, *, name: str | None = None,
                     checkpoint: str = "best", cwd: Path | None = None) -> list[str]:
    """The ``lesion eval`` line that does what :func:`score_test` does."""
    name = name or Path(run_dir).resolve().name
    return evaluate_words(prepared, {}, None, cwd, split="test", out_dir=Path(run_dir) / "test",
                          runs={name: Path(run_dir)}, checkpoint=checkpoint)
