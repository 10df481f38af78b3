"""Stopping ``lesion train frcnn`` cleanly on SIGTERM, SIGHUP or SIGINT (a scheduler's time
limit, a closed terminal, Ctrl-C).

While :func:`deeplesion_cli.frcnn.engine.train` runs, :func:`stop_on_signals` replaces the three
signals' handlers by one that only records the signal (:class:`StopRequest`); the previous
handlers come back when training returns or fails. The loop looks at the request at every step
boundary, between evaluation batches and after each epoch is saved: a run resumes only from the
end of an epoch (``last.pt``), so a stop inside an epoch abandons that epoch and ``last.pt`` keeps
the last completed one, while a stop after an epoch's checkpoint keeps that epoch. The engine then
logs the epoch reached (train.log and stderr) and raises :class:`Interrupted`, whose exit code is
128 + the signal's number (143 for SIGTERM), as a shell reports a process killed by it; ``--resume``
continues. A second signal stops at once (an atomic save in progress keeps the previous file).

Under torchrun every rank checks the request together with the others at each step
(:meth:`StopRequest.agreed`: a sum over the ranks), so all ranks stop at the same step boundary
even when only one of them got the signal.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from deeplesion_cli.errors import LesionInterrupted
from deeplesion_cli.frcnn.distributed import Dist, all_reduce_sum

#: the signals that stop a run cleanly (SIGHUP does not exist on every platform)
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None),
                            getattr(signal, "SIGINT", None)) if s is not None)


class Interrupted(LesionInterrupted):
    """Training stopped on a signal; the message says the epoch reached and what ``last.pt``
    holds. The exit code is 128 + the signal's number."""


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """The signal received while training (None: none yet)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""

    def agreed(self, device, dist_info: Dist) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer; under DDP this
        is a collective call, made by all ranks at the same point). A rank that learns of
        another's signal takes SIGTERM as its reason."""
        if not dist_info.enabled:
            return self.requested
        anyone = all_reduce_sum([1.0 if self.requested else 0.0], device, dist_info)[0] > 0
        if anyone and self.signum is None:
            self.signum = int(signal.SIGTERM)
        return anyone


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Record SIGTERM/SIGHUP/SIGINT in ``stop`` instead of dying; a second signal raises
    :class:`Interrupted` at once. Outside the main thread (where Python cannot set handlers)
    nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum is not None:
            raise Interrupted("at once (a second signal)", signum)
        stop.signum = signum

    previous = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, handler)
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
