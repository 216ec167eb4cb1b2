"""Illumination correction functions: one float image per plate and channel that images are divided by.

CellProfiler's ``CorrectIlluminationApply`` (method *Divide*) divides each raw image by the plate's
function; JUMP ships them as ``.npy`` files named in ``load_data_with_illum.csv``. Reading them is
bounded (no pickle, header checked before the data is read) because they come from the same untrusted
places as images.

``compute_illum`` makes one the way the Cell Painting illumination pipelines configure CellProfiler's
``CorrectIlluminationCalculate``: *Regular* intensities, *All: Across cycles* (the mean of every image of
the plate), *Median Filter* smoothing with a manual filter size, rescaled *Yes* (robust minimum). As
confirmed in CellProfiler's source (``modules/correctilluminationcalculate.py``): the filter is a median
over a disk of radius ``max(1, int(size / 2.35 + 0.5))``; the robust minimum is the value at index
``int(0.02 * n)`` of the sorted positive pixels, pixels below it are raised to it and the function is
divided by it, so it is >= 1 everywhere. The Broad's Cell Painting pipelines (imaging-platform-pipelines,
``cell-painting/illum.cppipe``: size 200 at full resolution; newer ones such as
``cellpainting_ipsc_20x_phenix_with_bf_bin1_cp4/illum.cppipe``: resize by 0.1, size 20, resize back by 10,
bilinear) smooth a downsampled mean, and so does this: a disk median of radius 85 over 1080 x 1080 pixels
takes minutes, over the 108 x 108 block means milliseconds, and a function smooth over hundreds of pixels
loses nothing at a tenth of the resolution. Differences: block means (area) instead of bilinear
downsampling, float medians instead of CellProfiler's 16-bit quantized ones, and the scipy median's
``nearest`` border instead of skimage's rank filter ignoring pixels outside the image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from cpcnn._types import F32Array, F64Array
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


#: CellProfiler's ``ROBUST_FACTOR``: the robust minimum is this quantile of the positive pixels.
ROBUST_FACTOR = 0.02
#: The Cell Painting pipelines' median filter size at full resolution (CellProfiler's units, see above).
DEFAULT_FILTER_SIZE = 200
#: Downsampling before the median, as the Broad's pipelines resize by 0.1.
DEFAULT_DOWNSAMPLE = 10


class MeanImage:
    """Running float64 sum of equal-shape planes: memory is one image, whatever the number of sites."""

    def __init__(self) -> None:
        self.total: F64Array | None = None
        self.count = 0

    def add(self, plane: np.ndarray) -> None:
        if plane.ndim != 2:
            raise InputError(f"illumination: images must be 2-D planes, got shape {plane.shape}")
        if self.total is None:
            self.total = np.zeros(plane.shape, np.float64)
        elif plane.shape != self.total.shape:
            raise InputError(
                f"illumination: images differ in size ({plane.shape[1]}x{plane.shape[0]} after "
                f"{self.total.shape[1]}x{self.total.shape[0]}); one function needs one image size"
            )
        self.total += plane
        self.count += 1

    def merge(self, other: MeanImage) -> None:
        """Add another partial sum (from a worker process)."""
        if other.total is None:
            return
        if self.total is None:
            self.total, self.count = other.total.copy(), other.count
            return
        if other.total.shape != self.total.shape:
            raise InputError(
                f"illumination: images differ in size ({other.total.shape} vs {self.total.shape})"
            )
        self.total += other.total
        self.count += other.count

    def mean(self) -> F64Array:
        if self.total is None or self.count == 0:
            raise InputError("illumination: no images to average")
        return self.total / self.count


def compute_illum(
    planes: Iterable[np.ndarray],
    *,
    filter_size: float = DEFAULT_FILTER_SIZE,
    downsample: int = DEFAULT_DOWNSAMPLE,
) -> F32Array:
    """Raw 2-D planes of one plate and channel -> (H, W) float32 function >= 1 to divide them by.

    Streams: only a running sum is kept. See the module docstring for the recipe and its sources.
    """
    mean = MeanImage()
    for plane in planes:
        mean.add(plane)
    return illum_from_mean(mean.mean(), filter_size=filter_size, downsample=downsample)


def illum_from_mean(
    mean: np.ndarray, *, filter_size: float = DEFAULT_FILTER_SIZE, downsample: int = DEFAULT_DOWNSAMPLE
) -> F32Array:
    """(H, W) mean image -> float32 function: block-mean downsample, disk median, robust minimum, bilinear
    upsample back to (H, W)."""
    if filter_size <= 0 or downsample < 1:
        raise InputError(
            f"illumination: filter size must be > 0 and downsampling >= 1, got {filter_size}, {downsample}"
        )
    mean = np.asarray(mean, dtype=np.float64)
    small = _block_mean(mean, downsample)
    radius = max(1, int(filter_size / downsample / 2.35 + 0.5))
    smooth = ndimage.median_filter(small, footprint=_disk(radius), mode="nearest")
    scaled = _robust_minimum_scale(smooth)
    return _bilinear_resize(scaled, mean.shape).astype(np.float32)


def _block_mean(image: F64Array, factor: int) -> F64Array:
    """Mean of each factor x factor block (the last row/column of blocks may be smaller)."""
    if factor == 1:
        return image
    rows = np.arange(0, image.shape[0], factor)
    cols = np.arange(0, image.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(image, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, image.shape[0])), np.diff(np.append(cols, image.shape[1])))
    return sums / counts


def _disk(radius: int) -> np.ndarray:
    """centrosome's ``strel_disk`` (CellProfiler's median footprint): offsets with x^2 + y^2 <= radius^2."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y) <= radius * radius


def _robust_minimum_scale(function: F64Array) -> F64Array:
    """CellProfiler's rescale *Yes*: clip below the 2nd-percentile positive value, divide by it."""
    positive = np.sort(function[function > 0], axis=None)
    if positive.size == 0:
        raise InputError("illumination: the mean image has no positive pixel; cannot make a function")
    robust_minimum = positive[int(positive.size * ROBUST_FACTOR)]
    return np.maximum(function, robust_minimum) / robust_minimum


def _bilinear_resize(image: F64Array, shape: tuple[int, ...]) -> F64Array:
    """Separable bilinear interpolation onto ``shape`` with pixel centres aligned (edges held)."""

    def along(values: F64Array, size: int, axis: int) -> F64Array:
        n = values.shape[axis]
        if n == size:
            return values
        where = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        low = np.floor(where).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        weight = where - low
        shape_w = [1, 1]
        shape_w[axis] = size
        weight = weight.reshape(shape_w)
        return np.take(values, low, axis=axis) * (1 - weight) + np.take(values, high, axis=axis) * weight

    return along(along(image, shape[0], 0), shape[1], 1)
