"""Atomic file writes: write a temporary file beside the target, then rename over it.

A reader (or a re-run after a crash) sees either the old file or the whole new one, never half.
Temporary names start with ``.`` and end with ``.tmp`` so :func:`remove_stale_temps` can sweep
what a killed run left behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _umask_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: tempfile creates files 0600; the renamed file gets what a plain open() would have given.
FILE_MODE = _umask_file_mode()


def _temp_for(path: Path):
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX, delete=False)
    os.fchmod(tmp.fileno(), FILE_MODE)
    return tmp


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically. A failed write (a full disk) removes its temporary
    file, so it holds no space, and leaves ``path`` as it was."""
    path = Path(path)
    tmp = _temp_for(path)
    try:
        with tmp:
            tmp.write(data)
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` kept as is) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_with(path: Path, writer) -> None:
    """Call ``writer(temp_path)`` to produce the file, then rename it to ``path``."""
    path = Path(path)
    with _temp_for(path) as tmp:
        pass
    try:
        writer(Path(tmp.name))
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files a killed run left in ``folder`` and its sub-folders; return count."""
    count = 0
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            count += 1
    return count


def write_durable(path: Path, writer) -> None:
    """Write ``path`` atomically and durably: ``writer(file)`` writes into an open binary
    temporary file beside ``path``, which is flushed and fsynced before it is renamed over
    ``path``; the folder is fsynced after the rename. After a crash or a power loss ``path`` is
    the old file or the whole new one. Any failure (``ENOSPC``, ``EROFS``, an exception of
    ``writer``) removes the temporary file and is re-raised, leaving ``path`` as it was."""
    path = Path(path)
    tmp_path = None
    try:
        with _temp_for(path) as tmp:
            tmp_path = Path(tmp.name)
            writer(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path is not None:
            try:
                tmp_path.unlink(missing_ok=True)
            except OSError:
                pass
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """fsync ``folder`` so that a rename in it survives a power loss (a no-op where the file
    system cannot: the rename itself has happened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
