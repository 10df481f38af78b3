"""DL_info.csv reading and writing, checked against 851 real rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deeplesion_cli.deeplesion import schema
from tests.conftest import REAL_CSVS, real_csv

HEADER_LINE = ",".join(schema.HEADER)
ROW_109 = ('000001_01_01_109.png,1,1,1,109,"233.537, 95.0204, 234.057, 106.977, 231.169, 101.605, '
           '236.252, 101.143","226.169, 90.0204, 241.252, 111.977","11.9677, 5.10387",'
           '"0.44666, 0.283794, 0.434454",3,0,"103, 115","0.488281, 0.488281, 5","512, 512",'
           '"-175, 275",F,62,3')


def parse_one(line: str):
    return schema.parse_text(HEADER_LINE + "\r\n" + line + "\r\n")


@pytest.mark.parametrize("name, count", [(REAL_CSVS[0], 693), (REAL_CSVS[1], 158)])
def test_real_rows_parse_and_write_back_byte_exact(name, count):
    path = real_csv(name)
    rows, errors = schema.read_csv(path)
    assert errors == []
    assert len(rows) == count
    data = path.read_bytes()
    newline = "\r\n" if b"\r\n" in data else "\n"
    assert schema.format_csv(rows, newline) == data


def test_real_rows_give_the_boxes_the_csv_states(real_rows):
    by_name = {}
    for r in real_rows:
        by_name.setdefault(r.file_name, []).append(r)
    (r109,) = by_name["000001_01_01_109.png"]
    assert r109.box_xyxy_px == (226.169, 90.0204, 241.252, 111.977)
    assert r109.box_xyxy_px0() == pytest.approx((225.169, 89.0204, 240.252, 110.977))
    assert r109.spacing_mm == (0.488281, 0.488281, 5.0)
    assert r109.slice_range == (103, 115)
    assert r109.lesion_type == 3 and r109.split == "test" and r109.age_years == 62
    assert r109.slice_path(Path("I"), 103).as_posix() == "I/000001_01_01/103.png"
    two = by_name["000016_01_01_030.png"]
    assert [r.box_xyxy_px for r in two] == [(326.556, 339.0, 365.0, 364.111),
                                            (99.8889, 302.556, 151.667, 355.222)]
    (big,) = by_name["000020_01_01_066.png"]
    assert big.image_size_px == (768, 768) and big.dicom_window_hu == (-1400.0, 200.0)
    assert math.isnan(by_name["000014_01_01_104.png"][0].age_years)
    assert by_name["000089_01_01_037.png"][0].lesion_type == -1


def test_real_rows_satisfy_the_recist_invariants(real_rows):
    # If a column were read from the wrong position these relations would break.
    for r in real_rows:
        xs, ys = r.measurement_xy_px[0::2], r.measurement_xy_px[1::2]
        expected = (min(xs) - 5, min(ys) - 5, max(xs) + 5, max(ys) + 5)
        assert r.box_xyxy_px == pytest.approx(expected, abs=1e-3), r.file_name
        p = r.measurement_xy_px
        long_px = math.dist(p[0:2], p[2:4])
        short_px = math.dist(p[4:6], p[6:8])
        assert r.diameters_px == pytest.approx((long_px, short_px), rel=1e-4, abs=1e-3)
        assert r.slice_range[0] <= r.key_slice_index <= r.slice_range[1]
        assert (r.lesion_type == -1) == (r.split_code == 1)


def test_format_number_is_percent_g():
    assert schema.format_number(0.48828125) == "0.488281"
    assert schema.format_number(512.0) == "512"
    assert schema.format_number(-177.5) == "-177.5"
    assert schema.format_number(float("nan")) == "NaN"
    assert schema.format_number(7) == "7"


def test_lf_and_crlf_parse_alike():
    crlf, _ = schema.parse_text(HEADER_LINE + "\r\n" + ROW_109 + "\r\n")
    lf, _ = schema.parse_text(HEADER_LINE + "\n" + ROW_109 + "\n")
    assert crlf == lf and len(crlf) == 1 and crlf[0].line == 2 and crlf[0].row == 1


@pytest.mark.parametrize("line, column, reason", [
    (ROW_109.rsplit(",", 1)[0], "(row)", "expected 18 columns, found 17"),
    (ROW_109.replace(",109,", ",1o9,"), "Key_slice_index", "cannot parse"),
    (ROW_109.replace('"11.9677, 5.10387"', '"11.9677"'), "Lesion_diameters_Pixel_",
     "expected 2 numbers, found 1"),
    (ROW_109.replace("226.169, 90.0204, 241.252, 111.977", "600, 90, 620, 111"),
     "Bounding_boxes", "entirely outside the 512x512 image"),
    (ROW_109.replace("226.169, 90.0204, 241.252, 111.977", "226.169, 90.0204, 226.169, 111.977"),
     "Bounding_boxes", "non-positive width or height"),
    (ROW_109.replace("000001_01_01_109.png", "000001_01_02_109.png"), "File_name",
     "expected 000001_01_01_109.png"),
    (ROW_109.replace('"0.44666, 0.283794, 0.434454",3,', '"0.44666, 0.283794, 0.434454",9,'),
     "Coarse_lesion_type", "unknown lesion type"),
    (ROW_109[:-1] + "4", "Train_Val_Test", "unknown split code"),
])
def test_malformed_rows_name_row_column_value_and_reason(line, column, reason):
    rows, errors = parse_one(line)
    assert rows == []
    assert len(errors) == 1
    error = errors[0]
    assert (error.row, error.line, error.column) == (1, 2, column)
    assert reason in error.reason
    assert f"row 1 (line 2), column {column}" in str(error)


def test_box_crossing_the_edge_is_kept_for_clipping():
    line = ROW_109.replace("226.169, 90.0204, 241.252, 111.977", "-3, 90.0204, 241.252, 111.977")
    rows, errors = parse_one(line)
    assert errors == [] and rows[0].box_xyxy_px[0] == -3


def test_wrong_header_is_a_schema_error():
    with pytest.raises(schema.SchemaError, match="line 1 is not the DL_info.csv header"):
        schema.parse_text("a,b,c\n1,2,3\n", source="x.csv")
    with pytest.raises(schema.SchemaError, match="empty"):
        schema.parse_text("")


def test_rows_with_nan_age_compare_equal_after_pickling(real_rows):
    import pickle

    row = next(r for r in real_rows if math.isnan(r.age_years))
    copy = pickle.loads(pickle.dumps(row))
    assert copy is not row and copy == row and hash(copy) == hash(row)
    assert copy != real_rows[0]
