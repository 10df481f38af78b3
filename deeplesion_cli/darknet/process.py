"""darknet as a child process: its environment, its console captured into ``darknet.log`` and
parsed into events, its exit status in words, and stopping it cleanly.

darknet's exit code cannot be trusted (docs/darknet.md 10: pjreddie exits 0 on a missing cfg,
weights file or backup folder; AlexeyAB finishes "successfully" after skipping missing images;
hank-ai ignores a weights path that does not exist), so a run is judged from what this module
records (:class:`RunOutcome`: iterations, mAP lines, error lines, saved weights), not from its
exit code alone (:mod:`.train`'s ``judge_training``). Every darknet process runs in its own
working directory (darknet drops ``bad.list``, ``predictions.jpg``, ``chart.png`` ... into its
CWD, docs/darknet.md 11) with ``OMP_WAIT_POLICY=passive`` (OpenMP spinning slows a shared CPU
2-5x, docs/darknet.md 1). It runs in a session of its own, so ``lesion`` passes SIGTERM, SIGHUP
and SIGINT on to it and waits for it: no darknet outlives the ``lesion`` that started it
(docs/darknet.md 16).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from deeplesion_cli.darknet import log as dlog

#: lines of darknet.log quoted in a DarknetRunError
LOG_TAIL_LINES = 20
#: signals to ``lesion`` that are passed on to a running darknet (docs/darknet.md 16)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: seconds darknet has to exit after a forwarded signal or a stop, before it is killed
STOP_GRACE_S = 10


def child_env() -> dict[str, str]:
    """The environment of a darknet child: ours, plus passive OpenMP waiting and one OpenMP
    thread per core this process may use (unless already set)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(cores))
    return env


def _line_buffered(cmd: list[str]) -> list[str]:
    """Make darknet's stdout line-buffered (it is a pipe here) when coreutils' stdbuf exists,
    so progress arrives per iteration and stdout/stderr interleave in order."""
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", "-eL", *cmd] if stdbuf else cmd


@dataclass
class RunOutcome:
    """What one darknet process did: exit code, log, and the parsed events."""

    returncode: int
    log_path: Path
    lines: int = 0
    tail: deque = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    iterations: list = field(default_factory=list)      # dlog.Iteration
    maps: list = field(default_factory=list)            # dlog.MapResult
    problems: list = field(default_factory=list)        # dlog.Problem
    saved: list = field(default_factory=list)           # dlog.SavedWeights
    warnings: list = field(default_factory=list)        # "Unused field" and the like
    seconds: float = 0.0
    signum: int | None = None      # SIGTERM/SIGHUP/SIGINT lesion got and passed on to darknet
    stopped: str | None = None     # why lesion stopped darknet (stop_on), e.g. a NaN loss

    @property
    def last_iteration(self):
        return self.iterations[-1] if self.iterations else None

    def record(self, line: str):
        """Parse one clean log line into the matching list; return the event (or None)."""
        event = dlog.parse_line(line)
        if event is None:
            if "Unused field" in line and len(self.warnings) < 100:
                self.warnings.append(line.strip())
            return None
        bucket = {dlog.Iteration: self.iterations, dlog.MapResult: self.maps,
                  dlog.Problem: self.problems, dlog.SavedWeights: self.saved}.get(type(event))
        if bucket is not None:
            bucket.append(event)
        return event


