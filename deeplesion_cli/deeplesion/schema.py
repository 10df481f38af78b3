"""DL_info.csv: the 18-column schema, a validating reader and a byte-exact writer.

Coordinates are kept exactly as the CSV states them: **1-based pixels** in the image's native
size (the official 3DCE/MULAN loaders subtract 1; :meth:`LesionRow.box_xyxy_px0` does the same).
The format facts (minimal quoting, ``", "`` inside quoted fields, ``%g`` numbers, ``NaN`` ages)
are in ``docs/deeplesion.md`` section 1 and in ``docs/formats.md``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import LesionInputError

#: A DeepLesion folder holds ``DL_info.csv`` and ``Images_png/PPPPPP_SS_EE/KKK.png`` (the release's
#: layout; ``lesion synth`` writes it, ``lesion prepare`` reads it).
CSV_NAME = "DL_info.csv"
IMAGES_DIR = "Images_png"

HEADER = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
)

#: Coarse_lesion_type code -> name. -1 means unlabelled (every official training row).
LESION_TYPES = {
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft_tissue",
    8: "pelvis",
}
UNLABELLED_TYPE = -1

#: Train_Val_Test code -> split name.
SPLIT_CODES = {1: "train", 2: "val", 3: "test"}


@dataclass(frozen=True, eq=False)
class LesionRow:
    """One row of DL_info.csv (one lesion), with the CSV's own units and 1-based pixel coordinates.

    ``row`` is the 1-based data-row number (the header is row 0) and ``line`` the 1-based line
    number in the file, so that error messages can point at either.
    """

    file_name: str
    patient_index: int
    study_index: int
    series_id: int
    key_slice_index: int
    #: RECIST end points x11, y11, x12, y12 (long axis), x21, y21, x22, y22 (short axis), 1-based px.
    measurement_xy_px: tuple[float, ...]
    #: x1, y1, x2, y2, 1-based pixels, the RECIST extremes +-5 px.
    box_xyxy_px: tuple[float, float, float, float]
    #: long, short RECIST diameters in pixels.
    diameters_px: tuple[float, float]
    #: relative body position x, y, z in (0, 1).
    location_xyz: tuple[float, float, float]
    lesion_type: int
    possibly_noisy: int
    #: first, last slice index of the block on disk around the key slice (1-based, inclusive).
    slice_range: tuple[int, int]
    #: pixel spacing x, y and slice interval z, all in mm.
    spacing_mm: tuple[float, float, float]
    #: as written in the CSV; every real image is square, so the order (W,H or H,W) is moot.
    image_size_px: tuple[int, int]
    #: default display window low, high in HU.
    dicom_window_hu: tuple[float, float]
    gender: str
    #: age in years; NaN when the CSV says NaN.
    age_years: float
    split_code: int
    row: int = field(default=0, compare=False)
    line: int = field(default=0, compare=False)

    @property
    def series_dir(self) -> str:
        """``PPPPPP_SS_EE``: the folder under Images_png (File_name split at the last underscore)."""
        return self.file_name.rsplit("_", 1)[0]

    @property
    def stem(self) -> str:
        return self.file_name[:-4] if self.file_name.endswith(".png") else self.file_name

    @property
    def split(self) -> str:
        return SPLIT_CODES[self.split_code]

    def slice_path(self, images_dir: Path, slice_index: int) -> Path:
        """Path of slice ``slice_index`` (1-based) of this row's series under ``Images_png``."""
        return images_dir / self.series_dir / f"{slice_index:03d}.png"

    def _content(self) -> tuple:
        # row/line are positions, not content; a NaN age becomes None because NaN != NaN.
        return tuple(None if f.name == "age_years" and math.isnan(self.age_years)
                     else getattr(self, f.name) for f in fields(self) if f.compare)

    def __eq__(self, other) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._content() == other._content()

    def __hash__(self) -> int:
        return hash(self._content())

    def box_xyxy_px0(self) -> tuple[float, float, float, float]:
        """The box in 0-based pixel coordinates (CSV value - 1), as the official loaders use it."""
        x1, y1, x2, y2 = self.box_xyxy_px
        return (x1 - 1.0, y1 - 1.0, x2 - 1.0, y2 - 1.0)


@dataclass(frozen=True)
class RowError:
    """Why one row (or one row's image) cannot be used."""

    row: int
    line: int
    column: str
    value: str
    reason: str
    file_name: str = ""

    def __str__(self) -> str:
        where = f"row {self.row} (line {self.line})" if self.row else f"line {self.line}"
        return f"{where}, column {self.column}, value {self.value!r}: {self.reason}"


class SchemaError(LesionInputError):
    """The file as a whole cannot be read as DL_info.csv (missing, empty, wrong header); a
    ValueError (exit 2)."""


# --------------------------------------------------------------------------------------- writing


