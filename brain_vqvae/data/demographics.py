"""OASIS demographics tables, joined to the loaded subjects by session id.

The tables are oasis_cross-sectional.csv (OASIS-1, session id column "ID") and
oasis_longitudinal.csv (OASIS-2, "MRI ID"), given or found in the data folder or up to three
folders above it. A table needs its session id column; of Age, M/F, CDR and MMSE it needs at
least one, and each one it lacks reads as blank (None).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from .slices import DataError, SliceSet

__all__ = [
    "CROSS_SECTIONAL_COLUMNS",
    "CROSS_SECTIONAL_FILE",
    "join_demographics",
    "read_demographics_tables",
]

CROSS_SECTIONAL_FILE = "oasis_cross-sectional.csv"
# The header of the OASIS-1 table, in its order (the demo builder writes it too).
CROSS_SECTIONAL_COLUMNS = (
    "ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay",
)  # fmt: skip
_DEMOGRAPHICS_FILES = (CROSS_SECTIONAL_FILE, "oasis_longitudinal.csv")
_DEMOGRAPHICS_SEARCH_DEPTH = 3  # folders above the data in which to look for the tables
_DEMOGRAPHIC_COLUMNS = {"age": "Age", "sex": "M/F", "cdr": "CDR", "mmse": "MMSE"}
_SESSION_ID_COLUMNS = ("ID", "MRI ID")  # cross-sectional, longitudinal
_MISSING_VALUES = frozenset({"", "N/A", "NA", "NaN"})


def read_demographics_tables(
    root: Path, demographics_csv: str | os.PathLike | None, problems: list[str]
) -> dict[str, dict]:
    """{session id: demographics} from `demographics_csv` or the OASIS tables in/above `root`."""
    if demographics_csv is not None:
        files = [Path(demographics_csv).expanduser()]
        if not files[0].is_file():
            raise DataError(f"{files[0]}: demographics CSV not found")
    else:
        files = _find_demographics_files(root)
    table = {}
    for file in files:
        table.update(_read_demographics(file, problems))
    return table


def join_demographics(
    table: dict[str, dict], splits: dict[str, SliceSet], problems: list[str]
) -> dict[str, dict]:
    """The rows of `table` for the subjects in `splits`; subjects without a row are counted in
    `problems`."""
    subject_ids = sorted({str(s) for slice_set in splits.values() for s in slice_set.subject_ids})
    joined = {subject_id: table[subject_id] for subject_id in subject_ids if subject_id in table}
    if table and len(joined) < len(subject_ids):
        problems.append(
            f"{len(subject_ids) - len(joined)} of {len(subject_ids)} subjects have no row "
            "in the demographics table"
        )
    return joined


def _find_demographics_files(root: Path) -> list[Path]:
    """The OASIS tables in the data folder or up to _DEMOGRAPHICS_SEARCH_DEPTH folders above."""
    folder = root if root.is_dir() else root.parent
    places = [folder, *list(folder.parents)[:_DEMOGRAPHICS_SEARCH_DEPTH]]
    found = []
    for name in _DEMOGRAPHICS_FILES:
        match = next((place / name for place in places if (place / name).is_file()), None)
        if match is not None:
            found.append(match)
    return found


def _read_demographics(csv_file: Path, problems: list[str]) -> dict[str, dict]:
    """Rows of an OASIS table (oasis_cross-sectional.csv or oasis_longitudinal.csv) by session."""
    try:
        with csv_file.open(newline="", encoding="utf-8-sig") as handle:
            return _parse_demographics(csv.DictReader(handle), csv_file, problems)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{csv_file}: cannot read the table ({error})") from None


def _parse_demographics(
    reader: csv.DictReader, csv_file: Path, problems: list[str]
) -> dict[str, dict]:
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    id_column = next((name for name in _SESSION_ID_COLUMNS if name in reader.fieldnames), None)
    present = [name for name in _DEMOGRAPHIC_COLUMNS.values() if name in reader.fieldnames]
    if id_column is None or not present:
        raise DataError(
            f"{csv_file}: not an OASIS demographics table: needs a column "
            f"{' or '.join(_SESSION_ID_COLUMNS)} and at least one of "
            f"{', '.join(_DEMOGRAPHIC_COLUMNS.values())}; header is {','.join(reader.fieldnames)}"
        )
    return {
        row[id_column].strip(): _demographic_record(row, f"{csv_file}:{reader.line_num}", problems)
        for row in reader
        if (row.get(id_column) or "").strip()
    }


def _demographic_record(row: dict[str, str], where: str, problems: list[str]) -> dict:
    record: dict[str, Any] = {}
    for key, column in _DEMOGRAPHIC_COLUMNS.items():
        text = (row.get(column) or "").strip()
        if text in _MISSING_VALUES:
            record[key] = None
        elif key == "sex":
            record[key] = text.upper()
        else:
            try:
                record[key] = float(text)
            except ValueError:
                problems.append(f"{where}: {column} {text!r} is not a number; left blank")
                record[key] = None
    return record
