"""Synthetic DeepLesion, step 4: the DL_info.csv rows of one rendered series.

:func:`rows_for` turns the plan and the placed lesions' RECIST points into :class:`LesionRow`
records as the release writes them: coordinates (RECIST points, boxes) are **1-based pixels**
(internal 0-based value + 1), boxes are the RECIST extent +- 5 px, diameters are in px, spacing in
mm, and every float is pre-rounded through ``%g`` so the CSV parses back to equal rows.
"""

from __future__ import annotations

import math

import numpy as np

from .schema import LesionRow
from .synth_anatomy import Anatomy
from .synth_plan import SeriesSpec, csv_float


def rows_for(spec: SeriesSpec, anat: Anatomy, lesion_geometry) -> list[LesionRow]:
    """CSV rows with every float pre-rounded through %g, derived fields from rounded points."""
    body_cx, body_cy, body_a, body_b = anat.body_xyab_px
    rows = []
    for key, points_list in zip(spec.keys, lesion_geometry):
        file_name = "%06d_%02d_%02d_%03d.png" % (spec.patient_index, spec.study_index,
                                                 spec.series_id, key.slice_index)
        for lesion_type, noisy, points0 in zip(key.types, key.noisy, points_list):
            # CSV is 1-based
            pts = [(csv_float(x + 1.0), csv_float(y + 1.0)) for x, y in points0]
            long_px = math.dist(pts[0], pts[1])
            short_px = math.dist(pts[2], pts[3])
            if short_px > long_px:  # cannot happen with ratio <= 0.95; kept as a safety net
                pts = [pts[2], pts[3], pts[0], pts[1]]
                long_px, short_px = short_px, long_px
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            box = (csv_float(min(xs) - 5), csv_float(min(ys) - 5), csv_float(max(xs) + 5), csv_float(max(ys) + 5))
            centre_x0 = (box[0] + box[2]) / 2 - 1.0
            centre_y0 = (box[1] + box[3]) / 2 - 1.0
            loc_x = float(np.clip((centre_x0 - (body_cx - body_a)) / (2 * body_a), 0.001, 0.999))
            loc_y = float(np.clip((centre_y0 - (body_cy - body_b)) / (2 * body_b), 0.001, 0.999))
            rows.append(LesionRow(
                file_name=file_name,
                patient_index=spec.patient_index,
                study_index=spec.study_index,
                series_id=spec.series_id,
                key_slice_index=key.slice_index,
                measurement_xy_px=tuple(v for p in pts for v in p),
                box_xyxy_px=box,
                diameters_px=(csv_float(long_px), csv_float(short_px)),
                location_xyz=(csv_float(loc_x), csv_float(loc_y), key.z),
                lesion_type=lesion_type if spec.split_code != 1 else -1,
                possibly_noisy=noisy,
                slice_range=key.slice_range,
                spacing_mm=(spec.spacing_mm, spec.spacing_mm, csv_float(spec.dz_mm)),
                image_size_px=(spec.size_px, spec.size_px),
                dicom_window_hu=(csv_float(key.window_hu[0]), csv_float(key.window_hu[1])),
                gender=spec.gender,
                age_years=spec.age_years,
                split_code=spec.split_code,
            ))
    return rows
