"""Crops against a per-pixel transcription of TensorFlow's crop_and_resize (CPU kernel) + DeepProfiler's boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpcnn.crops import axis_samples, crop_cells, normalize_crops
from cpcnn.errors import InputError


def crop_and_resize_oracle(image: np.ndarray, cx: float, cy: float, box: int = 128) -> np.ndarray:
    """One crop, written the way the reference computes it, one sample at a time, in float32."""
    height, width, channels = image.shape
    f32 = np.float32
    y1 = f32(cy - box / 2) / f32(height)
    y2 = f32(cy + box / 2) / f32(height)
    x1 = f32(cx - box / 2) / f32(width)
    x2 = f32(cx + box / 2) / f32(width)
    hs = (y2 - y1) * f32(height - 1) / f32(box - 1)
    ws = (x2 - x1) * f32(width - 1) / f32(box - 1)
    out = np.zeros((box, box, channels), np.float32)
    for i in range(box):
        in_y = y1 * f32(height - 1) + f32(i) * hs
        if in_y < 0 or in_y > height - 1:
            continue
        top, bottom = math.floor(in_y), math.ceil(in_y)
        y_lerp = f32(in_y - f32(top))
        for j in range(box):
            in_x = x1 * f32(width - 1) + f32(j) * ws
            if in_x < 0 or in_x > width - 1:
                continue
            left, right = math.floor(in_x), math.ceil(in_x)
            x_lerp = f32(in_x - f32(left))
            t = image[top, left] + (image[top, right] - image[top, left]) * x_lerp
            b = image[bottom, left] + (image[bottom, right] - image[bottom, left]) * x_lerp
            out[i, j] = t + (b - t) * y_lerp
    return out


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 65535, size=(300, 260, 5)).astype(np.float32)


CENTERS = np.array(
    [
        [130.0, 150.0],  # well inside
        [64.0, 64.0],  # box touches the top-left corner
        [0.0, 0.0],  # centre on the corner: three quarters zero-filled
        [259.0, 299.0],  # bottom-right corner
        [10.3, 200.7],  # fractional, near the left edge
        [-50.0, 120.0],  # centre outside, box partly inside
        [200.25, 310.5],  # centre below the image, box partly inside
    ]
)


def test_raw_samples_match_reference_arithmetic(image: np.ndarray) -> None:
    crops = crop_cells(image, CENTERS, normalization=None)
    for row, (cx, cy) in enumerate(CENTERS):
        expected = crop_and_resize_oracle(image, cx, cy)
        scale = np.abs(expected).max()
        assert np.abs(crops[row] - expected).max() <= 1e-6 * scale, f"row {row}"


def test_border_cells_are_zero_filled_not_shifted(image: np.ndarray) -> None:
    crops = crop_cells(image, np.array([[0.0, 0.0]]), normalization=None)[0]
    assert np.all(crops[:60, :, :] == 0) and np.all(crops[:, :60, :] == 0)
    assert np.all(crops[70:, 70:, :] > 0)


def test_crop_is_a_resample_not_a_slice(image: np.ndarray) -> None:
    crop = crop_cells(image, np.array([[130.0, 150.0]]), normalization=None)[0]
    assert not np.array_equal(crop, image[86:214, 66:194])


def test_normalization_minmax_matches_deepprofiler_formula(image: np.ndarray) -> None:
    raw = crop_cells(image, CENTERS, normalization=None)
    normalized = crop_cells(image, CENTERS, normalization="minmax")
    low = raw.min(axis=(1, 2), keepdims=True)
    high = raw.max(axis=(1, 2), keepdims=True)
    expected = (raw - low) / (high - low + np.float32(1e-7))
    np.testing.assert_allclose(normalized, expected, rtol=1e-6, atol=1e-7)
    assert normalized.min() >= 0 and normalized.max() <= 1


def test_paper_normalization_differs_and_handles_dark_crops() -> None:
    crops = np.zeros((2, 4, 4, 2), np.float32)
    crops[0, :, :, 0] = np.arange(16).reshape(4, 4) + 10
    paper = normalize_crops(crops.copy(), "minmax_paper")
    assert np.isclose(paper[0, 3, 3, 0], 15 / 25)
    assert np.all(paper[1] == 0) and np.isfinite(paper).all()


def test_box_entirely_outside_names_the_row(image: np.ndarray) -> None:
    centers = np.array([[100.0, 100.0], [100.0, 100.0], [500.0, 100.0]])
    with pytest.raises(InputError, match=r"row 2 \(x=500, y=100\)"):
        crop_cells(image, centers)


def test_zero_cells_give_zero_rows(image: np.ndarray) -> None:
    assert crop_cells(image, np.zeros((0, 2))).shape == (0, 128, 128, 5)


def test_nan_coordinates_rejected(image: np.ndarray) -> None:
    with pytest.raises(InputError, match="NaN"):
        crop_cells(image, np.array([[1.0, np.nan]]))


def test_axis_samples_scale_is_not_one() -> None:
    samples = axis_samples(np.array([540.0]), 1080)
    step = np.diff(samples.floor[0] + samples.weight[0])
    assert np.allclose(step, 128 * 1079 / 1080 / 127, atol=1e-4)


def test_flat_channel_normalizes_to_zero_not_nan() -> None:
    crops = np.full((1, 8, 8, 2), 1000.0, np.float32)
    crops[0, 2, 3, 1] = 1500.0
    out = normalize_crops(crops.copy(), "minmax")
    assert np.all(out[..., 0] == 0)
    assert out[0, 2, 3, 1] == np.float32(500) / (np.float32(1500) - (np.float32(1000) - np.float32(1e-7)))


def test_out_buffer_is_filled_and_checked(image: np.ndarray) -> None:
    out = np.empty((len(CENTERS), 128, 128, 5), np.float32)
    assert crop_cells(image, CENTERS, out=out) is not None
    np.testing.assert_array_equal(out, crop_cells(image, CENTERS))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        crop_cells(image, CENTERS, out=np.empty((2, 128, 128, 5), np.float32))