def format_number(value: float) -> str:
    """Format one number as DL_info.csv does: C ``%g`` (6 significant digits), ``NaN`` for NaN."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    text = "%g" % value
    return "0" if text == "-0" else text


def _field(values) -> str:
    if isinstance(values, (tuple, list)):
        text = ", ".join(format_number(v) for v in values)
        return f'"{text}"' if len(values) > 1 else text
    if isinstance(values, str):
        return values
    return format_number(values)


def format_row(row: LesionRow) -> str:
    """One CSV line without its terminator, with the real file's minimal quoting."""
    values = (
        row.file_name,
        row.patient_index,
        row.study_index,
        row.series_id,
        row.key_slice_index,
        row.measurement_xy_px,
        row.box_xyxy_px,
        row.diameters_px,
        row.location_xyz,
        row.lesion_type,
        row.possibly_noisy,
        row.slice_range,
        row.spacing_mm,
        row.image_size_px,
        row.dicom_window_hu,
        row.gender,
        row.age_years,
        row.split_code,
    )
    return ",".join(_field(v) for v in values)


def format_csv(rows, newline: str = "\r\n") -> bytes:
    """The whole file as bytes: the header and one line per row, each ended by ``newline``."""
    lines = [",".join(HEADER)] + [format_row(r) for r in rows]
    return (newline.join(lines) + newline).encode("ascii")


# --------------------------------------------------------------------------------------- reading

# column name -> (number of values, parser) for the numeric columns
_INT, _FLOAT = int, float
_COLUMNS = {
    "Patient_index": (1, _INT),
    "Study_index": (1, _INT),
    "Series_ID": (1, _INT),
    "Key_slice_index": (1, _INT),
    "Measurement_coordinates": (8, _FLOAT),
    "Bounding_boxes": (4, _FLOAT),
    "Lesion_diameters_Pixel_": (2, _FLOAT),
    "Normalized_lesion_location": (3, _FLOAT),
    "Coarse_lesion_type": (1, _INT),
    "Possibly_noisy": (1, _INT),
    "Slice_range": (2, _INT),
    "Spacing_mm_px_": (3, _FLOAT),
    "Image_size": (2, _INT),
    "DICOM_windows": (2, _FLOAT),
    "Patient_age": (1, _FLOAT),
    "Train_Val_Test": (1, _INT),
}


def _parse_numbers(text: str, count: int, kind) -> tuple:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count:
        raise ValueError(f"expected {count} number{'s' if count > 1 else ''}, found {len(parts)}")
    out = []
    for p in parts:
        if kind is _INT:
            # The real file writes integers plainly; accept "5.0" but not "5.5".
            f = float(p)
            if not f.is_integer():
                raise ValueError(f"{p!r} is not an integer")
            out.append(int(f))
        else:
            f = float(p)
            if math.isinf(f):
                raise ValueError(f"{p!r} is not finite")
            out.append(f)
    return tuple(out)


def _check_row(row: LesionRow) -> list[tuple[str, str, str]]:
    """Semantic checks; each problem is (column, value, reason)."""
    problems = []
    expected = "%06d_%02d_%02d_%03d.png" % (
        row.patient_index, row.study_index, row.series_id, row.key_slice_index)
    if row.file_name != expected:
        problems.append(("File_name", row.file_name,
                         f"inconsistent with Patient_index/Study_index/Series_ID/Key_slice_index "
                         f"(expected {expected})"))
    if row.lesion_type != UNLABELLED_TYPE and row.lesion_type not in LESION_TYPES:
        problems.append(("Coarse_lesion_type", str(row.lesion_type),
                         "unknown lesion type (expected -1 or 1..8)"))
    if row.split_code not in SPLIT_CODES:
        problems.append(("Train_Val_Test", str(row.split_code),
                         "unknown split code (expected 1, 2 or 3)"))
    if row.possibly_noisy not in (0, 1):
        problems.append(("Possibly_noisy", str(row.possibly_noisy), "expected 0 or 1"))
    first, last = row.slice_range
    if not (1 <= first <= row.key_slice_index <= last):
        problems.append(("Slice_range", f"{first}, {last}",
                         f"does not contain Key_slice_index {row.key_slice_index} (1-based)"))
    width, height = row.image_size_px
    if width <= 0 or height <= 0:
        problems.append(("Image_size", f"{width}, {height}", "non-positive image size"))
    if row.spacing_mm[0] <= 0 or row.spacing_mm[1] <= 0 or math.isnan(row.spacing_mm[0]):
        problems.append(("Spacing_mm_px_", ", ".join(map(format_number, row.spacing_mm)),
                         "pixel spacing must be positive"))
    lo, hi = row.dicom_window_hu
    if not lo < hi:
        problems.append(("DICOM_windows", f"{format_number(lo)}, {format_number(hi)}",
                         "window low must be below high"))
    if row.gender not in ("M", "F"):
        problems.append(("Patient_gender", row.gender, "expected M or F"))
    x1, y1, x2, y2 = row.box_xyxy_px0()
    box_text = ", ".join(format_number(v) for v in row.box_xyxy_px)
    if any(math.isnan(v) for v in (x1, y1, x2, y2)):
        problems.append(("Bounding_boxes", box_text, "box has NaN coordinates"))
    elif x2 <= x1 or y2 <= y1:
        problems.append(("Bounding_boxes", box_text, "box has non-positive width or height"))
    elif x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
        problems.append(("Bounding_boxes", box_text,
                         f"box lies entirely outside the {width}x{height} image"))
    return problems


