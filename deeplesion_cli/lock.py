"""One writer per folder: the exclusive lock every ``lesion`` command that writes a folder takes.

``prepare`` (its OUT), ``train frcnn`` and ``train yolo`` (the run folder), ``eval --out``,
``report --out`` and ``matrix`` (its ``out``) hold :func:`folder_lock` on their folder while they
run, so two jobs pointed at one folder cannot interleave their files: the second one stops at once
with :class:`FolderLockedError` (exit 2) naming the holder.

The lock is ``<folder>/.lesion.lock``: a file held with ``flock(LOCK_EX)`` and holding a JSON
record of its holder (pid, host, start time, command line). The kernel releases a ``flock`` when
its process dies however it dies (SIGKILL included), so a lock left by a dead process on this host
is simply taken over, with a message naming the process that left it. A record written on another
host cannot be judged from here (that process may still run, and ``flock`` may not reach across
hosts on every network file system): the command refuses, naming the holder and the file to delete
once that process is known to be gone. On a file system without ``flock`` the record alone
decides (a pid of this host that no longer runs is stale).

A folder that cannot take a lock file because it cannot be written (read-only file system, no
permission) is used without one: nobody can write it through this mount either, and a command
that must write fails at its first file with a clear error (``deeplesion_cli.cli.group``).

The lock file is removed when the command ends; a folder the lock created and the command left
empty (it stopped on bad input before writing) is removed too. Locks are per process and
re-entrant: a command holding a folder may call a step that locks the same folder again, and
nested locks of different folders (``matrix``'s ``out`` around ``out/<name>``) are independent.
Nothing here imports the rest of the package but :mod:`deeplesion_cli.errors`.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from deeplesion_cli.errors import LesionInputError

#: The lock file's name inside the locked folder (a dot file: listings of outputs skip it).
LOCK_NAME = ".lesion.lock"

#: errno of a file system that cannot flock: the JSON record alone decides.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: errno of a folder that cannot hold a lock file because nobody can write it through this mount.
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


class FolderLockedError(LesionInputError):
    """Another ``lesion`` command holds the folder (or may: its record is from another host);
    exit 2. ``holder`` is its record (pid, host, started, command), possibly empty."""

    def __init__(self, message: str, folder: Path, holder: dict):
        super().__init__(message)
        self.folder = folder
        self.holder = holder


# ---------------------------------------------------------------------- holders and messages

def _command_line(command: str) -> str:
    """The command line of this process as a user typed it (``lesion ...``), else ``command``."""
    argv = sys.argv
    first = Path(argv[0]).name if argv else ""
    if first == "lesion" or (first == "__main__.py" and "deeplesion_cli" in argv[0]):
        return shlex.join(["lesion", *argv[1:]])
    return command


def _record(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": _command_line(command)}


def describe_holder(holder: dict) -> str:
    """``pid 123 on host h, started 2026-01-01 10:00:00 UTC: lesion train frcnn ...``."""
    if not holder.get("pid"):
        return "holder unknown: its lock record is empty or unreadable"
    text = f"pid {holder['pid']} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


def _read_record(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        record = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}
    return record if isinstance(record, dict) else {"unreadable": True}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True            # it exists (another user's), or the record is odd: assume alive
    return True


# ---------------------------------------------------------------------- notifications

_notify: Callable[[str], None] | None = None


def set_notifier(notify: Callable[[str], None] | None) -> None:
    """Where messages of a taken-over lock go (the command line: its ``Warning:`` printer);
    ``None``: Python's :mod:`warnings` (a ``UserWarning``)."""
    global _notify
    _notify = notify


def _tell(message: str) -> None:
    if _notify is not None:
        _notify(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=4)


# ---------------------------------------------------------------------- the lock

