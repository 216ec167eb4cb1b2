"""Cosine similarity and exact top-k search over row-normalized float32 profiles.

Zero-norm rows (norm < eps) are left as zero vectors by ``normalize_rows``, so they score 0 against
everything instead of NaN. ``top_k_cosine`` is exact: ties are ordered by library row index.
"""

from __future__ import annotations

import numpy as np

from cpcnn._types import F32Array, I64Array

#: Library rows scored per matrix product; bounds the score block to (queries x BLOCK_ROWS) float32.
BLOCK_ROWS = 32_768
#: Columns per segment when bounding the k-th score (see ``_block_top_k``).
_SEGMENT = 256


def normalize_rows(
    rows: np.ndarray, *, eps: float = 1e-12, dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """(N, D) float -> (N, D) unit rows (float32, or ``dtype``); rows with norm < eps (or NaN) become all-zero rows."""
    x = np.asarray(rows, dtype=dtype)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    ok = np.isfinite(norms) & (norms >= eps)
    scale = np.zeros(len(x), dtype=np.float64)
    scale[ok] = 1.0 / norms[ok]
    out = (x * scale[:, None].astype(dtype)).astype(dtype)
    out[~ok] = 0.0
    return out


def cosine_similarity(queries: np.ndarray, library: np.ndarray, *, eps: float = 1e-12) -> F32Array:
    """(Q, D), (N, D) float -> (Q, N) float32 in [-1, 1]; rows with norm < eps score 0, never NaN."""
    return normalize_rows(queries, eps=eps) @ normalize_rows(library, eps=eps).T


def _first_k(row: I64Array, col: I64Array, val: F32Array, q: int, k: int) -> tuple[F32Array, I64Array]:
    """Candidates (row, col, score), at least k per row -> (q, k) best scores and columns, ties by column."""
    order = np.lexsort((col, -val, row))
    row, col, val = row[order], col[order], val[order]
    take = (np.searchsorted(row, np.arange(q))[:, None] + np.arange(k)).ravel()
    return val[take].reshape(q, k), col[take].reshape(q, k)


def _block_top_k(scores: F32Array, k: int) -> tuple[F32Array, I64Array]:
    """(Q, B) float32 -> (Q, k) scores and column indices, best first, ties by index; k <= B.

    The k-th best score of a row is at least the k-th largest of its segment maxima, so only segments
    whose maximum reaches that bound can hold winners: a cheap max-reduction replaces a full partition.
    Every candidate tied with the bound is kept, so ties resolve by index exactly.
    """
    q, b = scores.shape
    n_seg = -(-b // _SEGMENT)
    if n_seg < 4 * k:
        bound = np.partition(scores, b - k, axis=1)[:, b - k]
        rows, cols = np.nonzero(scores >= bound[:, None])
        return _first_k(rows, cols.astype(np.int64), scores[rows, cols], q, k)
    if n_seg * _SEGMENT != b:
        pad = np.full((q, n_seg * _SEGMENT - b), -np.inf, dtype=np.float32)
        scores = np.concatenate([scores, pad], axis=1)
    segments = scores.reshape(q, n_seg, _SEGMENT)
    seg_max = segments.max(axis=2)
    bound = np.partition(seg_max, n_seg - k, axis=1)[:, n_seg - k]
    rows, segs = np.nonzero(seg_max >= bound[:, None])
    cand = segments[rows, segs]
    hit_i, hit_j = np.nonzero(cand >= bound[rows][:, None])
    col = segs[hit_i].astype(np.int64) * _SEGMENT + hit_j
    return _first_k(rows[hit_i], col, cand[hit_i, hit_j], q, k)


def top_k_cosine(
    queries: F32Array,
    library: F32Array,
    *,
    k: int,
    exclude: I64Array | None = None,
    block_rows: int = BLOCK_ROWS,
) -> tuple[F32Array, I64Array]:
    """(Q, D) unit float32 queries, (N, D) unit float32 library -> (Q, k') scores, (Q, k') int64 rows.

    k' = min(k, N - 1) when ``exclude`` is given (library row to skip per query, -1 for none), else
    min(k, N). Best first; ties by library row. Inputs must be normalized (``normalize_rows``);
    ``library`` may be a read-only memory map. Memory: one (Q, block_rows) float32 score block.
    """
    n = library.shape[0]
    k_eff = min(k, n - 1 if exclude is not None else n)
    q = queries.shape[0]
    if k_eff <= 0 or q == 0:
        return np.empty((q, 0), np.float32), np.empty((q, 0), np.int64)
    best_val: list[F32Array] = []
    best_idx: list[I64Array] = []
    for start in range(0, n, block_rows):
        block = np.asarray(library[start : start + block_rows], dtype=np.float32)
        scores = queries @ block.T
        if exclude is not None:
            hit = (exclude >= start) & (exclude < start + len(block))
            scores[np.flatnonzero(hit), exclude[hit] - start] = -np.inf
        val, idx = _block_top_k(scores, min(k_eff, len(block)))
        best_val.append(val)
        best_idx.append(idx + start)
    vals = np.concatenate(best_val, axis=1)
    idx = np.concatenate(best_idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)[:, :k_eff]
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)
