"""Illumination functions: read bounded and checked, applied as CellProfiler's Divide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpcnn.errors import InputError
from cpcnn.illum import (
    ROBUST_FACTOR,
    MeanImage,
    _bilinear_resize,
    _block_mean,
    _disk,
    _robust_minimum_scale,
    apply_illum,
    compute_illum,
    illum_from_mean,
    read_illum,
)


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


# --- computing a function: CellProfiler's Regular / All / Median Filter / rescale Yes ----------------------


def _gradient(height: int = 240, width: int = 300) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return 1.0 + 0.8 * (x / width) + 0.4 * np.exp(-(((y - 60) / 90.0) ** 2))


def _cells(truth: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """Sparse bright blobs over a dim background, every plane shaded by ``truth``."""
    rng = np.random.default_rng(seed)
    planes = []
    for _ in range(n):
        plane = rng.gamma(4.0, 25.0, truth.shape)
        for cy, cx in rng.integers(0, truth.shape, size=(20, 2)):
            plane[max(cy - 4, 0) : cy + 4, max(cx - 4, 0) : cx + 4] += 400
        planes.append(np.clip(plane * truth, 0, 65535).astype(np.uint16))
    return planes


def test_computed_function_follows_the_shading_and_is_at_least_one() -> None:
    truth = _gradient()
    function = compute_illum(iter(_cells(truth, 12)), filter_size=60, downsample=4)
    assert function.dtype == np.float32 and function.shape == truth.shape
    assert np.corrcoef(function.ravel(), truth.ravel())[0, 1] > 0.98
    assert function.min() == 1.0
    # the robust minimum: about 2% of the pixels sit at the clipped minimum 1
    assert 0.005 < np.mean(function <= 1.0 + 1e-6) < 0.06
    flat = np.mean([p / function for p in _cells(truth, 4, seed=1)], axis=0)
    assert np.corrcoef(flat.ravel(), truth.ravel())[0, 1] < 0.3


def test_robust_minimum_is_cellprofilers_index() -> None:
    rng = np.random.default_rng(3)
    smooth = rng.uniform(0.0, 10.0, (37, 41))
    smooth[:3] = 0.0  # zeros are not candidates
    positive = sorted(float(v) for v in smooth.ravel() if v > 0)
    robust = positive[int(len(positive) * ROBUST_FACTOR)]
    expected = np.maximum(smooth, robust) / robust
    np.testing.assert_allclose(_robust_minimum_scale(smooth), expected)


def test_median_footprint_and_size_follow_cellprofiler() -> None:
    # centrosome strel_disk(2): x^2 + y^2 <= 4 (13 pixels); radius = int(size / 2.35 + 0.5)
    assert _disk(2).sum() == 13 and _disk(1).sum() == 5
    flat = np.full((50, 60), 7.0)
    np.testing.assert_array_equal(illum_from_mean(flat, filter_size=20, downsample=3), np.ones((50, 60), np.float32))


def test_block_mean_and_bilinear_resize_keep_a_linear_ramp() -> None:
    ramp = np.add.outer(np.arange(40.0), 2 * np.arange(50.0))
    small = _block_mean(ramp, 5)
    np.testing.assert_allclose(small[0, 0], ramp[:5, :5].mean())
    back = _bilinear_resize(small, ramp.shape)
    np.testing.assert_allclose(back[5:-5, 5:-5], ramp[5:-5, 5:-5], atol=1e-9)
    assert _block_mean(np.ones((11, 7)), 4).shape == (3, 2)


def test_streaming_mean_merges_partial_sums() -> None:
    planes = _cells(_gradient(40, 30), 5)
    whole, first, second = MeanImage(), MeanImage(), MeanImage()
    for p in planes:
        whole.add(p)
    for p in planes[:2]:
        first.add(p)
    for p in planes[2:]:
        second.add(p)
    first.merge(second)
    np.testing.assert_allclose(first.mean(), whole.mean())
    assert first.count == 5


def test_compute_refuses_mixed_sizes_and_nothing() -> None:
    with pytest.raises(InputError, match="images differ in size"):
        compute_illum([np.ones((4, 5)), np.ones((5, 4))], filter_size=5)
    with pytest.raises(InputError, match="no images to average"):
        compute_illum([], filter_size=5)
    with pytest.raises(InputError, match="filter size must be > 0"):
        compute_illum([np.ones((4, 5))], filter_size=0)
    with pytest.raises(InputError, match="no positive pixel"):
        compute_illum([np.zeros((4, 5))], filter_size=5, downsample=1)
