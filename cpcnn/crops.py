"""Single-cell crops sampled exactly as DeepProfiler 0.5.1 samples them.

DeepProfiler feeds each field of view to TensorFlow's ``crop_and_resize`` with a box of side B around
every nucleus, normalized by the image size. The result is a bilinear resample at a scale of
``B*(size-1)/size/(B-1)`` (not an integer slice), with samples outside the image set to 0. We reproduce
that arithmetic in float32, separably (rows, then columns), which gives the same values up to float32
rounding order, then normalize each crop and channel by its own min and max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cpcnn._types import CROP_SIZE, F32Array, F64Array, I64Array, Normalization
from cpcnn.errors import InputError
from cpcnn.locations import validate_centers

#: ``tf.keras.backend.epsilon()``, in DeepProfiler 0.5.1's min-max normalization.
MINMAX_EPSILON = np.float32(1e-7)


@dataclass(frozen=True)
class AxisSamples:
    """Where the B output samples of each cell fall along one image axis.

    ``floor`` (N, B) int64: pixel index at or below each sample (may lie outside the image);
    ``weight`` (N, B) float32: interpolation weight of pixel ``floor + 1``;
    ``valid`` (N, B) bool: the sample lies inside the image (TensorFlow's extrapolation test).
    """

    floor: I64Array
    weight: F32Array
    valid: np.ndarray


def axis_samples(centers: F64Array, size_px: int, *, crop_size: int = CROP_SIZE) -> AxisSamples:
    """(N,) float64 centres along an axis of ``size_px`` pixels -> sample positions of N crops.

    Mirrors DeepProfiler's boxes (float64 centre minus B/2, stored as float32, divided by the
    size in float32) and TensorFlow's ``in = lo*(size-1) + i*(hi-lo)*(size-1)/(B-1)`` in float32.
    """
    half = crop_size / 2
    size32 = np.float32(size_px)
    lo = (centers - half).astype(np.float32) / size32
    hi = (centers + half).astype(np.float32) / size32
    scale = (hi - lo) * np.float32(size_px - 1) / np.float32(crop_size - 1)
    steps = np.arange(crop_size, dtype=np.float32)
    positions = lo[:, None] * np.float32(size_px - 1) + steps[None, :] * scale[:, None]
    valid = (positions >= 0) & (positions <= np.float32(size_px - 1))
    floor = np.floor(positions)
    # TensorFlow interpolates between floor and ceil; where they coincide the weight is exactly 0,
    # so interpolating towards floor + 1 instead gives bit-identical values.
    weight = (positions - floor).astype(np.float32)
    return AxisSamples(floor=floor.astype(np.int64), weight=weight, valid=valid)


def check_boxes_overlap(centers: F64Array, height: int, width: int, *, crop_size: int = CROP_SIZE) -> None:
    """Raise InputError naming the first rows whose box lies entirely outside the image.

    DeepProfiler silently returns an all-zero crop (NaN features after normalization) there.
    """
    ys = axis_samples(centers[:, 1], height, crop_size=crop_size)
    xs = axis_samples(centers[:, 0], width, crop_size=crop_size)
    _raise_if_outside(centers, ys, xs, height, width, crop_size)


def _raise_if_outside(
    centers: F64Array, ys: AxisSamples, xs: AxisSamples, height: int, width: int, crop_size: int
) -> None:
    outside = np.flatnonzero(~(ys.valid.any(axis=1) & xs.valid.any(axis=1)))
    if outside.size:
        first = outside[:5]
        where = ", ".join(f"row {i} (x={centers[i, 0]:g}, y={centers[i, 1]:g})" for i in first)
        more = f" and {outside.size - first.size} more" if outside.size > first.size else ""
        raise InputError(
            f"{outside.size} location(s) put the {crop_size}x{crop_size} box entirely outside the "
            f"{width}x{height} image: {where}{more}"
        )


def crop_cells(
    image: F32Array,
    centers: F64Array,
    *,
    crop_size: int = CROP_SIZE,
    normalization: Normalization | None = "minmax",
    out: F32Array | None = None,
) -> F32Array:
    """image (H, W, C) float32 + centers (N, 2) float64 (x = column, y = row) -> (N, B, B, C) float32.

    Zero cells give a (0, B, B, C) array. A box entirely outside the image is an InputError;
    partly outside is zero-filled like the reference. ``normalization=None`` returns raw samples.
    ``out``: a C-contiguous (N, B, B, C) float32 array to fill; reusing one saves the page faults of
    a fresh 0.3 MB-per-cell allocation, which cost more than the cropping itself.
    """
    if image.ndim != 3:
        raise InputError(f"image must be (height, width, channels), got shape {image.shape}")
    height, width, n_channels = image.shape
    centers = validate_centers(centers)
    n_cells = centers.shape[0]
    if n_cells == 0:
        return np.zeros((0, crop_size, crop_size, n_channels), np.float32) if out is None else out
    ys = axis_samples(centers[:, 1], height, crop_size=crop_size)
    xs = axis_samples(centers[:, 0], width, crop_size=crop_size)
    _raise_if_outside(centers, ys, xs, height, width, crop_size)
    image = np.asarray(image, dtype=np.float32)
    partial = ~(ys.valid.all(axis=1) & xs.valid.all(axis=1))
    y_runs, x_runs = _runs(ys.floor), _runs(xs.floor)

    # One cell at a time keeps the ~0.3 MB working set in the CPU cache: streaming whole-batch
    # passes over N x B x B x C floats costs several times more than the per-cell call overhead.
    # Arrays are viewed as (rows, columns * C) so every inner loop runs over contiguous memory.
    plane = image.reshape(height, width * n_channels)
    x_weight = np.repeat(xs.weight, n_channels, axis=1)  # (N, B * C)
    shape = (n_cells, crop_size, crop_size, n_channels)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    crops = out.reshape(n_cells, crop_size, crop_size * n_channels)
    rows = np.empty((crop_size + 2, crop_size * n_channels), np.float32)
    for cell in range(n_cells):
        top, left = int(ys.floor[cell, 0]), int(xs.floor[cell, 0])
        window = _window(
            plane, n_channels, top, int(ys.floor[cell, -1]) + 2, left, int(xs.floor[cell, -1]) + 2
        )
        n_rows = window.shape[0]
        # Columns first, as TensorFlow does: every window row interpolated along x ...
        for start, end, pixel in x_runs[cell]:
            a, b, p = start * n_channels, end * n_channels, (pixel - left) * n_channels
            _lerp_into(
                rows[:n_rows, a:b],
                window[:, p : p + b - a],
                window[:, p + n_channels : p + n_channels + b - a],
                x_weight[cell, a:b],
            )
        # ... then those rows interpolated along y.
        for start, end, pixel in y_runs[cell]:
            p = pixel - top
            _lerp_into(
                crops[cell, start:end],
                rows[p : p + end - start],
                rows[p + 1 : p + 1 + end - start],
                ys.weight[cell, start:end, None],
            )
    crops = crops.reshape(n_cells, crop_size, crop_size, n_channels)
    for cell in np.flatnonzero(partial):
        crops[cell] *= (ys.valid[cell, :, None] & xs.valid[cell, None, :])[..., None]
    if normalization is not None:
        normalize_crops(crops, normalization, out=crops)
    return crops


def _runs(floor: I64Array) -> list[list[tuple[int, int, int]]]:
    """(N, B) sample floors -> per cell, runs (out_start, out_end, first_pixel) of consecutive pixels.

    The crop scale is just above 1, so a row of 128 samples is two runs: one pixel is skipped.
    """
    breaks = np.diff(floor, axis=1) != 1
    runs = []
    for cell in range(floor.shape[0]):
        edges = [0, *(np.flatnonzero(breaks[cell]) + 1).tolist(), floor.shape[1]]
        runs.append([(a, b, int(floor[cell, a])) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return runs


def _window(plane: F32Array, n_channels: int, top: int, bottom: int, left: int, right: int) -> F32Array:
    """(H, W * C) image rows [top, bottom) x pixels [left, right): a view, or a zero-padded copy where
    the window leaves the image (border cells)."""
    height, width = plane.shape[0], plane.shape[1] // n_channels
    if top >= 0 and left >= 0 and bottom <= height and right <= width:
        return plane[top:bottom, left * n_channels : right * n_channels]
    window = np.zeros((bottom - top, (right - left) * n_channels), np.float32)
    y0, y1 = max(top, 0), min(bottom, height)
    x0, x1 = max(left, 0), min(right, width)
    if y0 < y1 and x0 < x1:
        window[y0 - top : y1 - top, (x0 - left) * n_channels : (x1 - left) * n_channels] = plane[
            y0:y1, x0 * n_channels : x1 * n_channels
        ]
    return window


def _lerp_into(out: F32Array, low: F32Array, high: F32Array, weight: F32Array) -> None:
    """``out = low + (high - low) * weight`` in TensorFlow's operation order, without temporaries."""
    np.subtract(high, low, out=out)
    out *= weight
    out += low


