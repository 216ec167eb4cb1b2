"""2-D maps of profiles for looking at a table: PCA always, UMAP when ``umap-learn`` is installed.

PCA is an SVD of the centred features in float64, so the map is deterministic (each component's sign
is fixed so that its largest loading is positive). Rows with a non-finite feature are left out by the
caller; this module only sees a finite matrix.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import numpy as np

from cpcnn._types import F64Array
from cpcnn.errors import InputError

ProjectionMethod = Literal["pca", "umap"]


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def pca_2d(features: np.ndarray) -> tuple[F64Array, list[float]]:
    """(N, D) -> ((N, 2) coordinates, explained variance ratio of the two components)."""
    matrix = np.asarray(features, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 1:
        raise InputError(f"a profile map needs at least 2 rows and 1 feature, got shape {matrix.shape}")
    centred = matrix - matrix.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    n_components = min(2, components.shape[0])
    components = components[:n_components]
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    coords = np.zeros((matrix.shape[0], 2), np.float64)
    coords[:, :n_components] = centred @ components.T
    total = float((singular**2).sum())
    ratio = [float(s**2 / total) if total > 0 else 0.0 for s in singular[:n_components]]
    return coords, ratio + [0.0] * (2 - n_components)


def umap_2d(features: np.ndarray, *, seed: int = 0) -> F64Array:
    """(N, D) -> (N, 2) UMAP embedding (cosine metric, fixed seed); an input error without umap-learn."""
    if not umap_available():
        raise InputError("method=umap needs the umap-learn package on the server; use method=pca")
    import umap

    matrix = np.asarray(features, np.float64)
    if matrix.shape[0] < 4:
        raise InputError(f"UMAP needs at least 4 rows, got {matrix.shape[0]}")
    reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                        n_neighbors=min(15, matrix.shape[0] - 1))
    return np.asarray(reducer.fit_transform(matrix), np.float64)


def spread_rows(n_rows: int, max_rows: int) -> np.ndarray:
    """Row indices for a bounded map: all rows, or ``max_rows`` evenly spaced ones (deterministic)."""
    if n_rows <= max_rows:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, max_rows).round().astype(np.int64))