def describe_returncode(rc: int) -> str:
    """Popen's return code in words (a signal is negative; a shell would show 128 + signal)."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        meaning = {signal.SIGABRT: ": a failed assertion or fatal error",
                   signal.SIGSEGV: ": segmentation fault",
                   signal.SIGKILL: ": the system may have run out of memory"}.get(-rc, "")
        return f"darknet was killed by {name} (exit status {128 - rc}{meaning})"
    extra = {134: " (abort: a failed assertion or fatal error)",
             139: " (segmentation fault)"}.get(rc, "")
    return f"darknet exited with code {rc}{extra}"


def run_darknet(cmd: list[str], cwd: Path, log_path: Path, stdin_path: Path | None = None,
                on_event=None, on_line=None, append_log: bool = False,
                stop_on=None) -> RunOutcome:
    """Run ``cmd`` in ``cwd`` (stdout and stderr merged), writing clean lines to ``log_path``
    and calling ``on_event(event)`` for each parsed :mod:`~deeplesion_cli.darknet.log` event.

    The child runs in its own session (so a terminal's Ctrl-C does not reach it directly).
    While it runs, SIGTERM, SIGHUP and SIGINT sent to this process are passed on to the child's
    process group (:data:`FORWARDED_SIGNALS`), the child is waited for (killed after
    :data:`STOP_GRACE_S` seconds), a ``lesion:`` line saying so ends ``darknet.log`` and the
    outcome's ``signum`` is set: the caller raises
    :class:`~deeplesion_cli.darknet.errors.DarknetInterrupted` (exit code 128 + signal). The
    previous handlers are restored afterwards. ``stop_on(event)``: a reason to stop darknet now
    (e.g. a NaN average loss), or None; the child is then terminated the same way and the
    reason kept in ``outcome.stopped``. On any exception here the child is terminated, then
    killed, before the exception propagates.
    """
    outcome = RunOutcome(returncode=0, log_path=log_path)
    start = time.monotonic()
    stdin = open(stdin_path, "rb") if stdin_path is not None else subprocess.DEVNULL
    log = open(log_path, "a" if append_log else "w", encoding="utf-8")
    try:
        log.write("$ " + " ".join(_quote(c) for c in cmd) + "\n")
        log.flush()
        with _Forwarder() as forwarder:
            proc = subprocess.Popen(_line_buffered(cmd), cwd=cwd, stdin=stdin,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=child_env(), start_new_session=True)
            try:
                forwarder.attach(proc)
                _pump(proc, outcome, log, forwarder, on_event, on_line, stop_on)
                outcome.returncode = _wait(proc, forwarder)
            except BaseException:
                _stop(proc)
                raise
            finally:
                proc.stdout.close()
            outcome.signum = forwarder.signum
        note = _outcome_note(outcome)
        if note:
            log.write(note + "\n")
    finally:
        log.close()
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    outcome.seconds = time.monotonic() - start
    return outcome


def _pump(proc, outcome: RunOutcome, log, forwarder: "_Forwarder", on_event, on_line,
          stop_on) -> None:
    """Read the child's output to its end, stopping the child when ``stop_on`` says so and
    killing it when it outlives its grace period after a stop or a forwarded signal."""
    splitter = dlog.LineSplitter()
    fd = proc.stdout.fileno()
    while True:
        forwarder.check_deadline()
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        lines = splitter.feed(chunk) if chunk else splitter.close()
        for line in lines:
            event = _handle_line(line, outcome, log, on_event, on_line)
            if (event is not None and stop_on is not None and outcome.stopped is None
                    and forwarder.signum is None):
                reason = stop_on(event)
                if reason:
                    outcome.stopped = reason
                    forwarder.stop(signal.SIGTERM)
        if lines:
            log.flush()
        if not chunk:
            break


def _wait(proc: subprocess.Popen, forwarder: "_Forwarder") -> int:
    """The child's exit status, killing it if it outlives its grace period after a stop."""
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            forwarder.check_deadline()


def _outcome_note(outcome: RunOutcome) -> str | None:
    """The ``lesion:`` line that ends darknet.log when lesion stopped darknet."""
    last = outcome.last_iteration
    where = f"after iteration {last.iteration}" if last is not None else "before any iteration"
    if outcome.signum is not None:
        return (f"lesion: got {signal_name(outcome.signum)} {where} and passed it on to "
                f"darknet: {describe_returncode(outcome.returncode)}")
    if outcome.stopped is not None:
        return (f"lesion: stopped darknet {where} ({outcome.stopped}): "
                f"{describe_returncode(outcome.returncode)}")
    return None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Forwarder:
    """While darknet runs: the handlers of :data:`FORWARDED_SIGNALS` pass each signal on to
    darknet's process group and remember the first; the child gets :data:`STOP_GRACE_S` seconds
    to exit before it is killed. Handlers are installed only in the main thread (Python allows
    no other) and restored on exit."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.signum: int | None = None
        self.deadline: float | None = None
        self.previous: dict = {}

    def __enter__(self) -> "_Forwarder":
        if threading.current_thread() is threading.main_thread():
            for signum in FORWARDED_SIGNALS:
                try:
                    self.previous[signum] = signal.signal(signum, self._handle)
                except (OSError, ValueError):  # pragma: no cover - not settable here
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def attach(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        if self.signum is not None:  # it came while the child was starting
            self.stop(self.signum)

    def _handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.stop(signum)

    def stop(self, signum: int) -> None:
        """Send ``signum`` to the child's process group and start its grace period."""
        if self.deadline is None:
            self.deadline = time.monotonic() + STOP_GRACE_S
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc, signum)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            if self.proc is not None and self.proc.poll() is None:
                _signal_group(self.proc, signal.SIGKILL)
            self.deadline = None


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:  # pragma: no cover - already gone
            pass


def outcome_from_log(log_path, returncode: int = 0) -> RunOutcome:
    """Re-parse a ``darknet.log`` (as :func:`run_darknet` wrote it) into a :class:`RunOutcome`,
    e.g. to judge a finished run again with :func:`~deeplesion_cli.darknet.train.judge_training`."""
    log_path = Path(log_path)
    outcome = RunOutcome(returncode=returncode, log_path=log_path)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    for line in text.split("\n"):
        if not line or line.startswith("$ "):
            continue
        outcome.lines += 1
        outcome.tail.append(line)
        outcome.record(line)
    return outcome


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def _handle_line(line: str, outcome: RunOutcome, log, on_event, on_line):
    log.write(line + "\n")
    outcome.lines += 1
    outcome.tail.append(line)
    if on_line is not None:
        on_line(line)
    event = outcome.record(line)
    if event is not None and on_event is not None:
        on_event(event)
    return event
