"""Illumination functions: read bounded and checked, applied as CellProfiler's Divide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpcnn.errors import InputError
from cpcnn.illum import apply_illum, read_illum


def test_divides_raw_plane_by_function(tmp_path: Path) -> None:
    function = np.linspace(0.5, 2.0, 12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "f.npy", function)
    plane = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    corrected = apply_illum(plane, read_illum(tmp_path / "f.npy", shape=(3, 4)))
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected, plane / function, rtol=1e-6)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((3, 5)), "is 3x5, images are 3x4"),
        (np.ones((2, 3, 4)), "must be a 2-D numeric array"),
        (np.array([[1.0, 0.0, 1.0, 1.0]] * 3), "finite and positive"),
        (np.array([[1.0, np.nan, 1.0, 1.0]] * 3), "finite and positive"),
        (np.array([["a"] * 4] * 3), "must be a 2-D numeric array"),
    ],
)
def test_bad_functions_are_named(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "f.npy", array)
    with pytest.raises(InputError, match=message):
        read_illum(tmp_path / "f.npy", shape=(3, 4))


def test_pickled_or_missing_files_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="2-D numeric"):
        read_illum(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match="junk.npy"):
        read_illum(tmp_path / "junk.npy")
    with pytest.raises(InputError, match="does not exist"):
        read_illum(tmp_path / "absent.npy")
