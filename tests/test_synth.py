"""Tests of the synthetic DeepLesion generator (deeplesion_cli.deeplesion.synth).

Small sets (10 patients, 128 px) keep the whole file fast; the rare features (1.5x images, two
lesions on a slice, Possibly_noisy, NaN age) are guaranteed from 4 (8 for NaN age) patients up.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplesion_cli.deeplesion import hu, schema, synth

PATIENTS = 10
SIZE_PX = 128
SEED = 7


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_a")
    return out, synth.synthesize(out, patients=PATIENTS, seed=SEED, size_px=SIZE_PX, workers=1,
                                 show_progress=False)


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """Same arguments as run_a but two worker processes."""
    out = tmp_path_factory.mktemp("synth_b")
    return out, synth.synthesize(out, patients=PATIENTS, seed=SEED, size_px=SIZE_PX, workers=2,
                                 show_progress=False)


@pytest.fixture(scope="module")
def run_lf(tmp_path_factory):
    """Another seed, LF line ends."""
    out = tmp_path_factory.mktemp("synth_lf")
    return out, synth.synthesize(out, patients=PATIENTS, seed=SEED + 1, size_px=SIZE_PX,
                                 newline="\n", workers=2, show_progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _key_hu(root: Path, row: schema.LesionRow) -> np.ndarray:
    stored = hu.read_png_u16(row.slice_path(root / "Images_png", row.key_slice_index))
    return hu.png_u16_to_hu(stored).astype(np.float64)


# ------------------------------------------------------------------------------ CSV round trip


def test_round_trip_crlf(run_a):
    out, result = run_a
    assert result.csv_path == out / "DL_info.csv"
    data = result.csv_path.read_bytes()
    rows, errors = schema.read_csv(result.csv_path)
    assert errors == []
    assert len(rows) == len(result.rows) > 0
    assert rows == result.rows
    assert schema.format_csv(result.rows) == data
    assert data.count(b"\r\n") == len(rows) + 1
    assert data.count(b"\n") == len(rows) + 1
    assert data.startswith(",".join(schema.HEADER).encode() + b"\r\n")


def test_round_trip_lf(run_lf):
    _, result = run_lf
    data = result.csv_path.read_bytes()
    assert b"\r" not in data
    rows, errors = schema.read_csv(result.csv_path)
    assert errors == []
    assert rows == result.rows
    assert schema.format_csv(result.rows, "\n") == data


def test_rows_hold_csv_precision(run_a):
    """Every float already is its own %g rounding, so nothing changes on the way to disk."""
    _, result = run_a
    for row in result.rows:
        for values in (row.measurement_xy_px, row.box_xyxy_px, row.diameters_px, row.location_xyz,
                       row.spacing_mm, row.dicom_window_hu):
            for v in values:
                assert isinstance(v, float)
                assert v == float(schema.format_number(v))


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_whatever_workers(run_a, run_b):
    (root_a, res_a), (root_b, res_b) = run_a, run_b
    tree_a, tree_b = _tree(root_a), _tree(root_b)
    assert tree_a.keys() == tree_b.keys()
    differing = [name for name in tree_a if tree_a[name] != tree_b[name]]
    assert differing == []
    assert res_a.rows == res_b.rows
    assert res_a.n_png == res_b.n_png


def test_other_seed_differs(run_a, run_lf):
    (root_a, res_a), (root_lf, res_lf) = run_a, run_lf
    assert res_a.rows != res_lf.rows
    assert res_a.csv_path.read_bytes().replace(b"\r\n", b"\n") != res_lf.csv_path.read_bytes()
    common = sorted(set(_tree(root_a)) & set(_tree(root_lf)) - {"DL_info.csv"})
    for name in common:
        assert (root_a / name).read_bytes() != (root_lf / name).read_bytes()


# ------------------------------------------------------------------------------ format invariants


def test_row_invariants(run_a, run_lf):
    for _, result in (run_a, run_lf):
        for row in result.rows:
            pts = np.array(row.measurement_xy_px).reshape(4, 2)
            x1, y1, x2, y2 = row.box_xyxy_px
            expected_box = (pts[:, 0].min() - 5, pts[:, 1].min() - 5,
                            pts[:, 0].max() + 5, pts[:, 1].max() + 5)
            assert np.allclose(row.box_xyxy_px, expected_box, atol=1e-3), row
            long_px, short_px = row.diameters_px
            assert long_px == pytest.approx(np.linalg.norm(pts[0] - pts[1]), abs=1e-3)
            assert short_px == pytest.approx(np.linalg.norm(pts[2] - pts[3]), abs=1e-3)
            assert long_px >= short_px > 0
            # RECIST axes nearly perpendicular
            u, v = pts[1] - pts[0], pts[3] - pts[2]
            cos = abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))
            assert cos < math.sin(math.radians(10))
            size = row.image_size_px[0]
            assert row.image_size_px == (size, size)
            assert 1 <= x1 < x2 <= size and 1 <= y1 < y2 <= size
            assert long_px <= synth.MAX_LONG_FRACTION * size + 1e-3
            first, last = row.slice_range
            assert 1 <= first <= row.key_slice_index <= last <= synth.MAX_SLICE_INDEX
            assert row.file_name == "%06d_%02d_%02d_%03d.png" % (
                row.patient_index, row.study_index, row.series_id, row.key_slice_index)
            if row.split_code == 1:
                assert row.lesion_type == -1
            else:
                assert row.split_code in (2, 3) and 1 <= row.lesion_type <= 8
            assert all(0 < v < 1 for v in row.location_xyz)
            sx, sy, dz = row.spacing_mm
            assert sx == sy and 0.3 < sx < 4.0
            assert dz in synth.DZ_MM
            assert row.possibly_noisy in (0, 1)
            assert row.gender in ("M", "F")
            assert math.isnan(row.age_years) or (5 <= row.age_years <= 90
                                                 and row.age_years.is_integer())
            if row.lesion_type == 5:
                assert row.dicom_window_hu == synth.LUNG_WINDOW_HU


def test_per_slice_and_per_patient_fields(run_a):
    _, result = run_a
    by_file = defaultdict(list)
    for row in result.rows:
        by_file[row.file_name].append(row)

    def per_slice(r):
        return (r.location_xyz[2], r.slice_range, r.spacing_mm, r.image_size_px,
                r.dicom_window_hu, r.gender, r.split_code, r.key_slice_index)

    for rows in by_file.values():
        assert len({per_slice(r) for r in rows}) == 1
        assert len({str(r.age_years) for r in rows}) == 1
    split_of, gender_of = {}, {}
    age_of_study = defaultdict(set)
    for row in result.rows:
        assert split_of.setdefault(row.patient_index, row.split_code) == row.split_code
        assert gender_of.setdefault(row.patient_index, row.gender) == row.gender
        age_of_study[(row.patient_index, row.study_index)].add(str(row.age_years))
    assert all(len(ages) == 1 for ages in age_of_study.values())
    assert set(split_of.values()) == {1, 2, 3}
    assert len(split_of) == PATIENTS
    # ages do not go down from one study to the next
    for patient in split_of:
        ages = [float(next(iter(age_of_study[k]))) for k in sorted(age_of_study)
                if k[0] == patient]
        ages = [a for a in ages if not math.isnan(a)]
        assert ages == sorted(ages)


def test_row_order(run_a):
    _, result = run_a
    keys = [(r.patient_index, r.study_index, r.series_id) for r in result.rows]
    assert keys == sorted(keys)
    names = [r.file_name for r in result.rows]
    seen, previous = set(), None
    for name in names:
        if name != previous:
            assert name not in seen, f"rows of {name} are not adjacent"
            seen.add(name)
        previous = name


def test_slice_ranges_are_merged_blocks(run_a, run_lf):
    for _, result in (run_a, run_lf):
        series = defaultdict(list)
        for row in result.rows:
            series[row.series_dir].append(row)
        for rows in series.values():
            dz = rows[0].spacing_mm[2]
            half = math.ceil(30 / dz)
            blocks = sorted({r.slice_range for r in rows})
            for (_, last), (first, _) in zip(blocks, blocks[1:]):
                assert first > last + 1, "blocks of one series overlap or touch"
            top = max(last for _, last in blocks)
            for block in blocks:
                keys = sorted({r.key_slice_index for r in rows if r.slice_range == block})
                assert block[0] == max(1, keys[0] - half)
                # the end is key + half unless the series ends there
                assert block[1] == keys[-1] + half or (block[1] == top
                                                       and block[1] < keys[-1] + half)
                for a, b in zip(keys, keys[1:]):
                    assert b - a <= 2 * half + 1, "keys in one block must have touching ranges"
            all_keys = sorted({r.key_slice_index for r in rows})
            for a, b in zip(all_keys, all_keys[1:]):
                same = next(r.slice_range for r in rows if r.key_slice_index == a) == \
                    next(r.slice_range for r in rows if r.key_slice_index == b)
                assert same == (b - a <= 2 * half + 1)


def test_merge_blocks():
    assert synth.merge_blocks([10], 5.0, 100) == [(4, 16)]
    assert synth.merge_blocks([3], 5.0, 100) == [(1, 9)]
    assert synth.merge_blocks([98], 5.0, 100) == [(92, 100)]
    assert synth.merge_blocks([10, 23], 5.0, 100) == [(4, 29)]      # 16 and 17 touch
    assert synth.merge_blocks([10, 24], 5.0, 100) == [(4, 16), (18, 30)]
    assert synth.merge_blocks([50, 10, 12], 1.0, 999) == [(1, 80)]
    assert synth.merge_blocks([40, 5], 2.0, 999) == [(1, 20), (25, 55)]
    assert synth.merge_blocks([36, 5], 2.0, 999) == [(1, 51)]
    assert synth.merge_blocks([5], 2.5, 8) == [(1, 8)]


# ------------------------------------------------------------------------------ files


def test_every_block_slice_is_a_16bit_png(run_a):
    root, result = run_a
    expected = set()
    size_of = {}
    for row in result.rows:
        first, last = row.slice_range
        for k in range(first, last + 1):
            expected.add(f"{row.series_dir}/{k:03d}.png")
        size_of[row.series_dir] = row.image_size_px
    images = root / "Images_png"
    on_disk = {str(p.relative_to(images)) for p in images.rglob("*") if p.is_file()}
    assert on_disk == expected  # nothing missing, no stray or temporary files
    assert result.n_png == len(expected)
    for name in sorted(expected):
        with Image.open(images / name) as im:
            assert im.format == "PNG"
            assert im.mode == "I;16"
            assert im.size == size_of[name.split("/")[0]]
    # outside the circular field of view the scanner writes -1024 HU
    row = result.rows[0]
    assert _key_hu(root, row)[0, 0] == -1024


def test_rare_cases_present(run_a):
    _, result = run_a
    rows = result.rows
    sizes = {r.image_size_px[0] for r in rows}
    assert SIZE_PX in sizes and int(1.5 * SIZE_PX) in sizes
    counts = Counter(r.file_name for r in rows)
    assert max(counts.values()) >= 2
    assert max(counts.values()) <= 3
    assert any(r.possibly_noisy == 1 for r in rows)
    assert any(math.isnan(r.age_years) for r in rows)
    nan_ages = [r for r in rows if math.isnan(r.age_years)]
    assert b",NaN," in result.csv_path.read_bytes()
    assert nan_ages


def test_lesions_are_visible(run_a, run_lf):
    """On key slices each lesion's core differs from the ring just outside its box as real
    lesions do: by >= 40 HU (hypodense liver lesions, the faintest), >= 100 HU for the other
    types; in a soft-tissue window (-175, 275) by >= 15 grey levels (bone lesions aside: bone is
    white there, as in real CT)."""
    soft_window_hu = (-175.0, 275.0)
    contrasts, met = [], []
    for root, result in (run_a, run_lf):
        for row in result.rows:
            img = _key_hu(root, row)
            size = img.shape[0]
            pts = np.array(row.measurement_xy_px).reshape(4, 2) - 1.0  # 0-based pixel centres
            # crossing point of the two RECIST segments
            d1, d2 = pts[1] - pts[0], pts[3] - pts[2]
            t = np.linalg.solve(np.column_stack([d1, -d2]), pts[2] - pts[0])
            centre = pts[0] + t[0] * d1
            radius = 0.35 * min(np.linalg.norm(p - centre) for p in pts)
            ys, xs = np.mgrid[0:size, 0:size]
            core = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2
            if not core.any():
                core[int(round(centre[1])), int(round(centre[0]))] = True
            bx1, by1, bx2, by2 = (v - 1.0 for v in row.box_xyxy_px)
            outer = (xs >= bx1 - 3) & (xs <= bx2 + 3) & (ys >= by1 - 3) & (ys <= by2 + 3)
            inner = (xs >= bx1) & (xs <= bx2) & (ys >= by1) & (ys <= by2)
            ring = outer & ~inner
            assert ring.sum() > 0
            diff_hu = img[core].mean() - img[ring].mean()
            contrasts.append(abs(diff_hu))
            least = 100 if row.lesion_type not in (-1, 4) else 40
            # the floor holds before noise. The noise (sigma <= 20 HU) is white noise blurred by
            # [1,2,1]/4 in 2-D (gain 0.375), so the mean of a core of n pixels has a standard
            # deviation of about 20 / (0.375 sqrt(n)); allow three of them
            slack = 3 * 20 / (0.375 * np.sqrt(core.sum()))
            assert abs(diff_hu) >= least - slack, (row.file_name, row.lesion_type, diff_hu)
            met.append(abs(diff_hu) >= least - 5)
            if row.lesion_type not in (-1, 1):
                grey = hu.window_hu(img, soft_window_hu).astype(np.float64)
                assert abs(grey[core].mean() - grey[ring].mean()) >= 15, row.file_name
    # not brighter than real: liver lesions stay within the 30-80 HU of real metastases (+ the
    # lift when the ring holds another tissue), and most lesions lie below 250 HU of contrast
    assert np.median(contrasts) < 250
    assert np.mean(met) >= 0.9


# ------------------------------------------------------------------------------ distributions


def test_cohort_distributions():
    """The plan (no pixels) of a large cohort follows the reference proportions."""
    specs = synth._plan_cohort(1500, seed=11, size_px=512)
    split_of = {s.patient_index: s.split_code for s in specs}
    shares = Counter(split_of.values())
    assert shares[1] / len(split_of) == pytest.approx(0.70, abs=0.02)
    assert shares[2] / len(split_of) == pytest.approx(0.15, abs=0.02)
    indices = sorted(split_of)
    assert indices[-1] > len(indices)  # patient indices have gaps
    keys = [k for s in specs for k in s.keys]
    lesion_types = Counter(t for k in keys for t in k.types)
    n = sum(lesion_types.values())
    for lesion_type, share in synth.TYPE_PROBS.items():
        assert lesion_types[lesion_type] / n == pytest.approx(share, abs=0.04), lesion_type
    multi = sum(len(k.types) >= 2 for k in keys) / len(keys)
    assert 0.015 <= multi <= 0.05
    dz = Counter(s.dz_mm for s in specs)
    assert dz[5.0] / len(specs) == pytest.approx(0.75, abs=0.04)
    large = sum(s.size_px == 768 for s in specs) / len(specs)
    assert 0.003 <= large <= 0.02
    for s in specs:
        assert s.spacing_mm == pytest.approx(float(schema.format_number(s.spacing_mm)))
        assert all(k.window_hu == synth.LUNG_WINDOW_HU for k in s.keys if k.types[0] == 5)
        assert len({k.slice_index for k in s.keys}) == len(s.keys)
        assert s.blocks == tuple(synth.merge_blocks([k.slice_index for k in s.keys], s.dz_mm,
                                                    s.n_slices))
    genders = Counter(s.gender for s in {s.patient_index: s for s in specs}.values())
    assert genders["M"] / len(split_of) == pytest.approx(0.6, abs=0.05)


def test_small_cohorts_and_bad_arguments(tmp_path):
    result = synth.synthesize(tmp_path / "one", patients=1, seed=3, size_px=64, workers=1,
                              show_progress=False)
    rows, errors = schema.read_csv(result.csv_path)
    assert errors == [] and rows == result.rows
    assert {r.patient_index for r in rows} == {1}
    for kwargs in ({"newline": "\r"}, {"patients": 0}, {"size_px": 32}, {"seed": -1}):
        with pytest.raises(ValueError):
            synth.synthesize(tmp_path / "bad", show_progress=False, **kwargs)
