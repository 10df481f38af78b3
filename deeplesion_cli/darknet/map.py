"""darknet's own ``detector map`` (AlexeyAB and hank-ai): the figures a study reports when it
quotes darknet, for comparison with ``lesion eval`` of the same weights.

Command (``<x>`` = absolute paths; run in a scratch folder, deleted on success, kept and named in
the error on failure)::

    darknet detector map <scratch>/map.data <cfg> <weights> -dont_show -iou_thresh X -points P

``map.data``: ``valid=`` the split's image list re-rooted to the prepared folder's current
location (:func:`~deeplesion_cli.darknet.inputs.relocated_list`, as prediction does), ``names=``
the prepared ``obj.names``. darknet reads each image's label file beside it (checked first, with
the images, by :func:`~deeplesion_cli.darknet.inputs.validate_inputs`). With ``predict_size``
the cfg is the trained one resized to that network size (:mod:`.resize`). The console report
(docs/darknet.md 6.1, 6.3) is parsed by :func:`deeplesion_cli.darknet.log.parse_map_report` into
a :class:`DarknetMap`, which :meth:`DarknetMap.to_dict` writes as json.

pjreddie's darknet has no ``detector map`` (it exits 0 without a word, docs/darknet.md 4): it is
refused with :class:`~deeplesion_cli.darknet.errors.DarknetOptionError`
(:func:`map_unsupported` says why without raising).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.darknet import log as dlog
from deeplesion_cli.darknet.binary import FORK_NAMES, detect_fork, find_darknet
from deeplesion_cli.darknet.cfg import parse_cfg
from deeplesion_cli.darknet.errors import (DarknetInputError, DarknetInterrupted,
                                           DarknetOptionError, DarknetRunError)
from deeplesion_cli.darknet.inputs import (SPLIT_ALIASES, data_file_problems, read_cfg,
                                           relocated_list, validate_inputs, write_data_file)
from deeplesion_cli.darknet.process import describe_returncode, run_darknet, signal_name
from deeplesion_cli.darknet.resize import parse_predict_size, resized_cfg_name, resized_cfg_text
from deeplesion_cli.darknet.weights import weights_problems
from deeplesion_cli.prepared import LIST_NAMES, Prepared, PreparedError

#: what :func:`map_json_path` appends to the stem of a detections file
MAP_JSON_SUFFIX = ".darknet_map.json"


def map_json_path(out_json) -> Path:
    """``<dir>/<stem>.darknet_map.json`` beside the detections file ``out_json``."""
    out_json = Path(out_json)
    return out_json.with_name(out_json.stem + MAP_JSON_SUFFIX)


def no_map_reason(binary, fork: str) -> str | None:
    """Why ``binary`` (of ``fork``) cannot run ``detector map``, or None when it can."""
    if fork != "pjreddie":
        return None
    return (f"{binary} is pjreddie darknet, which has no `detector map` (it exits 0 without "
            "output, docs/darknet.md 4): darknet's own mAP needs AlexeyAB or hank-ai darknet "
            "(--darknet PATH); `lesion eval` scores the detections whatever the fork")


def map_unsupported(darknet=None) -> str | None:
    """:func:`no_map_reason` of the darknet ``darknet`` names (default: $DARKNET, then PATH)."""
    binary = find_darknet(darknet)
    return no_map_reason(binary, detect_fork(binary))


def map_command(binary, data_path, cfg_path, weights, iou_thresh: float = 0.5,
                points: int = 0) -> list[str]:
    """``darknet detector map DATA CFG WEIGHTS -dont_show -iou_thresh X -points P``."""
    return [str(binary), "detector", "map", str(data_path), str(cfg_path), str(weights),
            "-dont_show", "-iou_thresh", repr(float(iou_thresh)), "-points", str(int(points))]


def _check_options(iou_thresh, points) -> None:
    if isinstance(iou_thresh, bool) or not isinstance(iou_thresh, (int, float)) \
            or not math.isfinite(iou_thresh) or not 0 < iou_thresh < 1:
        raise DarknetOptionError(f"iou_thresh {iou_thresh!r}: expected a number in (0, 1), "
                                 "e.g. 0.5")
    if isinstance(points, bool) or not isinstance(points, int) or points < 0 or points == 1:
        raise DarknetOptionError(f"points {points!r}: 0 (area under the precision curve at each "
                                 "unique recall) or the number of recall points, at least 2 "
                                 "(11: VOC2007, 101: COCO)")


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class DarknetMap:
    """darknet's own ``detector map`` of weights over a prepared split.

    ``map``: mean over the cfg's classes of the per-class AP (``ap_per_class``, keyed by the
    prepared ``obj.names``), fractions in [0, 1], matched at IoU > ``iou_thresh``, AP by the
    ``points`` rule (0: area under the curve at each unique recall; 11 or 101: recall points).
    At darknet's ``conf_thresh`` (0.25), over all classes: ``precision``, ``recall``, ``f1``,
    ``tp``, ``fp``, ``fn`` and ``average_iou`` (a fraction); None where darknet printed
    nothing or ``nan``. ``detections``/``ground_truth``: darknet's ``detections_count`` (at its
    fixed 0.005 floor) and ``unique_truth_count``. ``network_size``: the cfg's width x height
    (pixels) darknet ran at; ``cfg``: the cfg given (darknet read a copy resized to
    ``network_size`` when that differs from the cfg's own, :mod:`.resize`). ``seconds``:
    darknet's wall time; ``command``: what ran (its scratch paths are gone).
    """

    map: float
    iou_thresh: float
    points: int
    ap_per_class: dict[str, float]
    average_iou: float | None
    conf_thresh: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    tp: int | None
    fp: int | None
    fn: int | None
    detections: int | None
    ground_truth: int | None
    fork: str
    binary: str
    split: str
    cfg: str
    weights: str
    network_size: tuple[int, int]
    seconds: float
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A json-ready dict (NaN as null), with ``"tool": "darknet detector map"``."""
        doc = {"tool": "darknet detector map"}
        doc.update({k: _finite(v) for k, v in asdict(self).items()})
        doc["network_size"] = list(self.network_size)
        doc["ap_per_class"] = {k: _finite(v) for k, v in self.ap_per_class.items()}
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> "DarknetMap":
        values = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        values["network_size"] = tuple(values["network_size"])
        return cls(**values)

    def write(self, path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically; return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path) -> "DarknetMap":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def headline(self) -> str:
        """``mAP@0.50 0.4321 (all-point AP), average IoU 43.21 % at score >= 0.25``."""
        rule = "all-point AP" if self.points == 0 else f"{self.points}-point AP"
        text = f"mAP@{self.iou_thresh:.2f} {self.map:.4f} ({rule})"
        if self.average_iou is not None and self.conf_thresh is not None:
            text += (f", average IoU {100 * self.average_iou:.2f} % at score >= "
                     f"{self.conf_thresh:.2f}")
        return text


def darknet_map(prepared, cfg_path, weights, split: str = "test", darknet=None,
                iou_thresh: float = 0.5, points: int = 0, predict_size=None) -> DarknetMap:
    """Run darknet's own ``detector map`` of ``weights`` over the ``split`` of the prepared
    folder ``prepared`` (module docstring) and return what it printed as a
    :class:`DarknetMap`.

    ``iou_thresh``: ``-iou_thresh`` (a detection matches at IoU strictly above it);
    ``points``: ``-points`` (0: all-point AP, 11, 101); ``predict_size``: N or WxH (pixels,
    multiples of 32) to run at instead of the cfg's own size (:mod:`.resize`); ``darknet``:
    the binary (default: $DARKNET, then PATH). Checked before darknet starts: the fork has
    ``detector map`` (pjreddie: :class:`DarknetOptionError`), the options, the cfg, the weights
    fit the (resized) cfg, every listed image and its label. A darknet that fails, prints no
    mAP, or prints fewer per-class APs than the cfg has classes raises
    :class:`DarknetRunError` with its log's last lines; SIGTERM, SIGHUP and SIGINT stop it and
    raise :class:`DarknetInterrupted`.
    """
    binary = find_darknet(darknet)
    fork = detect_fork(binary)
    reason = no_map_reason(binary, fork)
    if reason:
        raise DarknetOptionError(reason)
    _check_options(iou_thresh, points)
    prepared_dir = Path(prepared).resolve()
    split = SPLIT_ALIASES.get(split, split)
    if split not in LIST_NAMES:
        raise DarknetOptionError(f"split {split!r}: expected one of {', '.join(LIST_NAMES)}")
    cfg_path, weights = Path(cfg_path).resolve(), Path(weights).resolve()
    for path, what in ((cfg_path, "cfg"), (weights, "weights")):
        if not path.is_file():
            raise DarknetInputError([f"{path}: {what} file not found"], what)
    try:
        names_path = Prepared(prepared_dir).names_path
    except PreparedError as exc:
        raise DarknetInputError([str(exc)]) from None
    cfg = read_cfg(cfg_path)
    size = (cfg.width, cfg.height)
    resized = None
    if predict_size is not None and parse_predict_size(predict_size) != size:
        size = parse_predict_size(predict_size)
        resized = resized_cfg_text(cfg_path.read_text(encoding="utf-8", errors="replace"),
                                   predict_size, str(cfg_path))
    network = parse_cfg(resized, str(cfg_path)) if resized is not None else cfg.cfg
    problems = weights_problems(weights, network, cfg_path, whole=True)
    if problems:
        raise DarknetInputError(problems, "weights")

    scratch = Path(tempfile.mkdtemp(prefix=f"lesion-darknet-map-{split}-"))
    try:
        run_cfg = cfg_path
        if resized is not None:
            run_cfg = scratch / resized_cfg_name(cfg_path, predict_size)
            atomic.write_text(run_cfg, resized)
        source_list = Prepared(prepared_dir).list_path(split)
        list_path = relocated_list(prepared_dir, split, scratch)
        summary = validate_inputs(prepared_dir, run_cfg, [list_path], fork=fork,
                                  check_labels=True, list_sources={str(list_path): source_list})
        problems = data_file_problems({"valid": list_path, "names": names_path})
        if problems:
            raise DarknetInputError(problems, "map paths")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    data_path = scratch / "map.data"
    write_data_file(data_path, {"classes": summary.cfg.classes, "train": list_path,
                                "valid": list_path, "names": names_path})
    log_path = scratch / "darknet.log"
    cmd = map_command(binary, data_path, run_cfg, weights, iou_thresh, points)
    outcome = run_darknet(cmd, scratch, log_path)
    what = f"darknet detector map ({FORK_NAMES[fork]}, {split})"
    if outcome.signum is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        name = signal_name(outcome.signum)
        raise DarknetInterrupted(f"{what} stopped by {name}; darknet got {name} too and has "
                                 f"exited ({describe_returncode(outcome.returncode)})",
                                 outcome.signum)
    lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").split("\n")
             if line and not line.startswith("$ ")]
    report = dlog.parse_map_report(lines)
    reasons = []
    if outcome.returncode != 0:
        reasons.append(describe_returncode(outcome.returncode))
    reasons += [f"{p.kind}: {p.message[:300]}" for p in outcome.problems[:5]]
    if report is None:
        reasons.append("darknet printed no `mean average precision (mAP@...)` line")
    elif len(report.classes) != summary.cfg.classes:
        reasons.append(f"darknet printed the AP of {len(report.classes)} class(es), but the cfg "
                       f"has classes={summary.cfg.classes}")
    if reasons:
        raise DarknetRunError(what, reasons, list(outcome.tail), scratch, log_path)
    names = [n.rstrip("\r") for n in names_path.read_text(encoding="utf-8").split("\n")]
    per_class = {(names[c.class_id] if c.class_id < len(names) and names[c.class_id]
                  else c.name): c.ap for c in report.classes}
    shutil.rmtree(scratch, ignore_errors=True)
    return DarknetMap(
        map=report.map, iou_thresh=float(iou_thresh), points=int(points),
        ap_per_class=per_class, average_iou=report.average_iou, conf_thresh=report.conf_thresh,
        precision=report.precision, recall=report.recall, f1=report.f1, tp=report.tp,
        fp=report.fp, fn=report.fn, detections=report.detections,
        ground_truth=report.ground_truth, fork=fork, binary=str(binary), split=split,
        cfg=str(cfg_path), weights=str(weights),
        network_size=size, seconds=outcome.seconds, command=cmd)
