"""CPU threads of a Faster R-CNN training process: the default count, and keeping it on resume.

torch's intra-op thread pool is process-wide; ``lesion train frcnn`` sets it for the duration of a
training call (``--threads``, else :func:`default_threads`), records the count in ``args.json``
and the checkpoint, and a resumed run keeps it (:func:`check_resumed_threads`).
"""

from __future__ import annotations

import os

from deeplesion_cli.errors import LesionInputError


class ThreadsError(LesionInputError):
    """A ``--threads`` that a resumed run cannot take."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what a container or ``taskset``
    grants, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int, local_ranks: int, workers: int) -> int:
    """Intra-op threads per rank when ``--threads`` is not given: the cores shared evenly by the
    ranks on this machine, less one core per rank when loader workers decode images beside it
    (they take a core of their own while the step runs), at least 1. Oversubscribing makes
    torch's thread pool spin against other processes: on a 2-core machine with another job running,
    2 threads ran 7-12 s per step and 1 thread 1.4-2.2 s."""
    share = cores // max(1, local_ranks)
    if workers > 0 and share > 2:
        share -= 1
    return max(1, share)


def resolve_threads(threads: int | None, workers: int, world_size: int = 1) -> int:
    """``threads`` when given, else :func:`default_threads` for this machine and torchrun's
    ``LOCAL_WORLD_SIZE`` ranks (``world_size`` when torchrun did not say)."""
    if threads is not None:
        return int(threads)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return default_threads(available_cores(), local, workers)


def check_resumed_threads(requested: int | None, recorded: int | None) -> None:
    """``--threads`` on resume must equal the count the run was trained with: the thread count
    changes the order of float reductions (a run resumed with 2 threads instead of 1 ended its next
    epoch up to 1e-3 away from the uninterrupted run), so exact resume needs the same one."""
    if requested is not None and recorded is not None and requested != recorded:
        raise ThreadsError(f"--threads {requested} differs from the {recorded} thread(s) this run "
                          "was trained with; a resumed run keeps its thread count (another one "
                          "changes float rounding, so the run would not continue exactly)")
