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
    return number / 100.0 if percent else number


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
