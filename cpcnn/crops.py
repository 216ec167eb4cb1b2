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

#: ``tf.keras.backend.epsilon()``, in DeepProfiler 0.5.1's min-max normalization.
MINMAX_EPSILON = np.float32(1e-7)


@dataclass(frozen=True)
class AxisSamples:
    """Where the B output samples of each cell fall along one image axis.

    ``low``/``high`` (N, B) int64: neighbouring pixel indices, clipped into the image;
    ``weight`` (N, B) float32: interpolation weight of ``high``; ``valid`` (N, B) bool: inside the image.
    """

    low: I64Array
    high: I64Array
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
    weight = (positions - floor).astype(np.float32)
    low = np.clip(floor, 0, size_px - 1).astype(np.int64)
    high = np.clip(np.ceil(positions), 0, size_px - 1).astype(np.int64)
    return AxisSamples(low=low, high=high, weight=weight, valid=valid)


def check_boxes_overlap(centers: F64Array, height: int, width: int, *, crop_size: int = CROP_SIZE) -> None:
    """Raise InputError naming the first rows whose box lies entirely outside the image.

    DeepProfiler silently returns an all-zero crop (NaN features after normalization) there.
    """
    rows = axis_samples(centers[:, 1], height, crop_size=crop_size).valid.any(axis=1)
    cols = axis_samples(centers[:, 0], width, crop_size=crop_size).valid.any(axis=1)
    outside = np.flatnonzero(~(rows & cols))
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
) -> F32Array:
    """image (H, W, C) float32 + centers (N, 2) float64 (x = column, y = row) -> (N, B, B, C) float32.

    Zero cells give a (0, B, B, C) array. A box entirely outside the image is an InputError;
    partly outside is zero-filled like the reference. ``normalization=None`` returns raw samples.
    """
    if image.ndim != 3:
        raise InputError(f"image must be (height, width, channels), got shape {image.shape}")
    height, width, n_channels = image.shape
    centers = _as_centers(centers)
    n_cells = centers.shape[0]
    if n_cells == 0:
        return np.zeros((0, crop_size, crop_size, n_channels), np.float32)
    check_boxes_overlap(centers, height, width, crop_size=crop_size)
    ys = axis_samples(centers[:, 1], height, crop_size=crop_size)
    xs = axis_samples(centers[:, 0], width, crop_size=crop_size)
    image = np.ascontiguousarray(image, dtype=np.float32)

    # Columns first (as TensorFlow does): for every cell, interpolate the rows it needs along x.
    # A cell's row samples span at most B+1 consecutive pixel rows starting at ys.low[:, 0].
    span = crop_size + 2
    row_start = ys.low[:, 0]
    row_index = np.minimum(row_start[:, None] + np.arange(span)[None, :], height - 1)  # (N, span)
    flat = image.reshape(height * width, n_channels)
    base = row_index[:, :, None] * width  # (N, span, 1)
    rows = _lerp(
        np.take(flat, base + xs.low[:, None, :], axis=0),  # (N, span, B, C)
        np.take(flat, base + xs.high[:, None, :], axis=0),
        xs.weight[:, None, :, None],
    )

    # Then rows: pick the top and bottom x-interpolated rows of every output row, as whole blocks.
    block = rows.reshape(n_cells * span, crop_size * n_channels)
    local = (np.arange(n_cells) * span - row_start)[:, None]
    shape = (n_cells, crop_size, crop_size, n_channels)
    crops = _lerp(
        np.take(block, (local + ys.low).ravel(), axis=0).reshape(shape),
        np.take(block, (local + ys.high).ravel(), axis=0).reshape(shape),
        ys.weight[:, :, None, None],
    )

    partial = np.flatnonzero(~(ys.valid.all(axis=1) & xs.valid.all(axis=1)))
    if partial.size:
        inside = ys.valid[partial, :, None] & xs.valid[partial, None, :]
        crops[partial] *= inside[..., None]
    if normalization is not None:
        normalize_crops(crops, normalization, out=crops)
    return crops


def _lerp(low: F32Array, high: F32Array, weight: F32Array) -> F32Array:
    """``low + (high - low) * weight`` in place in ``low`` (TensorFlow's operation order)."""
    high -= low
    high *= weight
    low += high
    return low


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
    # Reduce whole contiguous rows first (fast, vectorized), then the short remainder.
    rows = crops.reshape(n_cells, side, side * n_channels)
    low = rows.min(axis=1).reshape(n_cells, 1, side, n_channels).min(axis=2, keepdims=True)
    high = rows.max(axis=1).reshape(n_cells, 1, side, n_channels).max(axis=2, keepdims=True)
    if method == "minmax":
        denominator = high - (low - MINMAX_EPSILON)
    elif method == "minmax_paper":
        denominator = high
    else:
        raise InputError(f"unknown normalization {method!r}; expected 'minmax' or 'minmax_paper'")
    result = np.subtract(crops, low, out=out)
    if np.all(denominator > 0):
        result /= denominator
    else:
        np.divide(result, denominator, out=result, where=denominator > 0)
        result *= denominator > 0
    return result


def _as_centers(centers: F64Array) -> F64Array:
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise InputError(f"locations must be an (N, 2) array of x, y; got shape {centers.shape}")
    if not np.isfinite(centers).all():
        bad = int(np.flatnonzero(~np.isfinite(centers).all(axis=1))[0])
        raise InputError(f"location row {bad} has a NaN or infinite coordinate")
    return centers