#: Folders this process holds: resolved path -> nesting depth (re-entrant locks).
_held: dict[Path, int] = {}


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and missing parents); return what was created, deepest first."""
    created = []
    path = folder
    while not path.exists() and path != path.parent:
        created.append(path)
        path = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_if_empty(created: list[Path]) -> None:
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return


def _open_locked(folder: Path) -> tuple[int | None, bool]:
    """``(fd of the lock file, flock held)``; fd None when the folder cannot hold a lock file.
    Raises :class:`FolderLockedError` when another process holds the flock."""
    path = folder / LOCK_NAME
    for _ in range(50):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                return None, False
            raise
        flocked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            if not holder.get("pid"):      # the holder is between flock and its record
                time.sleep(0.2)
                holder = _read_record(fd)
            os.close(fd)
            raise FolderLockedError(
                f"{folder} is in use by another lesion command ({describe_holder(holder)}); "
                "wait for it to finish, or choose another folder", folder, holder) from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            flocked = False
        # The holder before us may have removed the file between our open and our flock: then we
        # hold a lock on a deleted file, and must take the one now at ``path``.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd, flocked
        os.close(fd)
    raise FolderLockedError(f"{folder}: could not take {path} (it keeps being replaced)",
                            folder, {})


def _claim(folder: Path, fd: int, flocked: bool, command: str) -> None:
    """Judge the record left in the lock file (if any), then write ours."""
    old = _read_record(fd)
    here = socket.gethostname()
    if old.get("pid") and old.get("pid") != os.getpid():
        path = folder / LOCK_NAME
        if old.get("host") not in (None, here):
            raise FolderLockedError(
                f"{folder} is locked by a lesion command of another host "
                f"({describe_holder(old)}); this host ({here}) cannot tell whether it still "
                f"runs: if it has ended, delete {path} and run again", folder, old)
        if not flocked and _pid_alive(old["pid"]):
            raise FolderLockedError(
                f"{folder} is in use by another lesion command ({describe_holder(old)}); "
                f"wait for it to finish, or choose another folder (if that process is not a "
                f"lesion command, delete {path})", folder, old)
        _tell(f"took over the lock of {folder} left by a command that no longer runs "
              f"({describe_holder(old)})")
    elif old.get("unreadable"):
        _tell(f"took over an unreadable lock file in {folder}")
    data = (json.dumps(_record(command), indent=1) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except OSError as exc:       # a full disk: the flock still excludes; the command says more
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


def _release(folder: Path, fd: int) -> None:
    path = folder / LOCK_NAME
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()
    except OSError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)   # forked children (data loaders) may share the fd
    except OSError:
        pass
    os.close(fd)


@contextmanager
def folder_lock(path, command: str) -> Iterator[Path]:
    """Hold the exclusive lock of folder ``path`` (created when missing) for ``command`` (e.g.
    ``"lesion prepare"``, shown to a second command when ``sys.argv`` is not a ``lesion`` one);
    yields the folder. See the module docstring."""
    folder = Path(path).absolute()
    key = folder.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    created = _make_folder(folder)
    try:
        fd, flocked = _open_locked(folder)
        if fd is not None:
            try:
                _claim(folder, fd, flocked, command)
            except BaseException:
                os.close(fd)
                raise
    except BaseException:
        _remove_if_empty(created)
        raise
    _held[key] = 1
    try:
        yield folder
    except OSError as exc:
        if getattr(exc, "lesion_folder", None) is None:
            exc.lesion_folder = folder   # the command line names it when the error has no path
        raise
    finally:
        del _held[key]
        if fd is not None:
            _release(folder, fd)
        _remove_if_empty(created)


def held() -> list[Path]:
    """The folders this process holds now (resolved)."""
    return list(_held)


def rank_zero() -> bool:
    """Not a torchrun rank above 0: torchrun starts one process per rank running the same
    command, and only rank 0 writes the run folder, so only it locks."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def locks(argument: str, command: str, *, when: Callable[[], bool] | None = None):
    """Decorator: call the function holding :func:`folder_lock` on its argument ``argument``
    (no lock when that argument is None, or when ``when()`` is false)."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = bound.arguments.get(argument)
            if folder is None or (when is not None and not when()):
                return function(*args, **kwargs)
            with folder_lock(folder, command):
                return function(*args, **kwargs)
        return wrapper
    return decorate