def header_difference(header: list[str]) -> str:
    """The first place where ``header`` (line 1, split at commas) departs from :data:`HEADER`,
    in words: the column number, what is there and what DL_info.csv has."""
    found = [h.strip() for h in header]
    if len(found) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs")):
            if sep in found[0]:
                return (f"its columns are separated by {name}; DL_info.csv separates them by "
                        f"commas (column 1 should be {HEADER[0]!r})")
    for number, (want, got) in enumerate(zip(HEADER, found), 1):
        if want != got:
            hint = ""
            if number == 1 and got.lower().endswith(".png"):
                hint = " (the header line seems to be missing: line 1 is a data row)"
            return f"column {number} is {got[:60]!r} where DL_info.csv has {want!r}{hint}"
    if len(found) < len(HEADER):
        missing = HEADER[len(found)]
        return (f"it has {len(found)} columns, DL_info.csv has {len(HEADER)}: column "
                f"{len(found) + 1} {missing!r} is missing")
    return (f"it has {len(found)} columns, DL_info.csv has {len(HEADER)}: column "
            f"{len(HEADER) + 1} {found[len(HEADER)][:60]!r} comes after {HEADER[-1]!r}")


def parse_text(text: str, source: str = "DL_info.csv") -> tuple[list[LesionRow], list[RowError]]:
    """Parse DL_info.csv text (CRLF or LF) into rows and the errors of rows that cannot be used.

    A row with any error is not returned in ``rows``; every problem of it is in ``errors``.
    Raises :class:`SchemaError` if the header is not the 18-column DeepLesion header.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SchemaError(f"{source}: the file is empty (expected the DL_info.csv header)") from None
    if tuple(h.strip() for h in header) != HEADER:
        raise SchemaError(f"{source}: line 1 is not the DL_info.csv header: "
                          f"{header_difference(header)}")
    rows: list[LesionRow] = []
    errors: list[RowError] = []
    row_number = 0
    for fields in reader:
        line = reader.line_num
        if not fields or fields == [""]:
            continue  # a trailing blank line
        row_number += 1
        file_name = fields[0] if fields else ""
        if len(fields) != len(HEADER):
            errors.append(RowError(row_number, line, "(row)", ",".join(fields)[:80],
                                   f"expected {len(HEADER)} columns, found {len(fields)}",
                                   file_name))
            continue
        values = dict(zip(HEADER, fields))
        parsed = {}
        bad = []
        for column, (count, kind) in _COLUMNS.items():
            raw = values[column].strip()
            if column == "Patient_age" and raw in ("NaN", "nan", ""):
                parsed[column] = (math.nan,)
                continue
            try:
                parsed[column] = _parse_numbers(raw, count, kind)
            except ValueError as exc:
                bad.append(RowError(row_number, line, column, raw, f"cannot parse: {exc}",
                                    file_name))
        if bad:
            errors.extend(bad)
            continue
        row = LesionRow(
            file_name=values["File_name"].strip(),
            patient_index=parsed["Patient_index"][0],
            study_index=parsed["Study_index"][0],
            series_id=parsed["Series_ID"][0],
            key_slice_index=parsed["Key_slice_index"][0],
            measurement_xy_px=parsed["Measurement_coordinates"],
            box_xyxy_px=parsed["Bounding_boxes"],
            diameters_px=parsed["Lesion_diameters_Pixel_"],
            location_xyz=parsed["Normalized_lesion_location"],
            lesion_type=parsed["Coarse_lesion_type"][0],
            possibly_noisy=parsed["Possibly_noisy"][0],
            slice_range=parsed["Slice_range"],
            spacing_mm=parsed["Spacing_mm_px_"],
            image_size_px=parsed["Image_size"],
            dicom_window_hu=parsed["DICOM_windows"],
            gender=values["Patient_gender"].strip(),
            age_years=parsed["Patient_age"][0],
            split_code=parsed["Train_Val_Test"][0],
            row=row_number,
            line=line,
        )
        problems = _check_row(row)
        if problems:
            errors.extend(RowError(row_number, line, c, v, r, file_name) for c, v, r in problems)
            continue
        rows.append(row)
    return rows, errors


def read_csv(path: Path) -> tuple[list[LesionRow], list[RowError]]:
    """Read and validate DL_info.csv at ``path``; see :func:`parse_text`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read DL_info.csv: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not a text file (byte {exc.start} is not UTF-8/ASCII)") from None
    return parse_text(text, source=str(path))
