"""Find nucleus centres on the DNA channel when the user has no locations file.

Making locations files is where DeepProfiler's users get stuck, so the service offers this classic
recipe: Gaussian smoothing, Otsu threshold, hole filling, small-object removal, a distance-transform
watershed that splits touching nuclei, and one centroid per object. It is a reasonable segmentation
for 20x Hoechst images, not a replacement for CellProfiler on difficult data. scipy and scikit-image
are imported lazily (the ``serve`` extra).
"""

from __future__ import annotations

import logging

import numpy as np

from cpcnn._types import F64Array
from cpcnn.errors import InputError

logger = logging.getLogger(__name__)


def detect_nuclei(
    dna: np.ndarray,
    *,
    sigma: float = 2.0,
    min_area: int = 80,
    min_distance: int = 7,
    max_nuclei: int = 100_000,
) -> F64Array:
    """(H, W) DNA image, any real dtype -> (N, 2) float64 centres, x = column, y = row.

    ``min_area`` (pixels) drops debris; ``min_distance`` (pixels) is the closest two split nuclei may
    be. A flat or empty image gives a (0, 2) array. Rows are ordered by label (top to bottom).
    """
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    image = np.asarray(dna)
    if image.ndim != 2:
        raise InputError(f"nucleus detection needs a 2-D DNA image, got shape {image.shape}")
    if image.size == 0 or not np.isfinite(image).all():
        raise InputError("nucleus detection needs a non-empty DNA image with finite values")
    smooth = gaussian(image.astype(np.float32), sigma=sigma, preserve_range=True)  # type: ignore[no-untyped-call]
    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros((0, 2), np.float64)
    foreground = smooth > threshold_otsu(smooth)  # type: ignore[no-untyped-call]
    foreground = ndimage.binary_fill_holes(foreground)
    foreground = _remove_small(foreground, min_area)
    labels = _split_touching(foreground, min_distance=min_distance)
    n_labels = int(labels.max())
    if n_labels == 0:
        return np.zeros((0, 2), np.float64)
    if n_labels > max_nuclei:
        raise InputError(f"nucleus detection found {n_labels} nuclei, over the limit of {max_nuclei} cells")
    centroids = ndimage.center_of_mass(foreground, labels, index=np.arange(1, n_labels + 1))
    centers = np.asarray(centroids, np.float64).reshape(-1, 2)[:, ::-1]  # (row, col) -> (x, y)
    logger.debug("detected %d nuclei (Otsu + watershed)", centers.shape[0])
    return np.ascontiguousarray(centers)


def _remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects of at most ``min_area`` pixels (scikit-image renamed the argument in 0.26)."""
    from skimage.morphology import remove_small_objects

    try:
        return np.asarray(remove_small_objects(mask, max_size=min_area))
    except TypeError:  # scikit-image < 0.26: min_size keeps objects of at least min_size pixels
        return np.asarray(remove_small_objects(mask, min_size=min_area + 1))


def _split_touching(foreground: np.ndarray, *, min_distance: int) -> np.ndarray:
    """Binary mask -> int32 labels, touching blobs split at distance-transform ridges."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndimage.distance_transform_edt(foreground)
    blobs, _ = ndimage.label(foreground)
    peaks = peak_local_max(  # type: ignore[no-untyped-call]
        distance, min_distance=min_distance, labels=blobs, exclude_border=False
    )
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, peaks.shape[0] + 1, dtype=np.int32)
    labels: np.ndarray = watershed(-distance, markers, mask=foreground)  # type: ignore[no-untyped-call]
    # A blob with no peak (flat plateau) still counts as one nucleus.
    missed = np.setdiff1d(np.unique(blobs[foreground]), np.unique(blobs[labels > 0]))
    next_label = int(labels.max()) + 1
    for blob in missed:
        labels[blobs == blob] = next_label
        next_label += 1
    return labels.astype(np.int32, copy=False)
