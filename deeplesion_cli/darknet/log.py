"""Parse darknet's console output (pjreddie, AlexeyAB and hank-ai forks).

Two layers:

* :class:`LineSplitter` turns the raw byte stream of a darknet process (stdout and stderr merged)
  into clean logical lines: it splits at ``\\n``, ``\\r`` (progress counters) and BEL
  (AlexeyAB's terminal title ``12/20: loss=3.6 hours left=0.0\\a`` has no newline), splits at
  AlexeyAB's clear-screen ``ESC[H ESC[J``, drops hank-ai's ``ESC]2;...BEL`` title and strips
  colour codes. It never loses a partial line across chunk boundaries.
* :func:`parse_line` classifies one clean line as an :class:`Iteration`, a :class:`MapResult`,
  a :class:`Problem` (error, missing file, out of memory, bad data), a :class:`SavedWeights`, or
  ``None`` for everything else.
* :func:`parse_map_report` reads the whole report of ``detector map`` (AlexeyAB's and hank-ai's
  layouts, docs/darknet.md 6.1, 6.3) into a :class:`MapReport`: per-class AP, the counts and
  average IoU at ``conf_thresh``, the AP rule and the mAP.

Formats (docs/darknet.md 5, 6, 10; verbatim examples in tests/test_darknet_runner.py):

* AlexeyAB (``detector.c:325``): ``" %d: %f, %f avg loss, %f rate, %lf seconds, %d images,
  %f hours left"``
* pjreddie (``examples/detector.c:129``): ``"%ld: %f, %f avg, %f rate, %lf seconds, %d images"``
* hank-ai v5: ``N: loss=L, avg loss=A, last=.., best=.., mAP=.., rate=R, load 2=5.1 milliseconds,
  train=180.4 milliseconds, 12 images, time remaining=2 seconds`` (durations carry units; older
  hank-ai versions print ``rate=R, 64.424 milliseconds, 383296 images, ...``).

A run has diverged when the *average* loss is NaN or infinite (:attr:`Iteration.diverged`).
Nothing else about ``nan`` matters: pjreddie prints ``Region 16 Avg IOU: -nan, ...`` in healthy
runs whenever a layer had no object in the batch.
"""

from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass

# ----------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Iteration:
    """One training iteration line.

    ``seconds``: compute seconds of this iteration as darknet timed it (hank-ai's ``train=``
    duration converted from its unit). ``images``: images seen since the start of training
    (``iteration * batch * subdivisions * gpus``). ``seconds_left``: darknet's own estimate
    (AlexeyAB ``hours left``, hank-ai ``time remaining``; None for pjreddie, unknown, or the
    first AlexeyAB iteration, which prints -1).
    """

    iteration: int
    loss: float
    avg_loss: float
    rate: float
    seconds: float | None
    images: int
    seconds_left: float | None
    fork: str  # "alexeyab", "pjreddie" or "hankai": which format matched

    @property
    def diverged(self) -> bool:
        """True when the average loss is NaN or infinite (the run failed, docs/darknet.md 10)."""
        return not math.isfinite(self.avg_loss)


@dataclass(frozen=True)
class MapResult:
    """A mAP printed by darknet, as a fraction in [0, 1].

    ``kind``: ``"train"`` (``mean_average_precision (mAP@0.50) = 0.954631`` after an evaluation
    during ``train -map``), ``"last"`` (the ``Last accuracy mAP@0.50 = 95.46 %, best = 95.46 %``
    reminder printed with later iterations; ``best`` is set), ``"map"`` (the final line of
    ``detector map``).
    """

    map: float
    iou_threshold: float
    kind: str
    best: float | None = None


@dataclass(frozen=True)
class Problem:
    """A line that means the run failed or is about to.

    ``kind``: ``"missing-file"`` (a file darknet could not open or load), ``"out-of-memory"``,
    ``"bad-data"`` (a label darknet rejected) or ``"error"`` (anything else darknet reports as
    an error: a cfg it cannot build, an assertion, an unknown command or activation, ...).
    ``path``: the file named, when there is one.
    """

    kind: str
    message: str
    path: str | None = None


