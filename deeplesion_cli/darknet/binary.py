"""Finding the darknet binary and telling which fork it is (pjreddie, AlexeyAB, hank-ai).

The forks differ in flags, console format, weights names and bugs (docs/darknet.md), so every
command builder and check takes the fork :func:`detect_fork` names: ``"pjreddie"``,
``"alexeyab"`` or ``"hankai"`` (:data:`FORKS`). :func:`gpu_support` says whether a binary was
built with CUDA (``--gpus`` on a CPU-only build is left out, with a warning).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deeplesion_cli.darknet import log as dlog
from deeplesion_cli.darknet.errors import DarknetNotFound
from deeplesion_cli.darknet.process import child_env

FORKS = ("pjreddie", "alexeyab", "hankai")
FORK_NAMES = {"pjreddie": "pjreddie darknet", "alexeyab": "AlexeyAB darknet",
              "hankai": "hank-ai darknet"}

INSTALL_HINT = (
    "Install pjreddie's darknet with `sudo apt-get install darknet` (Debian/Ubuntu; CPU only, "
    "yolov3-style cfgs only), or build AlexeyAB's (https://github.com/AlexeyAB/darknet, "
    "recommended) or hank-ai's (https://github.com/hank-ai/darknet) darknet and pass "
    "--darknet /path/to/darknet or set $DARKNET.")

#: seconds a probe (``darknet version``, ``darknet detector``) may take
PROBE_TIMEOUT_S = 30


def _resolve_binary(candidate: str, origin: str) -> Path:
    text = os.path.expanduser(str(candidate))
    if os.sep not in text and not os.path.exists(text):
        found = shutil.which(text)
        if found is None:
            raise DarknetNotFound(f"{origin}: no program named {text!r} on PATH. {INSTALL_HINT}")
        text = found
    path = Path(text)
    if path.is_dir():
        inner = path / "darknet"
        if inner.is_file():
            path = inner
        else:
            raise DarknetNotFound(f"{origin}: {path} is a folder without a darknet binary in "
                                  f"it. {INSTALL_HINT}")
    if not path.exists():
        raise DarknetNotFound(f"{origin}: {path} does not exist. {INSTALL_HINT}")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise DarknetNotFound(f"{origin}: {path} is not an executable file. {INSTALL_HINT}")
    return path.resolve()


def find_darknet(explicit=None) -> Path:
    """The darknet binary: ``explicit`` (``--darknet``: a path, a folder holding ``darknet``, or a
    program name on PATH), else ``$DARKNET``, else ``darknet`` on PATH.

    Raises :class:`DarknetNotFound` with installation instructions when there is none.
    """
    if explicit is not None and str(explicit) != "":
        return _resolve_binary(str(explicit), f"--darknet {explicit}")
    env = os.environ.get("DARKNET")
    if env:
        return _resolve_binary(env, f"$DARKNET={env}")
    found = shutil.which("darknet")
    if found is None:
        raise DarknetNotFound(f"darknet was not found (no --darknet, no $DARKNET, no `darknet` "
                              f"on PATH). {INSTALL_HINT}")
    return Path(found).resolve()


def _probe(binary: Path, args: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="lesion-darknet-probe-") as scratch:
        try:
            done = subprocess.run([str(binary), *args], cwd=scratch, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=PROBE_TIMEOUT_S, env=child_env())
        except subprocess.TimeoutExpired:
            raise DarknetNotFound(f"{binary} {' '.join(args)} did not finish within "
                                  f"{PROBE_TIMEOUT_S} s; is it darknet?") from None
        except OSError as exc:
            raise DarknetNotFound(f"{binary} cannot be run: {exc.strerror or exc}. "
                                  f"{INSTALL_HINT}") from None
    return "\n".join(dlog.split_text(done.stdout.decode("utf-8", "replace")))


@dataclass(frozen=True)
class _Probed:
    fork: str
    output: str     # what `darknet version` and `darknet detector` printed


@functools.lru_cache(maxsize=16)
def _probe_cached(binary: str, _mtime_ns: int, _size: int) -> _Probed:
    path = Path(binary)
    version = _probe(path, ["version"])
    # hank-ai prints its version ("Darknet v5.1-104-gf684e1d7") first, whatever the command;
    # pjreddie and AlexeyAB have no `version` command and say "Not an option: version".
    if "Not an option" not in version and re.search(r"darknet\s+v?\d+\.\d+", version, re.I):
        return _Probed("hankai", version)
    usage = _probe(path, ["detector"])
    both = version + "\n" + usage
    # AlexeyAB: its usage lists demo/map, and main() reports GPU/OpenCV before any command
    if re.search(r"demo/map|GPU isn't used|CUDA-version|OpenCV (?:version|isn't used)", both):
        return _Probed("alexeyab", both)
    if "Not an option" in both or re.search(r"usage: .*detector", both):
        return _Probed("pjreddie", both)
    raise DarknetNotFound(f"{binary} does not behave like any darknet fork (`{binary} version` "
                          f"printed {version.strip()[:200]!r}, `{binary} detector` printed "
                          f"{usage.strip()[:200]!r}). {INSTALL_HINT}")


def _probed(binary) -> _Probed:
    path = Path(binary).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise DarknetNotFound(f"{path}: {exc.strerror or exc}. {INSTALL_HINT}") from None
    return _probe_cached(str(path), st.st_mtime_ns, st.st_size)


def detect_fork(binary) -> str:
    """``"pjreddie"``, ``"alexeyab"`` or ``"hankai"``: which darknet ``binary`` is.

    Probes (each in a scratch CWD, cached per binary and modification time): ``darknet version``
    prints a version only in hank-ai; ``darknet detector`` (usage) names ``demo/map`` and is
    preceded by a GPU/OpenCV report only in AlexeyAB; pjreddie prints neither.
    """
    return _probed(binary).fork


@dataclass(frozen=True)
class GpuSupport:
    """Whether a darknet binary was built with CUDA: ``cuda`` True, False, or None (unknown),
    and ``evidence``, what says so in words."""

    cuda: bool | None
    evidence: str


#: what the forks print at start-up (docs/darknet.md 0): AlexeyAB's main() ``" GPU isn't used"``
#: or ``" CUDA-version: ..."``; hank-ai ``"Darknet is compiled to only use the CPU."`` and
#: ``"GPU is disabled."``, or its CUDA/cuDNN report
_CPU_LINES = re.compile(r"GPU isn't used|compiled to only use the CPU|GPU is disabled", re.I)
_GPU_LINES = re.compile(r"CUDA-version|CUDA runtime version|cuDNN", re.I)
_CUDA_LIBRARIES = re.compile(rb"libcudart|libcublas|libcuda\.so|cudaSetDevice")


def _links_cuda(binary: Path) -> bool | None:
    """Whether ``binary`` (or a library it loads, as ``ldd`` lists them) holds CUDA; None when
    neither can be read."""
    found = None
    ldd = shutil.which("ldd")
    if ldd is not None:
        try:
            done = subprocess.run([ldd, str(binary)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  timeout=PROBE_TIMEOUT_S)
            if done.returncode == 0:
                found = bool(_CUDA_LIBRARIES.search(done.stdout))
        except (OSError, subprocess.TimeoutExpired):
            pass
    if not found:
        try:
            found = bool(_CUDA_LIBRARIES.search(binary.read_bytes())) or bool(found)
        except OSError:
            pass
    return found


@functools.lru_cache(maxsize=16)
def _gpu_cached(binary: str, _mtime_ns: int, _size: int, output: str) -> GpuSupport:
    if _CPU_LINES.search(output):
        line = next(line.strip() for line in output.splitlines() if _CPU_LINES.search(line))
        return GpuSupport(False, f"it prints {line!r} at start-up")
    if _GPU_LINES.search(output):
        return GpuSupport(True, "it reports CUDA at start-up")
    links = _links_cuda(Path(binary))
    if links is None:
        return GpuSupport(None, "its start-up output and libraries could not tell")
    return (GpuSupport(True, "it is linked with CUDA") if links
            else GpuSupport(False, "it is linked with no CUDA library"))


def gpu_support(binary) -> GpuSupport:
    """Whether ``binary`` can use a GPU (docs/darknet.md 0): from its start-up lines (AlexeyAB,
    hank-ai), else from the libraries it is linked with (pjreddie prints nothing about it;
    Debian's build has no CUDA). Cached per binary and modification time."""
    probed = _probed(binary)
    path = Path(binary).resolve()
    st = path.stat()
    return _gpu_cached(str(path), st.st_mtime_ns, st.st_size, probed.output)
