"""Nucleus locations -> an (N, 2) float64 array of centres, x = column, y = row, in pixels.

Accepted: a CSV (path, bytes or text) with ``Nuclei_Location_Center_X/Y`` (CellProfiler's nuclei
table), ``Location_Center_X/Y`` or ``Metadata_Nuclei_Location_Center_X/Y`` (a cpcnn cells table);
JSON (a list of ``[x, y]`` pairs, a list of ``{"x":, "y":}`` objects, or ``{"x": [...], "y": [...]}``,
numbers only; any other shape is an error, never a guess); an (N, 2) array; or a DataFrame with those
columns. Row order is kept: output row i is the cell of input row i.

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
from cpcnn.errors import InputError, PayloadTooLarge

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


def parse_locations_text(text: str, *, max_cells: int | None = None) -> F64Array:
    """CSV or JSON text -> (N, 2) float64 centres; more than ``max_cells`` rows is PayloadTooLarge."""
    return parse_locations(text, max_cells=max_cells).centers


def parse_locations(text: str, *, max_cells: int | None = None) -> Locations:
    """CSV or JSON text -> centres and object numbers; more than ``max_cells`` rows is PayloadTooLarge.

    Rows are counted while parsing, so an oversized file is refused before it is held in memory.
    """
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return _parse_json(stripped, max_cells)
    return _parse_csv(text, max_cells)


def _too_many(max_cells: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"more than {max_cells} locations is over the limit of {max_cells} cells per job")


def parse_locations_csv(text: str, *, max_cells: int | None = None) -> F64Array:
    """CSV text with a header naming the centre columns -> (N, 2) float64."""
    return _parse_csv(text, max_cells).centers


def _parse_csv(text: str, max_cells: int | None) -> Locations:
    reader = csv.reader(io.StringIO(text))
    try:
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
            if max_cells is not None and len(values) >= max_cells:
                raise _too_many(max_cells)
            try:
                values.append((float(row[ix]), float(row[iy])))
            except (ValueError, IndexError) as exc:
                raise InputError(f"locations CSV line {line_number}: cannot read {x_col}/{y_col} as numbers") from exc
            if inumber is not None:
                numbers.append(row[inumber].strip() if inumber < len(row) else "")
    except csv.Error as exc:
        raise InputError(f"locations CSV is malformed at line {reader.line_num}: {exc}") from exc
    centers = np.array(values, dtype=np.float64).reshape(-1, 2)
    return Locations.numbered(centers, None if inumber is None else numbers)


_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"
_SHAPES = "a list of [x, y] pairs, a list of {\"x\": x, \"y\": y} objects, or {\"x\": [...], \"y\": [...]}"


def parse_locations_json(text: str, *, max_cells: int | None = None) -> F64Array:
    """JSON pairs, objects or column lists -> (N, 2) float64; any other shape is an InputError."""
    return _parse_json(text.lstrip(), max_cells).centers


def _parse_json(text: str, max_cells: int | None) -> Locations:
    """JSON pairs, objects or column lists -> Locations; any other shape is an InputError.

    The outer list (or the column lists) is walked one element at a time, so nesting depth,
    number sizes and the cell count are checked before more than one element is in memory.
    """
    numbers: list[float] | None = None
    try:
        if text.startswith("["):
            points, end = _json_list(text, 0, max_cells, _json_point)
            pairs = [(x, y) for x, y, _ in points]
            numbered = [number for _, _, number in points if number is not None]
            if numbered:
                if len(numbered) != len(points):
                    raise InputError("locations JSON: ObjectNumber is given for some locations but not all")
                numbers = numbered
        else:
            pairs, numbers, end = _json_columns(text, max_cells)
        end = _skip_space(text, end)
        if end != len(text):
            raise InputError(f"locations JSON has extra data after position {end}")
    except json.JSONDecodeError as exc:
        raise InputError(f"locations JSON is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    except RecursionError as exc:
        raise InputError("locations JSON is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        if isinstance(exc, InputError):
            raise
        raise InputError(f"locations JSON: {str(exc).splitlines()[0][:120]}") from exc
    array = np.array(pairs, dtype=np.float64).reshape(-1, 2) if pairs else np.zeros((0, 2))
    return Locations.numbered(array, numbers)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in _SPACE:
        at += 1
    return at


def _expect(text: str, at: int, char: str) -> int:
    at = _skip_space(text, at)
    if at >= len(text) or text[at] != char:
        raise json.JSONDecodeError(f"Expecting '{char}'", text, at)
    return at + 1


def _json_list(
    text: str, at: int, max_items: int | None, item: Any, *, over: Any = _too_many
) -> tuple[list[Any], int]:
    """Decode ``[a, b, ...]`` at ``at`` element by element -> (items, index after ``]``).

    ``item(text, at, index)`` decodes one element and returns (value, index after it); a list
    longer than ``max_items`` raises ``over(max_items)`` as soon as the extra element is reached.
    """
    at = _expect(text, at, "[")
    items: list[Any] = []
    at = _skip_space(text, at)
    if at < len(text) and text[at] == "]":
        return items, at + 1
    while True:
        if max_items is not None and len(items) >= max_items:
            raise over(max_items)
        value, at = item(text, _skip_space(text, at), len(items))
        items.append(value)
        at = _skip_space(text, at)
        if at < len(text) and text[at] == ",":
            at += 1
            continue
        return items, _expect(text, at, "]")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"locations JSON: {where} is {json.dumps(value)[:40]}, expected a number; use {_SHAPES}")
    try:
        return float(value)
    except OverflowError as exc:
        raise InputError(f"locations JSON: {where} is too large for a coordinate") from exc


def _json_number(text: str, at: int, where: str) -> tuple[float, int]:
    """One JSON number at ``at`` (a container there is refused before it is decoded)."""
    if at < len(text) and text[at] in "[{":
        raise InputError(f"locations JSON: {where} is not a number; use {_SHAPES}")
    value, end = _DECODER.raw_decode(text, at)
    return _number(value, where), end


def _json_point(text: str, at: int, index: int) -> tuple[tuple[float, float, float | None], int]:
    """One location: ``[x, y]`` or ``{"x": x, "y": y}`` (optionally with an object number key)
    -> ((x, y, object number or None), index after it)."""
    if at < len(text) and text[at] == "[":
        values, end = _json_list(
            text, at, 2, lambda t, a, i: _json_number(t, a, f"{'xy'[i]} of location {index}"),
            over=lambda _n: _not_a_point(index),
        )
        if len(values) == 2:
            return (values[0], values[1], None), end
    elif at < len(text) and text[at] == "{":
        point: dict[str, float] = {}
        at = _skip_space(text, at + 1)
        while at < len(text) and text[at] != "}":
            key, at = _DECODER.raw_decode(text, at) if text[at] == '"' else (None, at)
            if key not in ("x", "y", *OBJECT_NUMBER_COLUMNS) or key in point:
                break
            point[key], at = _json_number(text, _skip_space(text, _expect(text, at, ":")), f"{key} of location {index}")
            at = _skip_space(text, at)
            if at < len(text) and text[at] == ",":
                at = _skip_space(text, at + 1)
        else:
            if "x" in point and "y" in point:
                number_key = _object_number_column(list(point))
                if len(point) == 2 + (number_key is not None):
                    number = None if number_key is None else point[number_key]
                    return (point["x"], point["y"], number), _expect(text, at, "}")
    elif at < len(text) and text[at] not in ",]":
        _DECODER.raw_decode(text, at)  # invalid JSON is reported as such
    raise _not_a_point(index)


def _not_a_point(index: int) -> InputError:
    return InputError(
        f'locations JSON: location {index} is not an [x, y] pair or an {{"x", "y"}} object (each location needs '
        f"numeric x and y); use {_SHAPES}"
    )


def _json_columns(
    text: str, max_cells: int | None
) -> tuple[list[tuple[float, float]], list[float] | None, int]:
    """``{"x": [...], "y": [...]}`` (or CellProfiler's column names), optionally with an ``ObjectNumber``
    list -> pairs, object numbers (None when absent), index after ``}``."""
    at = _expect(text, 0, "{")
    columns: dict[str, list[float]] = {}
    at = _skip_space(text, at)
    while at < len(text) and text[at] != "}":
        key, at = _DECODER.raw_decode(text, at)
        if not isinstance(key, str) or key in columns:
            raise InputError(f"locations JSON object keys must be distinct names; use {_SHAPES}")
        coordinates = [name for name in columns if name not in OBJECT_NUMBER_COLUMNS]
        if key not in OBJECT_NUMBER_COLUMNS and len(coordinates) >= 2:
            raise InputError(f"locations JSON object has more than the two columns x and y; use {_SHAPES}")
        if key in OBJECT_NUMBER_COLUMNS and _object_number_column(list(columns)) is not None:
            raise InputError("locations JSON object has more than one object number column")
        at = _expect(text, at, ":")
        values, at = _json_list(text, at, max_cells, lambda t, a, i, k=key: _json_number(t, a, f"{k}[{i}]"))
        columns[key] = values
        at = _skip_space(text, at)
        if at < len(text) and text[at] == ",":
            at = _skip_space(text, at + 1)
    at = _expect(text, at, "}")
    number_key = _object_number_column(list(columns))
    numbers = None if number_key is None else columns.pop(number_key)
    lower = {k.lower(): k for k in columns}
    if set(lower) == {"x", "y"}:
        xs, ys = columns[lower["x"]], columns[lower["y"]]
    else:
        x_col, y_col = _pick_columns(list(columns))
        xs, ys = columns[x_col], columns[y_col]
    if len(xs) != len(ys):
        raise InputError(f"locations JSON has {len(xs)} x values but {len(ys)} y values")
    return list(zip(xs, ys, strict=True)), numbers, at


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
        except (TypeError, ValueError, OverflowError):
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
