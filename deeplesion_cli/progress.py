"""Progress for long work: a rich bar (rate and ETA) on a terminal, plain log lines when piped.

Everything goes to stderr so that stdout stays clean for results (``--json`` and the like).
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Count units of work; use as a context manager and call :meth:`advance`.

    On a terminal a rich progress bar shows count, rate (``unit``/s) and ETA. Otherwise a plain
    line ``<description>: 120/2000 images (6.0%), 41.2 images/s, ETA 45 s`` is printed at most
    every ``interval_s`` seconds, plus one at the end.

    ``after_s``: show nothing before the work has taken that long (the bar appears then, and
    work that ends sooner prints no line at all), so that short work stays quiet while long work
    shows its progress (``lesion eval`` uses it).
    """

    def __init__(self, total: int, description: str, unit: str = "images",
                 interval_s: float = 5.0, stream=None, enabled: bool = True,
                 after_s: float = 0.0):
        self.total = int(total)
        self.description = description
        self.unit = unit
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.after_s = after_s
        self.done = 0
        self.info = ""
        self._rich = None
        self._tty = False
        self._task = None
        self._start = 0.0
        self._last_print = 0.0

    def __enter__(self) -> "Progress":
        self._start = self._last_print = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if self.after_s <= 0:
            self._start_bar()
        return self

    def _due(self) -> bool:
        """Whether the work has run long enough to be shown (``after_s``)."""
        return time.monotonic() - self._start >= self.after_s

    def _start_bar(self) -> None:
        """The rich bar, on a terminal (at the start, or once ``after_s`` has passed)."""
        if self.enabled and self.total > 0 and self._tty and self._rich is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TaskProgressColumn, TextColumn, TimeRemainingColumn)

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, rate="",
                                             info=self.info, completed=self.done)

    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """Count ``n`` more units; ``info`` (e.g. ``"step 30, loss 0.53"``) replaces the text shown
        after the ETA."""
        self.done += n
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        if self._rich is None and self._tty and self.after_s > 0 and self._due():
            self._start_bar()
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=n, rate=f"{self.rate():.1f} {self.unit}/s",
                              info=self.info)
            return
        now = time.monotonic()
        if now - self._last_print >= self.interval_s and self._due():
            self._last_print = now
            self._line()

    def _line(self) -> None:
        rate = self.rate()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = f", ETA {eta:.0f} s" if self.done < self.total and rate > 0 else ""
        info = f", {self.info}" if self.info else ""
        print(f"{self.description}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), "
              f"{rate:.1f} {self.unit}/s{eta_text}{info}", file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled and self.total > 0 and exc[0] is None and not self._tty \
                and self._due():
            self._line()
