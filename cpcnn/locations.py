"""Nucleus locations -> an (N, 2) float64 array of centres, x = column, y = row, in pixels.

Accepted: a CSV (path, bytes or text) with ``Nuclei_Location_Center_X/Y`` (CellProfiler's nuclei
table) or ``Location_Center_X/Y``; JSON (a list of ``[x, y]`` pairs, a list of ``{"x":, "y":}``
objects, or ``{"x": [...], "y": [...]}``); an (N, 2) array; or a DataFrame with those columns.
Row order is kept: output row i is the cell of input row i.
"""

from __future__ import annotations

import csv
import io
import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from cpcnn._types import F64Array
from cpcnn.errors import InputError

#: Column pairs we accept, in order of preference.
COLUMN_PAIRS: tuple[tuple[str, str], ...] = (
    ("Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"),
    ("Location_Center_X", "Location_Center_Y"),
)

LocationsSource = str | PathLike[str] | bytes | np.ndarray | Any


def read_locations(source: LocationsSource) -> F64Array:
    """Any supported locations source -> (N, 2) float64 finite centres (zero rows is fine)."""
    if isinstance(source, np.ndarray):
        return validate_centers(source)
    if hasattr(source, "columns") and hasattr(source, "to_numpy"):  # a pandas DataFrame
        x_col, y_col = _pick_columns([str(c) for c in source.columns])
        return validate_centers(source[[x_col, y_col]].to_numpy(dtype=np.float64))
    if isinstance(source, bytes | bytearray):
        return parse_locations_text(bytes(source).decode("utf-8-sig", errors="replace"))
    path = Path(source)
    if not path.is_file():
        raise InputError(f"locations file {path} does not exist")
    return parse_locations_text(path.read_text(encoding="utf-8-sig", errors="replace"))


def parse_locations_text(text: str) -> F64Array:
    """CSV or JSON text -> (N, 2) float64 centres."""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return parse_locations_json(stripped)
    return parse_locations_csv(text)


def parse_locations_csv(text: str) -> F64Array:
    """CSV text with a header naming the centre columns -> (N, 2) float64."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise InputError("locations CSV is empty (no header row)")
    names = [h.strip() for h in header]
    x_col, y_col = _pick_columns(names)
    ix, iy = names.index(x_col), names.index(y_col)
    values: list[tuple[float, float]] = []
    for line_number, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            values.append((float(row[ix]), float(row[iy])))
        except (ValueError, IndexError) as exc:
            raise InputError(f"locations CSV line {line_number}: cannot read {x_col}/{y_col} as numbers") from exc
    return validate_centers(np.array(values, dtype=np.float64).reshape(-1, 2))


def parse_locations_json(text: str) -> F64Array:
    """JSON pairs, objects or column lists -> (N, 2) float64."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"locations JSON is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
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
        elif isinstance(data, list):
            pairs = [(p["x"], p["y"]) if isinstance(p, dict) else tuple(p) for p in data]
        else:
            raise InputError("locations JSON must be a list of [x, y] pairs or an object with x and y lists")
        array = np.array(pairs, dtype=np.float64).reshape(-1, 2) if pairs else np.zeros((0, 2))
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"locations JSON: each location needs numeric x and y ({exc})") from exc
    return validate_centers(array)


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


def _pick_columns(names: list[str]) -> tuple[str, str]:
    for x_col, y_col in COLUMN_PAIRS:
        if x_col in names and y_col in names:
            return x_col, y_col
    wanted = " or ".join(f"{x}/{y}" for x, y in COLUMN_PAIRS)
    raise InputError(f"locations need columns {wanted}; found {', '.join(names[:10]) or 'none'}")
