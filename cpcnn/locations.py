"""Nucleus locations -> an (N, 2) float64 array of centres, x = column, y = row, in pixels.

Accepted: a CSV (path, bytes or text) with ``Nuclei_Location_Center_X/Y`` (CellProfiler's nuclei
table), ``Location_Center_X/Y`` or ``Metadata_Nuclei_Location_Center_X/Y`` (a cpcnn cells table);
JSON (a list of ``[x, y]`` pairs, a list of ``{"x":, "y":}`` objects, or ``{"x": [...], "y": [...]}``);
an (N, 2) array; or a DataFrame with those columns. Row order is kept: output row i is the cell of
input row i.

``read_locations`` gives the centres; ``load_locations`` also gives each cell's object number, so a
row of features can be joined back to its segmentation: the input's own ``ObjectNumber`` column
(CellProfiler's, or ``Metadata_ObjectNumber``; JSON: an ``ObjectNumber`` list or key) when it has one,
else the 1-based position of the location in the input.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from cpcnn._types import F64Array, I64Array
from cpcnn.errors import InputError

#: Column pairs we accept, in order of preference.
COLUMN_PAIRS: tuple[tuple[str, str], ...] = (
    ("Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"),
    ("Location_Center_X", "Location_Center_Y"),
    ("Metadata_Nuclei_Location_Center_X", "Metadata_Nuclei_Location_Center_Y"),
)
#: Object-number columns we accept, in order of preference.
OBJECT_NUMBER_COLUMNS: tuple[str, ...] = ("ObjectNumber", "Metadata_ObjectNumber")

LocationsSource = str | PathLike[str] | bytes | np.ndarray | Any


@dataclass(frozen=True)
class Locations:
    """The cells of one site: (N, 2) float64 finite centres (x, y) and (N,) int64 unique object numbers."""

    centers: F64Array
    object_numbers: I64Array

    def __len__(self) -> int:
        return int(self.centers.shape[0])

    @classmethod
    def numbered(cls, centers: F64Array, object_numbers: object = None) -> Locations:
        """Validated centres with the given object numbers, or 1..N (input positions) when None."""
        centers = validate_centers(centers)
        if object_numbers is None:
            return cls(centers, np.arange(1, centers.shape[0] + 1, dtype=np.int64))
        return cls(centers, validate_object_numbers(object_numbers, centers.shape[0]))


def read_locations(source: LocationsSource) -> F64Array:
    """Any supported locations source -> (N, 2) float64 finite centres (zero rows is fine)."""
    return load_locations(source).centers


def load_locations(source: LocationsSource) -> Locations:
    """Any supported locations source -> centres and object numbers (see the module notes)."""
    if isinstance(source, np.ndarray):
        return Locations.numbered(source)
    if hasattr(source, "columns") and hasattr(source, "to_numpy"):  # a pandas DataFrame
        names = [str(c) for c in source.columns]
        x_col, y_col = _pick_columns(names)
        number_col = _object_number_column(names)
        numbers = None if number_col is None else source[number_col].to_numpy()
        return Locations.numbered(source[[x_col, y_col]].to_numpy(dtype=np.float64), numbers)
    if isinstance(source, bytes | bytearray):
        return parse_locations(bytes(source).decode("utf-8-sig", errors="replace"))
    path = Path(source)
    if not path.is_file():
        raise InputError(f"locations file {path} does not exist")
    return parse_locations(path.read_text(encoding="utf-8-sig", errors="replace"))


def parse_locations_text(text: str) -> F64Array:
    """CSV or JSON text -> (N, 2) float64 centres."""
    return parse_locations(text).centers


def parse_locations(text: str) -> Locations:
    """CSV or JSON text -> centres and object numbers."""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return _parse_json(stripped)
    return _parse_csv(text)


def parse_locations_csv(text: str) -> F64Array:
    """CSV text with a header naming the centre columns -> (N, 2) float64."""
    return _parse_csv(text).centers


def _parse_csv(text: str) -> Locations:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise InputError("locations CSV is empty (no header row)")
    names = [h.strip() for h in header]
    x_col, y_col = _pick_columns(names)
    ix, iy = names.index(x_col), names.index(y_col)
    number_col = _object_number_column(names)
    inumber = None if number_col is None else names.index(number_col)
    values: list[tuple[float, float]] = []
    numbers: list[str] = []
    for line_number, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            values.append((float(row[ix]), float(row[iy])))
        except (ValueError, IndexError) as exc:
            raise InputError(f"locations CSV line {line_number}: cannot read {x_col}/{y_col} as numbers") from exc
        if inumber is not None:
            numbers.append(row[inumber].strip() if inumber < len(row) else "")
    centers = np.array(values, dtype=np.float64).reshape(-1, 2)
    return Locations.numbered(centers, None if inumber is None else numbers)


def parse_locations_json(text: str) -> F64Array:
    """JSON pairs, objects or column lists -> (N, 2) float64."""
    return _parse_json(text).centers


def _parse_json(text: str) -> Locations:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"locations JSON is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    numbers: Any = None
    try:
        if isinstance(data, dict):
            keys = {k.lower(): k for k in data}
            if "x" in keys and "y" in keys:
                xs, ys = data[keys["x"]], data[keys["y"]]
            else:
                x_col, y_col = _pick_columns(list(data))
                xs, ys = data[x_col], data[y_col]
            if len(xs) != len(ys):
                raise InputError(f"locations JSON has {len(xs)} x values but {len(ys)} y values")
            pairs = list(zip(xs, ys, strict=True))
            number_key = _object_number_column(list(data))
            numbers = None if number_key is None else data[number_key]
        elif isinstance(data, list):
            pairs = [(p["x"], p["y"]) if isinstance(p, dict) else tuple(p) for p in data]
            objects = [p for p in data if isinstance(p, dict)]
            number_key = _object_number_column(list(objects[0])) if objects else None
            if number_key is not None:
                if len(objects) != len(data) or any(number_key not in p for p in objects):
                    raise InputError(f"locations JSON: {number_key} is given for some locations but not all")
                numbers = [p[number_key] for p in objects]
        else:
            raise InputError("locations JSON must be a list of [x, y] pairs or an object with x and y lists")
        array = np.array(pairs, dtype=np.float64).reshape(-1, 2) if pairs else np.zeros((0, 2))
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"locations JSON: each location needs numeric x and y ({exc})") from exc
    return Locations.numbered(array, numbers)


def validate_centers(centers: Any) -> F64Array:
    """Check an (N, 2) array of x, y: numeric, finite. Zero rows give a (0, 2) array."""
    try:
        array = np.asarray(centers, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"locations must be numeric x, y pairs ({exc})") from exc
    if array.size == 0:
        return np.zeros((0, 2), np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputError(f"locations must be an (N, 2) array of x, y; got shape {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise InputError(
            f"{rows.size} location(s) have NaN or infinite coordinates, first at row {int(rows[0])}"
        )
    return np.ascontiguousarray(array)


def validate_object_numbers(values: Any, n_cells: int) -> I64Array:
    """One object number per cell -> (N,) int64: whole numbers >= 0, no repeats (they name cells)."""
    items = list(values) if not isinstance(values, np.ndarray) else values.tolist()
    if len(items) != n_cells:
        raise InputError(f"{len(items)} object numbers for {n_cells} locations")
    numbers = np.empty(n_cells, dtype=np.int64)
    for row, item in enumerate(items):
        try:
            number = float(item)
        except (TypeError, ValueError):
            number = float("nan")
        if not (np.isfinite(number) and number >= 0 and number == int(number) and number < 2**53):
            raise InputError(f"object number {item!r} at row {row} is not a whole number >= 0")
        numbers[row] = int(number)
    unique, counts = np.unique(numbers, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"object number {int(unique[counts > 1][0])} appears more than once in the locations")
    return numbers


def _object_number_column(names: list[str]) -> str | None:
    return next((name for name in OBJECT_NUMBER_COLUMNS if name in names), None)


def _pick_columns(names: list[str]) -> tuple[str, str]:
    for x_col, y_col in COLUMN_PAIRS:
        if x_col in names and y_col in names:
            return x_col, y_col
    wanted = " or ".join(f"{x}/{y}" for x, y in COLUMN_PAIRS)
    raise InputError(f"locations need columns {wanted}; found {', '.join(names[:10]) or 'none'}")
