"""A non-learned reference profile: per-channel intensity and texture statistics of each cell's crop.

Learned features are only worth their training if they beat something simple. These statistics are
computed on exactly the crops the network sees (cut and normalized by :class:`cpcnn.batching.SiteCrops`
with the model's normalization), so a difference in retrieval comes from the representation, not
from different pixels. Per channel, on the (normalized) crop:

- intensity distribution: ``mean``, ``std``, percentiles ``p75``, ``p50``, ``p95``;
- ``gradient_energy``: mean squared forward difference (x and y), i.e. how much edge there is;
- ``laplacian_variance``: variance of the 4-neighbour Laplacian, the classic focus/fine-texture measure;
- ``haralick_contrast``: Haralick's grey-level co-occurrence contrast, sum p(i, j) (i - j)^2 over
  horizontally and vertically adjacent pixel pairs quantized to ``HARALICK_LEVELS`` grey levels, which
  equals the mean squared level difference of adjacent pixels.

Features are named ``baseline_<Channel>_<statistic>`` (``baseline_DNA_mean`` ...), channel-major, so
every profile command takes them as features by the default rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cpcnn._types import CHANNELS, CROP_SIZE, F32Array, F64Array, Normalization
from cpcnn.batching import SiteCrops
from cpcnn.io.cells import cells_table
from cpcnn.locations import Locations

FEATURE_PREFIX = "baseline"
#: Model name written in ``Metadata_Model`` of baseline cells tables.
BASELINE_MODEL = "baseline-crop-statistics"
STATISTICS: tuple[str, ...] = (
    "mean",
    "std",
    "p50",
    "p75",
    "p95",
    "gradient_energy",
    "laplacian_variance",
    "haralick_contrast",
)
PERCENTILES: tuple[float, ...] = (50.0, 75.0, 95.0)
#: Grey levels of the co-occurrence contrast (normalized crops lie in [0, 1]).
HARALICK_LEVELS = 8


def feature_names(channels: Sequence[str] = CHANNELS) -> list[str]:
    """``baseline_<Channel>_<statistic>`` for every channel, then every statistic (column order)."""
    return [f"{FEATURE_PREFIX}_{channel}_{stat}" for channel in channels for stat in STATISTICS]


def crop_statistics(crops: F32Array) -> F32Array:
    """(N, S, S, C) crops -> (N, C x len(STATISTICS)) float32, channel-major as :func:`feature_names`."""
    if crops.ndim != 4:
        raise ValueError(f"crops must be (cells, height, width, channels), got shape {crops.shape}")
    x = np.moveaxis(np.asarray(crops, dtype=np.float32), 3, 1)  # (N, C, S, S)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    stats = [flat.mean(axis=2), flat.std(axis=2)]
    stats.extend(np.percentile(flat, PERCENTILES, axis=2))
    dx, dy = np.diff(x, axis=3), np.diff(x, axis=2)
    stats.append(0.5 * ((dx * dx).mean(axis=(2, 3)) + (dy * dy).mean(axis=(2, 3))))
    laplacian = x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:] + x[:, :, :-2, 1:-1] + x[:, :, 2:, 1:-1] - 4 * x[:, :, 1:-1, 1:-1]
    stats.append(laplacian.reshape(n, c, -1).var(axis=2))
    levels = np.clip(np.floor(x * HARALICK_LEVELS), 0, HARALICK_LEVELS - 1)
    qx, qy = np.diff(levels, axis=3), np.diff(levels, axis=2)
    stats.append(0.5 * ((qx * qx).mean(axis=(2, 3)) + (qy * qy).mean(axis=(2, 3))))
    return np.stack(stats, axis=2).reshape(n, c * len(STATISTICS)).astype(np.float32)


def site_statistics(
    image: F32Array,
    centers: F64Array,
    *,
    crop_size: int = CROP_SIZE,
    normalization: Normalization | None = "minmax",
) -> F32Array:
    """A site (H, W, C) and its cell centres (N, 2) -> (N, C x len(STATISTICS)) baseline features.

    Cropped by :class:`SiteCrops` (same checks, sampling and normalization as embedding), chunk by chunk.
    """
    site = SiteCrops.check(image, centers, crop_size=crop_size, normalization=normalization)
    out = np.empty((len(site), image.shape[2] * len(STATISTICS)), np.float32)
    for rows, crops in site.chunks():
        out[rows] = crop_statistics(crops)
    return out


def baseline_cells(
    image: F32Array,
    locations: Locations,
    *,
    metadata: Mapping[str, Any],
    channels: Sequence[str] = CHANNELS,
    normalization: Normalization | None = "minmax",
) -> Any:  # pyarrow.Table
    """A cells table (the ``cpcnn embed`` metadata columns) with baseline features instead of CNN ones."""
    if image.shape[2] != len(channels):
        raise ValueError(f"image has {image.shape[2]} channels, names given for {len(channels)}")
    features = site_statistics(image, locations.centers, normalization=normalization)
    table = cells_table(
        features, locations, metadata=metadata, model_name=BASELINE_MODEL, feature_prefix=FEATURE_PREFIX
    )
    n_meta = table.num_columns - features.shape[1]
    return table.rename_columns([*table.column_names[:n_meta], *feature_names(channels)])
