"""DeepLesion pixel encoding (16-bit PNG, HU + 32768) and HU windowing to 8 bits.

Every slice PNG is single-channel 16-bit; stored value = clip(HU, -32768, 32767) + 32768.
Windowing follows the official FAQ: I = clip((HU - lo) / (hi - lo) * 255, 0, 255), rounded to the
nearest integer (halves upwards), so HU = lo gives 0 and HU = hi gives 255.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import LesionInputError

HU_OFFSET = 32768
#: The 3DCE/MULAN training window (a 4096-HU span) and ``lesion prepare``'s default.
DEFAULT_WINDOW_HU = (-1024.0, 3071.0)
#: PNG zlib level for every PNG this package writes: fixed, so equal inputs give equal bytes.
PNG_COMPRESS_LEVEL = 1


class ImageError(LesionInputError):
    """A slice PNG is missing, unreadable, or not a 16-bit single-channel image (a ValueError;
    exit 2)."""


def hu_to_png_u16(hu: np.ndarray) -> np.ndarray:
    """HU (any real dtype, shape (H, W)) -> stored uint16 values, rounded and clipped."""
    return (np.clip(np.rint(hu), -HU_OFFSET, HU_OFFSET - 1) + HU_OFFSET).astype(np.uint16)


def png_u16_to_hu(stored: np.ndarray) -> np.ndarray:
    """Stored uint16 values (H, W) -> HU as int32."""
    return stored.astype(np.int32) - HU_OFFSET


def check_png_header(path: Path) -> tuple[int, int]:
    """Open ``path`` without decoding pixels; return (width, height) of a 16-bit grayscale PNG.

    Raises :class:`ImageError` naming the file when it is missing, not a PNG, or not 16-bit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ImageError(f"{path}: not a PNG file (format {im.format})")
            if im.mode not in ("I;16", "I;16B", "I;16L"):
                raise ImageError(f"{path}: not a 16-bit grayscale PNG (PIL mode {im.mode}); "
                                 "DeepLesion slices store HU + 32768 as 16-bit")
            return im.size
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"{path}: unreadable image ({exc})") from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png_chunks(path: Path) -> None:
    """Check that the PNG at ``path`` is whole, without decompressing it: every chunk's length
    fits in the file and its CRC matches, there is image data (IDAT), and the file ends with an
    IEND chunk. Catches a cut-short copy or download and flipped bytes before anything is
    decoded or written; costs one read of the file and a CRC-32 of its bytes.

    Raises :class:`ImageError` naming the file, the chunk and its byte offset.
    """
    import struct
    import zlib

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data[:8] != PNG_SIGNATURE:
        raise ImageError(f"{path}: not a PNG file (no PNG signature)")
    view = memoryview(data)
    size, pos, idat = len(data), 8, False
    while True:
        if pos + 12 > size:
            raise ImageError(f"{path}: truncated PNG: the file ends at byte {size} without an "
                             "IEND chunk (a copy or download cut short?)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        name = kind.decode("latin-1")
        if end > size:
            raise ImageError(f"{path}: truncated PNG: chunk {name} at byte {pos} needs {length} "
                             f"bytes but the file ends at byte {size} (a copy or download cut "
                             "short?)")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4:end - 4]) != crc:
            raise ImageError(f"{path}: corrupt PNG: chunk {name} at byte {pos} fails its CRC "
                             "check")
        idat = idat or kind == b"IDAT"
        pos = end
        if kind == b"IEND":
            break
    if not idat:
        raise ImageError(f"{path}: corrupt PNG: no image data (IDAT chunk)")


def check_png_file(path: Path) -> tuple[int, int]:
    """:func:`check_png_header` and :func:`check_png_chunks`: (width, height) of a whole 16-bit
    grayscale PNG; :class:`ImageError` naming the file otherwise."""
    size = check_png_header(path)
    check_png_chunks(path)
    return size


def read_png_u16(path, name: str | None = None) -> np.ndarray:
    """Decode a DeepLesion slice: (H, W) uint16 stored values (HU + 32768).

    ``path`` may be a file object; ``name`` is then the file name errors mention.
    """
    from PIL import Image

    name = name or str(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L"):
                raise ImageError(f"{name}: not a 16-bit grayscale PNG (PIL mode {im.mode})")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except ImageError:
        raise
    except Exception as exc:  # PIL raises several types for truncated or corrupt data
        raise ImageError(f"{name}: unreadable image ({exc})") from None
    return arr.astype(np.uint16, copy=False)


def write_png_u16(path: Path, stored: np.ndarray) -> None:
    """Write (H, W) uint16 stored values as a 16-bit grayscale PNG (not atomic; see atomic.py)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(stored, dtype=np.uint16)).save(
        path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def window_hu(hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Window HU values to uint8: round(clip((HU - lo) / (hi - lo), 0, 1) * 255), halves up."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    scaled = (np.asarray(hu, dtype=np.float64) - lo) / (hi - lo)
    return np.floor(np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@lru_cache(maxsize=32)
def window_lut(window: tuple[float, float]) -> np.ndarray:
    """A 65,536-entry table from stored uint16 value to windowed uint8 (same math as window_hu)."""
    stored = np.arange(65536, dtype=np.int64)
    lut = window_hu(stored - HU_OFFSET, window)
    lut.setflags(write=False)
    return lut


def window_png_u16(stored: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Window stored uint16 values (H, W) straight to uint8 (H, W) through a lookup table."""
    return window_lut((float(window[0]), float(window[1])))[stored]