def normalize_crops(crops: F32Array, method: Normalization, *, out: F32Array | None = None) -> F32Array:
    """(N, B, B, C) float32 -> same shape, each crop and channel scaled by its own min and max.

    ``minmax``: DeepProfiler 0.5.1's ``(x - min) / (max - min + 1e-7)``, evaluated as its TensorFlow
    graph actually runs it after constant folding, ``(x - min) / (max - (min - 1e-7))`` in float32.
    There a channel that is flat at a value above ~2 divides 0 by 0 and turns the whole cell's
    features into NaN; we return 0 for a flat channel instead (the formula's intent, and what the
    reference gives for flat channels near 0).
    ``minmax_paper``: releases used for the paper, ``(x - min) / max``; a channel whose max is 0 is 0.
    """
    n_cells, side, _, n_channels = crops.shape
    # Reduce whole contiguous rows first (fast, vectorized), then the short remainder; apply the
    # per-channel statistics tiled along the row so inner loops stay contiguous.
    rows = crops.reshape(n_cells, side, side * n_channels)
    low = rows.min(axis=1).reshape(n_cells, side, n_channels).min(axis=1)
    high = rows.max(axis=1).reshape(n_cells, side, n_channels).max(axis=1)
    if method == "minmax":
        denominator = high - (low - MINMAX_EPSILON)
    elif method == "minmax_paper":
        denominator = high
    else:
        raise InputError(f"unknown normalization {method!r}; expected 'minmax' or 'minmax_paper'")
    low_row = np.tile(low, side)[:, None, :]  # (N, 1, B * C)
    denominator_row = np.tile(denominator, side)[:, None, :]
    result = np.subtract(rows, low_row, out=None if out is None else out.reshape(rows.shape))
    if np.all(denominator > 0):
        result /= denominator_row
    else:
        np.divide(result, denominator_row, out=result, where=denominator_row > 0)
        result *= denominator_row > 0
    return result.reshape(crops.shape)
