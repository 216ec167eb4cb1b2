"""Illumination correction functions: one float image per plate and channel that images are divided by.

CellProfiler's ``CorrectIlluminationApply`` (method *Divide*) divides each raw image by the plate's
function; JUMP ships them as ``.npy`` files named in ``load_data_with_illum.csv``. Reading them is
bounded (no pickle, header checked before the data is read) because they come from the same untrusted
places as images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpcnn._types import F32Array
from cpcnn.errors import InputError
from cpcnn.io.npy import read_npy_header


def read_illum(path: Path, *, shape: tuple[int, int] | None = None) -> F32Array:
    """A 2-D ``.npy`` illumination function -> float32; ``shape`` (H, W) must match when given."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            declared, _, dtype = read_npy_header(handle, f"illumination function {path.name}")
            if len(declared) != 2 or dtype.kind not in "fiu" or dtype.hasobject:
                raise InputError(
                    f"illumination function {path.name} must be a 2-D numeric array, got {dtype} {declared}"
                )
            if shape is not None and tuple(declared) != tuple(shape):
                raise InputError(
                    f"illumination function {path.name} is {declared[0]}x{declared[1]}, "
                    f"images are {shape[0]}x{shape[1]}"
                )
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"illumination function {path} does not exist") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"illumination function {path.name} is not a readable .npy file: {exc}") from exc
    function = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(function)) or np.any(function <= 0):
        raise InputError(f"illumination function {path.name} must be finite and positive everywhere")
    return function


def apply_illum(plane: np.ndarray, function: F32Array) -> F32Array:
    """CellProfiler's *Divide*: raw plane / illumination function, as float32 (same shape required)."""
    if plane.shape != function.shape:
        raise InputError(f"illumination function is {function.shape}, image plane is {plane.shape}")
    return np.divide(plane, function, dtype=np.float32)
