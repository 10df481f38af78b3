"""The two kinds of failure every library error belongs to, and their exit codes.

``lesion`` tells a user two different things when it stops: *your input is wrong* (a file, row,
field or option; fix it and run again: exit code 2, as click uses for a bad option) or *the run
failed* (darknet crashed, training diverged, a process died: exit code 1). Every error a library
module raises on purpose derives from one of the two; :func:`exit_code` and the command line's one
handler (``deeplesion_cli.cli``) map them, so no command decides this on its own.

Both also derive from the builtin a caller would expect (``ValueError`` for bad input,
``RuntimeError`` for a failed run), so library users may catch either.
"""

from __future__ import annotations

#: Exit code of bad input (rows, images, files, options); click uses 2 for bad options too.
EXIT_BAD_INPUT = 2
#: Exit code of a run that started and failed.
EXIT_RUN_FAILED = 1


class LesionError(Exception):
    """Base of every error ``lesion`` raises on purpose; ``str()`` is the message a user sees."""

    exit_code = EXIT_RUN_FAILED


class LesionInputError(LesionError, ValueError):
    """Bad input: the message names the file, row, field or option and what is wrong (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class LesionRunError(LesionError, RuntimeError):
    """A run that started and failed: the message says what failed and where its log is
    (exit 1)."""

    exit_code = EXIT_RUN_FAILED


class LesionInterrupted(LesionRunError):
    """A run stopped on a signal (SIGTERM from a scheduler, SIGHUP, Ctrl-C) after saving what it
    could; the message says what was kept and how to continue. ``exit_code`` is 128 + the
    signal's number, as a shell reports a process the signal ended (143 for SIGTERM), so
    schedulers and scripts see what happened."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


def exit_code(exc: BaseException) -> int:
    """The exit code of ``exc``: its class's, 1 for anything not raised on purpose."""
    return getattr(exc, "exit_code", EXIT_RUN_FAILED) if isinstance(exc, LesionError) \
        else EXIT_RUN_FAILED