@dataclass(frozen=True)
class SavedWeights:
    """``Saving weights to <path>`` (all three forks)."""

    path: str


Event = Iteration | MapResult | Problem | SavedWeights

# -------------------------------------------------------------------------------------- splitting

_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)")   # ESC ] ... BEL: window title
_SCREEN = re.compile(r"\x1b\[[0-9;]*[HJf]")               # cursor home / clear screen
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")               # colours and other CSI sequences
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")          # what is left (bare ESC, BS, ...)
_BREAKS = re.compile(r"[\n\r\x07]")


def clean_segment(segment: str) -> list[str]:
    """Clean lines of one segment that ended at a line break (which is not included)."""
    segment = _OSC.sub("", segment)
    lines = []
    for part in _SCREEN.split(segment):
        part = _CONTROL.sub("", _CSI.sub("", part)).rstrip()
        if part.strip():
            lines.append(part)
    return lines


class LineSplitter:
    """Incremental splitter: :meth:`feed` bytes, get clean complete lines; :meth:`close` at EOF.

    Output is decoded as UTF-8 with replacement characters (darknet prints paths as bytes).
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._pending + self._decoder.decode(data)
        lines: list[str] = []
        pos = 0
        while True:
            match = _BREAKS.search(text, pos)
            if match is None:
                break
            segment = text[pos:match.start()]
            osc = segment.rfind("\x1b]")
            if match.group() == "\x07" and osc >= 0:
                # the BEL ends hank-ai's ESC]2;title, not a line: drop the title and go on
                text = text[:pos] + segment[:osc] + text[match.end():]
                continue
            lines.extend(clean_segment(segment))
            pos = match.end()
        self._pending = text[pos:]
        return lines

    def close(self) -> list[str]:
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return clean_segment(text)


def split_text(text: str) -> list[str]:
    """All clean lines of a complete console text (see :class:`LineSplitter`)."""
    splitter = LineSplitter()
    return splitter.feed(text.encode("utf-8")) + splitter.close()


# ---------------------------------------------------------------------------------------- parsing

_NUM = r"[-+]?(?:nan|inf(?:inity)?|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"

_AB = re.compile(
    rf"^\s*(\d+): ({_NUM}), ({_NUM}) avg loss, ({_NUM}) rate, ({_NUM}) seconds, (\d+) images"
    rf"(?:, ({_NUM}) hours left)?", re.I)
_PJ = re.compile(
    rf"^\s*(\d+): ({_NUM}), ({_NUM}) avg, ({_NUM}) rate, ({_NUM}) seconds, (\d+) images\s*$", re.I)
_HK = re.compile(rf"^\s*(\d+): loss=({_NUM}), avg loss=({_NUM}), (.*)$", re.I)
_HK_RATE = re.compile(rf"\brate=({_NUM})", re.I)
_HK_IMAGES = re.compile(r"(?:^|, )(\d+) images\b")
_DURATION = (rf"({_NUM}) ?(nanoseconds?|microseconds?|milliseconds?|seconds?|minutes?|hours?|"
             r"days?|weeks?)")
_HK_TRAIN = re.compile(rf"\btrain=\s*{_DURATION}", re.I)
_HK_BARE_DURATION = re.compile(rf"(?:^|, ){_DURATION}, \d+ images\b", re.I)
_HK_REMAINING = re.compile(rf"time remaining=\s*(?:{_DURATION}|unknown)", re.I)

_UNIT_SECONDS = {"nanosecond": 1e-9, "microsecond": 1e-6, "millisecond": 1e-3, "second": 1.0,
                 "minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 604800.0}

# mAP lines
_MAP_TRAIN = re.compile(rf"mean_average_precision \(mAP@({_NUM})\)\s*=\s*({_NUM})", re.I)
_MAP_FINAL = re.compile(
    rf"mean average precision \(mAP@({_NUM})\)\s*=\s*({_NUM})\s*(%?)(?:\s*,\s*or\s*({_NUM})\s*%)?",
    re.I)
_MAP_LAST = re.compile(
    rf"last accuracy mAP@({_NUM})\s*=\s*({_NUM})\s*(%?)\s*,\s*best\s*=\s*({_NUM})\s*(%?)", re.I)

_SAVING = re.compile(r"^\s*Saving weights to (.+?)\s*$")

# problems: (kind, pattern); the first match wins, so the specific ones come first
_OOM = re.compile(r"out of memory|out of CPU RAM|bad_alloc|ALLOC_FAILED|Failed to [mcr]?alloc\b|"
                  r"cannot allocate memory", re.I)
_MISSING = [
    re.compile(r"Couldn't open file:?\s*(.*?)\s*$"),
    re.compile(r"Cannot load image\s+\"?(.*?)\"?\s*$"),
    re.compile(r"Can't open label file\.?.*?:\s*(.*?)\s*$"),
    re.compile(r"failed to open (?:the )?(?:annotation )?file\s*:?\s*(.*?)\s*$", re.I),
    re.compile(r"image filename does not exist\s*:?\s*(.*?)\s*$", re.I),
    re.compile(r"There is no (.+?) file for mAP calculation"),
]
_BAD_DATA = re.compile(r"Wrong annotation|Wrong label|Failed to infer label file name", re.I)
_ERROR = re.compile(
    r"\bError\b|\berror:|Assertion .* failed|Couldn't find activation function|"
    r"Not an option|There isn't such command|Type not recognized|must output image|"
    r"Config file has no sections|First section must be|terminate called|"
    r"Segmentation fault|core dumped|signal handler invoked", re.I)
# AlexeyAB's font glyphs for `detector test` images (docs/darknet.md 8.1): harmless when absent
_HARMLESS_IMAGE = re.compile(r"^data/labels/\d+_\d+\.png$")


def _float(text: str) -> float:
    return float(text)


def _seconds(value: str, unit: str) -> float:
    unit = unit.lower().rstrip("s")
    return float(value) * _UNIT_SECONDS[unit]


def parse_duration(text: str) -> float | None:
    """hank-ai's human durations (``180.4 milliseconds``, ``3.8 seconds``, ``2.5 hours``) in
    seconds; None for ``unknown`` or anything else."""
    match = re.fullmatch(rf"\s*{_DURATION}\s*", text, re.I)
    return _seconds(match.group(1), match.group(2)) if match else None


def _iteration(line: str) -> Iteration | None:
    match = _AB.match(line)
    if match:
        it, loss, avg, rate, secs, images, hours = match.groups()
        left = _float(hours) * 3600.0 if hours is not None and _float(hours) >= 0 else None
        return Iteration(int(it), _float(loss), _float(avg), _float(rate), _float(secs),
                         int(images), left, "alexeyab")
    match = _PJ.match(line)
    if match:
        it, loss, avg, rate, secs, images = match.groups()
        return Iteration(int(it), _float(loss), _float(avg), _float(rate), _float(secs),
                         int(images), None, "pjreddie")
    match = _HK.match(line)
    if match:
        it, loss, avg, rest = match.groups()
        rate = _HK_RATE.search(rest)
        images = _HK_IMAGES.search(rest)
        if not (rate and images):
            return None
        train = _HK_TRAIN.search(rest) or _HK_BARE_DURATION.search(rest)
        secs = _seconds(train.group(1), train.group(2)) if train else None
        remaining = _HK_REMAINING.search(rest)
        left = (_seconds(remaining.group(1), remaining.group(2))
                if remaining and remaining.group(1) is not None else None)
        return Iteration(int(it), _float(loss), _float(avg), _float(rate.group(1)), secs,
                         int(images.group(1)), left, "hankai")
    return None


def _fraction(value: str, percent: str | bool) -> float:
    number = _float(value)
    return round(number / 100.0, 10) if percent else number   # 47.73 -> 0.4773, not 0.47729999


def _map(line: str) -> MapResult | None:
    match = _MAP_TRAIN.search(line)
    if match:
        return MapResult(_float(match.group(2)), _float(match.group(1)), "train")
    match = _MAP_LAST.search(line)
    if match:
        iou, value, pct, best, best_pct = match.groups()
        return MapResult(_fraction(value, pct), _float(iou), "last", _fraction(best, best_pct))
    match = _MAP_FINAL.search(line)
    if match:
        iou, value, pct, also_pct = match.groups()
        if also_pct is not None:            # AlexeyAB: "= 0.954631, or 95.46 %"
            return MapResult(_float(value), _float(iou), "map")
        return MapResult(_fraction(value, pct), _float(iou), "map")
    return None


def _problem(line: str) -> Problem | None:
    text = line.strip()
    if _OOM.search(text):
        return Problem("out-of-memory", text)
    for pattern in _MISSING:
        match = pattern.search(text)
        if match:
            path = match.group(1) or None
            if path and _HARMLESS_IMAGE.match(path):
                return None
            return Problem("missing-file", text, path)
    if _BAD_DATA.search(text):
        return Problem("bad-data", text)
    if _ERROR.search(text):
        return Problem("error", text)
    return None


def parse_line(line: str) -> Event | None:
    """Classify one clean console line (see the module docstring); None if it is none of them."""
    event = _iteration(line)
    if event is not None:
        return event
    event = _map(line)
    if event is not None:
        return event
    match = _SAVING.match(line)
    if match:
        return SavedWeights(match.group(1))
    return _problem(line)


def parse_text(text: str) -> list[Event]:
    """Every event of a complete console text, in order."""
    events = []
    for line in split_text(text):
        event = parse_line(line)
        if event is not None:
            events.append(event)
    return events


# ------------------------------------------------------------------------- `detector map` report

@dataclass(frozen=True)
class ClassAP:
    """One class line of a ``detector map`` report: AP as a fraction; ``tp``/``fp`` counted at
    the report's ``conf_thresh``; hank-ai also prints ``fn``, ``gt``, ``f1`` and ``avg_iou``
    (fractions) per class (None for AlexeyAB). ``name`` as darknet printed it (hank-ai cuts
    names over 20 characters to 19 and a ``+``)."""

    class_id: int
    name: str
    ap: float
    tp: int
    fp: int
    fn: int | None = None
    gt: int | None = None
    f1: float | None = None
    avg_iou: float | None = None


@dataclass(frozen=True)
class MapReport:
    """The report of one ``darknet detector map`` (AlexeyAB or hank-ai).

    ``map``: the mean over the cfg's classes of the per-class AP, a fraction; ``iou_threshold``:
    the IoU a detection needed (``-iou_thresh``); ``points``: the AP rule (0: area under the
    curve at each unique recall, else the number of recall points, ``-points``); ``classes``:
    one :class:`ClassAP` per class. At ``conf_thresh`` (darknet's ``-thresh``, default 0.25),
    over all classes: ``precision``, ``recall``, ``f1`` (NaN when darknet printed ``-nan``),
    ``tp``, ``fp``, ``fn`` and ``average_iou`` (a fraction: the IoU of the true positives summed
    over TP + FP detections). ``detections``/``ground_truth``: darknet's
    ``detections_count``/``unique_truth_count``. None where the report did not say.
    """

    map: float
    iou_threshold: float
    classes: tuple[ClassAP, ...]
    points: int | None = None
    conf_thresh: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    average_iou: float | None = None
    detections: int | None = None
    ground_truth: int | None = None


_MAP_COUNTS = re.compile(r"detections_count\s*=\s*(\d+)\s*,\s*unique_truth_count\s*=\s*(\d+)")
# AlexeyAB: "class_id = 0, name = obj, ap = 95.46%   \t (TP = 21, FP = 0)"
_MAP_CLASS_AB = re.compile(
    rf"^\s*class_id\s*=\s*(\d+),\s*name\s*=\s*(.*?),\s*ap\s*=\s*({_NUM})\s*%\s*"
    r"\(TP\s*=\s*(\d+),\s*FP\s*=\s*(\d+)\)", re.I)
# hank-ai: a table after "  Id Name  AP  TP  FP  FN  GT  F1  AvgIoU" (AP, F1, AvgIoU in %)
_MAP_TABLE_HK = re.compile(r"^\s*Id\s+Name\s+AP\s+TP\s+FP\s+FN\s+GT\s+F1\s+AvgIoU\s*$")
_MAP_CLASS_HK = re.compile(
    rf"^\s*(\d+)\s+(.+?)\s+({_NUM})\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(\d+)\s+({_NUM})\s+"
    rf"({_NUM})\s*$", re.I)
# "for conf_thresh = 0.25, precision = 0.88, recall = 0.91, F1-score = 0.90" (hank-ai:
# "-> for conf_thresh=0.25, precision=0.88, recall=0.91, F1 score=0.9")
_MAP_PRF = re.compile(
    rf"for conf_thresh\s*=\s*({_NUM}),\s*precision\s*=\s*({_NUM}),\s*recall\s*=\s*({_NUM}),"
    rf"\s*F1[- ]score\s*=\s*({_NUM})", re.I)
# "for conf_thresh = 0.25, TP = 21, FP = 0, FN = 2, average IoU = 80.12 %"
_MAP_COUNTS_AT = re.compile(
    rf"for conf_thresh\s*=\s*({_NUM}),\s*TP\s*=\s*(\d+),\s*FP\s*=\s*(\d+),\s*"
    rf"FN\s*=\s*(-?\d+),\s*average IoU\s*=\s*({_NUM})\s*%", re.I)
# "IoU threshold = 50 %, used Area-Under-Curve for each unique Recall" / "used 11 Recall-points"
_MAP_RULE = re.compile(rf"IoU threshold\s*=\s*({_NUM})\s*%,\s*used\s+(?:(\d+)\s+recall[- ]points"
                       r"|area-under-curve)", re.I)


def _percent(text: str) -> float:
    """A printed percentage as a fraction (``95.46`` -> ``0.9546``, not ``0.95459999``)."""
    return round(_float(text) / 100.0, 10)


def parse_map_report(lines) -> MapReport | None:
    """The last ``detector map`` report in ``lines`` (clean console lines, or a whole text
    split by :func:`split_text`), AlexeyAB's or hank-ai's layout; None when no mAP line
    (``mean average precision (mAP@X) = ...``) was printed."""
    if isinstance(lines, str):
        lines = split_text(lines)
    classes: list[ClassAP] = []
    found: dict = {}
    in_table = False
    result = None
    for line in lines:
        match = _MAP_COUNTS.search(line)
        if match:   # a new report starts
            classes, found, in_table = [], {}, False
            found.update(detections=int(match.group(1)), ground_truth=int(match.group(2)))
            continue
        match = _MAP_CLASS_AB.match(line)
        if match:
            cid, name, ap, tp, fp = match.groups()
            classes.append(ClassAP(int(cid), name, _percent(ap), int(tp), int(fp)))
            continue
        if _MAP_TABLE_HK.match(line):
            in_table = True
            continue
        match = _MAP_CLASS_HK.match(line) if in_table else None
        if match:
            cid, name, ap, tp, fp, fn, gt, f1, iou = match.groups()
            classes.append(ClassAP(int(cid), name, _percent(ap), int(tp), int(fp), int(fn),
                                   int(gt), _percent(f1), _percent(iou)))
            continue
        match = _MAP_PRF.search(line)
        if match:
            in_table = False
            thresh, precision, recall, f1 = (_float(v) for v in match.groups())
            found.update(conf_thresh=thresh, precision=precision, recall=recall, f1=f1)
            continue
        match = _MAP_COUNTS_AT.search(line)
        if match:
            in_table = False
            thresh, tp, fp, fn, iou = match.groups()
            found.update(conf_thresh=_float(thresh), tp=int(tp), fp=int(fp), fn=int(fn),
                         average_iou=_percent(iou))
            continue
        match = _MAP_RULE.search(line)
        if match:
            found["points"] = int(match.group(2)) if match.group(2) is not None else 0
            continue
        event = _map(line)
        if event is not None and event.kind == "map":
            result = MapReport(event.map, event.iou_threshold, tuple(classes), **found)
    return result
