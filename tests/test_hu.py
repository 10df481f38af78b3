"""HU encoding and windowing math, at the window edges."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplesion_cli.deeplesion import hu


def test_window_edges_and_rounding():
    window = (-1024.0, 3071.0)
    out = hu.window_hu(np.array([-2000, -1024, 3071, 5000, -1023, 1023.5, 1024]), window)
    # HU = lo -> 0, HU = hi -> 255, outside clipped; -1023 is 255/4095 = 0.062 -> 0;
    # 1023.5 is exactly half way (2047.5/4095 * 255 = 127.5) -> rounds up to 128.
    assert out.tolist() == [0, 0, 255, 255, 0, 128, 128]
    assert out.dtype == np.uint8
    # Soft-tissue window: 50 HU is 225/450 of the way -> 127.5 -> 128; 49 HU -> 126.93 -> 127.
    assert hu.window_hu(np.array([-175, 49, 50, 275, 276]), (-175, 275)).tolist() == [
        0, 127, 128, 255, 255]


def test_lookup_table_equals_direct_math_for_every_stored_value():
    stored = np.arange(65536, dtype=np.uint16)
    for window in [(-1024, 3071), (-175, 275), (-1500, 500), (-160.5, 240.25)]:
        direct = hu.window_hu(stored.astype(np.int64) - 32768, window)
        assert np.array_equal(hu.window_png_u16(stored, window), direct)


def test_hu_png_round_trip_and_offset(tmp_path):
    values = np.array([[-32768, -1024, 0], [1, 3071, 32767]], dtype=np.float64)
    stored = hu.hu_to_png_u16(values)
    assert stored.tolist() == [[0, 31744, 32768], [32769, 35839, 65535]]
    path = tmp_path / "s.png"
    hu.write_png_u16(path, stored)
    assert Image.open(path).mode == "I;16"
    assert np.array_equal(hu.read_png_u16(path), stored)
    assert np.array_equal(hu.png_u16_to_hu(hu.read_png_u16(path)), values.astype(np.int32))
    assert hu.check_png_header(path) == (3, 2)


def test_header_check_names_the_file_and_problem(tmp_path):
    eight_bit = tmp_path / "eight.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(eight_bit)
    with pytest.raises(hu.ImageError, match=r"eight.png: not a 16-bit grayscale PNG \(PIL mode L\)"):
        hu.check_png_header(eight_bit)
    with pytest.raises(hu.ImageError, match="missing.png: file not found"):
        hu.check_png_header(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(hu.ImageError, match="junk.png: unreadable image"):
        hu.check_png_header(junk)
