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


def read_anchors_px(path) -> list:
    """The ``anchors`` list of an anchors.json of ``lesion anchors`` (``[[w, h], ...]`` pixels at
    the size it was computed for)."""
    try:
        return json.loads(Path(path).read_text())["anchors"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnchorsFileError(f"cannot read anchors from {path} ({exc})") from None


def cfg_text(prepared, values: Mapping | None = None, *, max_batches: int | None = None) -> str:
    """The darknet cfg ``lesion cfg`` writes for ``prepared`` with ``values`` (the options of
    :data:`deeplesion_cli.spec.darknet.CFG`; ``max_batches`` overrides theirs). ValueError (from
    the generator) when the options cannot make a valid cfg."""
    from deeplesion_cli.anchors import parse_size
    from deeplesion_cli.darknet.generate import generate_cfg

    prepared = Prepared(prepared)
    v = _values(darknet_spec.CFG, values)
    anchors_px = read_anchors_px(v["anchors"]) if v["anchors"] else None
    return generate_cfg(
        v["arch"], classes=prepared.num_classes, size=parse_size(v["size"]),
        anchors_px=anchors_px, batch=v["batch"], subdivisions=v["subdivisions"],
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


def write_cfg(prepared, out_path, values: Mapping | None = None) -> CfgWritten:
    """Write :func:`cfg_text` to ``out_path`` atomically; the result carries the cfg's [net]
    values and the warnings of ``lesion cfg --check``."""
    from deeplesion_cli.darknet.cfg import check_cfg, parse_cfg

    text = cfg_text(prepared, values)
    out_path = Path(out_path)
    atomic.write_text(out_path, text)
    cfg = parse_cfg(text, str(out_path))
    warnings = [f"{out_path}:{p}" for p in check_cfg(cfg) if p.severity == "warning"]
    return CfgWritten(out_path, _values(darknet_spec.CFG, values)["arch"], dict(cfg.net.options),
                      Prepared(prepared).num_classes, len(cfg.of_type("yolo")), warnings)


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
    return predict(run, prepared, out_json, split=v["split"], batch_size=v["batch_size"],
                   workers=v["workers"], device=v["device"], amp=v["amp"],
                   score_thresh=v["score_thresh"], detections_per_img=v["max_dets"],
                   nms_iou=v["nms_iou"], allow_other_render=v["allow_other_render"],
                   show_progress=show_progress)


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
    """``lesion train yolo``: the real darknet, judged by lesion (weights written, rate > 0...)."""
    from deeplesion_cli.darknet.train import train

    v = _values(darknet_spec.TRAIN_YOLO, values)
    return train(prepared, cfg_path, run_dir, weights=None if resume else v["weights"],
                 darknet=v["darknet"], gpus=v["gpus"], map=v["map"], resume=resume,
                 show_progress=show_progress, clear=False if resume else v["clear"])


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
    """``lesion predict yolo``: COCO results json of darknet weights over a split."""
    from deeplesion_cli.darknet.predict import predict

    v = _values(darknet_spec.PREDICT_YOLO, values)
    return predict(prepared, cfg_path, weights, split=v["split"], out_json=out_json,
                   darknet=v["darknet"], thresh=v["thresh"], show_progress=show_progress)


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
             show_progress: bool = False) -> Evaluation:
    """``lesion eval``: read the ground truth (a COCO json, or a prepared folder's ``split``) and
    each named detections file, score them side by side, and write metrics.json, tables and
    plots into ``out_dir`` when given."""
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
    runs = {name: read_detections(path, gt, fmt=fmt, names=class_names)
            for name, path in predictions.items()}
    document = evaluate_runs(gt, runs, EvalOptions(**v), ground_truth_path=str(gt_path),
                             show_progress=show_progress,
                             prepared=prepared_record(ground_truth, gt_path))
    written = []
    if out_dir is not None:
        from deeplesion_cli.report.eval_outputs import write_eval_outputs

        written = write_eval_outputs(document, out_dir)
    return Evaluation(document, Path(gt_path), gt.n_images, len(gt.image), written)


def evaluate_words(ground_truth, predictions: Mapping[str, Path], values: Mapping | None = None,
                   cwd: Path | None = None, *, split: str = "test", out_dir=None) -> list[str]:
    words = _words(["eval"], [ground_truth], cwd) + ["--split", split]
    for name, path in predictions.items():
        words += ["--pred", f"{name}={shell_path(path, cwd)}"]
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
