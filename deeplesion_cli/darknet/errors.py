"""What running darknet raises: one base class and its bad-input / failed-run kinds.

Each kind derives from :mod:`deeplesion_cli.errors`, which gives it its exit code: no usable
binary, inputs darknet would mishandle, and options that cannot work are bad input (exit 2); a
darknet process that ran and failed is a failed run (exit 1).
"""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli.errors import LesionError, LesionInputError, LesionInterrupted, LesionRunError

#: how many input problems a DarknetInputError lists before counting the rest
MAX_PROBLEMS_SHOWN = 20


class DarknetError(LesionError):
    """Base class of everything the darknet modules raise about darknet."""


class DarknetNotFound(DarknetError, LesionInputError):
    """No usable darknet binary; the message says how to get one."""


class DarknetOptionError(DarknetError, LesionInputError):
    """Options that cannot work with this darknet fork or run folder (``-map`` on pjreddie, a
    fresh run into a folder with weights, nothing to resume, an unknown split or GPU list)."""


class DarknetInputError(DarknetError, LesionInputError):
    """Inputs darknet would mishandle (found before launching it). ``problems``: every one."""

    def __init__(self, problems: list[str], what: str = "darknet inputs"):
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} with the {what}:\n"
                         f"{shown}{tail}")


class DarknetRunError(DarknetError, LesionRunError):
    """darknet ran but failed. ``reasons``: why; ``log_tail``: the log's last lines;
    ``run_dir`` / ``log_path``: kept for inspection."""

    def __init__(self, what: str, reasons: list[str], log_tail: list[str],
                 run_dir: Path | None = None, log_path: Path | None = None):
        self.reasons = list(reasons)
        self.log_tail = list(log_tail)
        self.run_dir = run_dir
        self.log_path = log_path
        text = f"{what} failed: " + "; ".join(self.reasons)
        if run_dir is not None:
            text += f"\n  kept for inspection: {run_dir}"
        if self.log_tail:
            text += (f"\n  last {len(self.log_tail)} lines of "
                     f"{log_path if log_path else 'its output'}:\n    "
                     + "\n    ".join(self.log_tail))
        super().__init__(text)


class DarknetInterrupted(DarknetError, LesionInterrupted):
    """``lesion`` got SIGTERM, SIGHUP or SIGINT while darknet ran; darknet got it too and has
    stopped (exit code 128 + the signal's number)."""
