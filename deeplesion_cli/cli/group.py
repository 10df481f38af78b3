"""The ``lesion`` group, its ``train`` and ``predict`` subgroups, and the one place where errors
become messages and exit codes.

Every library error derives from :class:`deeplesion_cli.errors.LesionInputError` (bad input:
``Error: <message>``, exit 2) or :class:`deeplesion_cli.errors.LesionRunError` (a failed run:
exit 1); :class:`LesionGroup` catches both around every command, so no command maps errors
itself. An :class:`OSError` (disk full, read-only folder, no permission, missing file...) is a
fault of the machine or of a path given, not a bug: it becomes ``Error: <path>: <reason> (errno
NAME)`` and what to do, exit 2 (files already written are kept). Anything else is a bug and keeps
its traceback (``LESION_TRACEBACK=1`` keeps it for an OSError too).
"""

from __future__ import annotations

import errno
import io
import os
import re
import sys
import tempfile
import traceback

import click

from deeplesion_cli import __version__, lock
from deeplesion_cli.errors import EXIT_BAD_INPUT, LesionError

__all__ = ["main", "train", "predict", "Failure", "console", "warn", "EXIT_BAD_INPUT"]


class Failure(click.ClickException):
    """A :class:`LesionError` as click shows it: ``Error: <message>`` on stderr, no traceback,
    the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


#: What to do about an OSError, by errno (the first line says the path and the reason).
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there (or choose a folder on another disk) and "
                  "run the command again; files already written are kept (prepare, and train "
                  "with --resume, continue from them)",
    errno.EROFS: "the file system is read-only: choose a folder you can write",
    errno.EACCES: "permission denied: choose a folder you can write (or a file you can read), "
                  "or change its permissions",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is a file, not a folder",
    errno.EISDIR: "check the path: it is a folder, not a file",
    errno.EEXIST: "check the path: a file of that name is in the way",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
    errno.EIO: "an input/output error of the device: check the disk and its mount",
    errno.ENAMETOOLONG: "choose a shorter path",
}
_OS_ADVICE[errno.EDQUOT] = _OS_ADVICE[errno.ENOSPC].replace("the disk is full",
                                                            "the disk quota is exceeded")
_OS_ADVICE[errno.EPERM] = _OS_ADVICE[errno.EACCES]
_OS_ADVICE[errno.ENFILE] = _OS_ADVICE[errno.EMFILE]

#: An atomic write's temporary name (``deeplesion_cli.atomic``): ``.<name>.<random>.tmp``.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def _shown(name) -> str:
    """A file name as the user knows it: an atomic write's temporary file is named by its
    target."""
    name = os.fsdecode(name)
    match = _TEMP_NAME.match(os.path.basename(name))
    return os.path.join(os.path.dirname(name), match["name"]) if match else name


def _file_being_used(exc: BaseException) -> str | None:
    """The file a write (or read) was on when ``exc`` (which names none: ``write()`` errors
    carry no file name) was raised: the innermost open file object in the traceback's
    frames."""
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            if isinstance(value, (io.IOBase, tempfile._TemporaryFileWrapper)):
                name = getattr(value, "name", None)
                if isinstance(name, (str, bytes)):
                    return _shown(name)
    return None


def os_error_message(exc: OSError) -> str:
    """``<path>: <reason> (errno NAME)`` and, on a second line, what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" (errno {errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    if exc.filename is not None:
        where = f"{_shown(exc.filename)}: "
        if exc.filename2 is not None:
            where = f"{_shown(exc.filename)} -> {_shown(exc.filename2)}: "
    elif (path := _file_being_used(exc)) is not None:
        where = f"{path}: "
    elif getattr(exc, "lesion_folder", None) is not None:
        where = f"writing in {exc.lesion_folder}: "
    else:
        where = ""
    advice = _OS_ADVICE.get(exc.errno)
    return f"{where}{reason}{code}" + (f"\n  {advice}" if advice else "")


class LesionGroup(click.Group):
    """A click group whose commands' :class:`LesionError` and :class:`OSError` become
    :class:`Failure`; messages of taken-over folder locks are printed as warnings."""

    def invoke(self, ctx):
        lock.set_notifier(warn)
        try:
            return super().invoke(ctx)
        except LesionError as exc:
            raise Failure(str(exc), exc.exit_code) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE or os.environ.get("LESION_TRACEBACK"):
                raise   # a closed pipe is click's to handle (exit quietly)
            raise Failure(os_error_message(exc), EXIT_BAD_INPUT) from None
        finally:
            lock.set_notifier(None)


def console():
    from rich.console import Console

    # Piped output has no terminal width; rich would assume 80 columns and cut table headers.
    return Console() if sys.stdout.isatty() else Console(width=140)


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


@click.group(cls=LesionGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lesion")
def main() -> None:
    """Benchmark CT lesion detectors on NIH DeepLesion under one protocol.

    \b
    Examples (a whole path, without the 221 GB download):
      lesion synth data/synth                      # DeepLesion-format synthetic set
      lesion prepare data/synth data/prepared      # 8-bit images, COCO, darknet files
      lesion demo                                  # both, into ./lesion-demo
    """


@main.group()
def train() -> None:
    """Train a detector on a prepared folder.

    \b
    Examples:
      lesion train frcnn prepared/ --out runs/frcnn
      lesion train yolo prepared/ --cfg yolo.cfg --out runs/yolo
    """


@main.group()
def predict() -> None:
    """Write detections of a trained model as COCO results json.

    \b
    Examples:
      lesion predict frcnn runs/frcnn prepared/ -o frcnn.json
      lesion predict yolo prepared/ --cfg yolo.cfg --weights runs/yolo/backup/yolo_final.weights -o yolo.json
    """
