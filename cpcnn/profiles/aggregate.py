"""Aggregation of profiles by group: cells -> site (median), sites -> well (mean), wells -> treatment (mean).

Rows with any NaN feature are dropped and counted before grouping (the paper drops such cells);
groups left without rows are skipped. Output rows carry the grouping columns, ``Metadata_Count_Cells``
(the sum of the input's cell counts, or the number of input rows when the input is single cells) and
``Metadata_Count_Rows`` (input rows per group), then float32 features. Groups appear in order of
first appearance. Grouping keys may hold NaN: it forms its own group. Only the grouping columns are
kept; add annotation columns that are constant within a group (e.g. ``Metadata_moa`` per treatment)
to ``by`` to carry them along. ``aggregate_files`` streams inputs too large for memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from cpcnn._types import F32Array, F64Array, I64Array
from cpcnn.errors import InputError
from cpcnn.profiles.tables import COUNT_CELLS, COUNT_ROWS, check_finite, feature_columns, feature_matrix

logger = logging.getLogger(__name__)

Op = Literal["median", "mean"]
OPS: tuple[str, ...] = ("median", "mean")


@dataclass(frozen=True)
class AggregateResult:
    """Aggregated profiles plus the bookkeeping a user needs to trust them."""

    profiles: pd.DataFrame
    op: str
    by: tuple[str, ...]
    n_rows: int
    n_rows_dropped_nan: int
    n_groups: int
    strategy: str

    def summary(self) -> str:
        """One line for logs and the CLI: rows in, groups out, NaN rows dropped, strategy."""
        return (
            f"{self.op} of {self.n_rows - self.n_rows_dropped_nan} rows by {', '.join(self.by)} -> "
            f"{self.n_groups} groups ({self.n_rows_dropped_nan} rows with NaN features dropped; {self.strategy})"
        )


def group_sums(values: F32Array, codes: I64Array, n_groups: int) -> F64Array:
    """(N, D) float, (N,) int64 codes in [0, G) -> (G, D) float64 sums; empty groups sum to 0."""
    out = np.zeros((n_groups, values.shape[1]), dtype=np.float64)
    if len(codes) == 0:
        return out
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    out[sorted_codes[starts]] = np.add.reduceat(values[order], starts, axis=0, dtype=np.float64)
    return out


def group_median(values: F32Array, codes: I64Array, n_groups: int) -> F32Array:
    """(N, D) float32, (N,) int64 codes in [0, G) -> (G, D) float32 per-group medians; empty groups NaN.

    Groups of equal size are stacked to (k, size, D) and reduced by one ``np.median`` call, so the
    number of numpy calls is the number of distinct group sizes, not the number of groups.
    """
    out = np.full((n_groups, values.shape[1]), np.nan, dtype=np.float32)
    if len(codes) == 0:
        return out
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for size in np.unique(sizes[sizes > 0]):
        groups = np.flatnonzero(sizes == size)
        rows = order[starts[groups][:, None] + np.arange(size)]
        out[groups] = np.median(values[rows], axis=1)
    return out


def group_codes(keys: pd.DataFrame) -> tuple[I64Array, pd.DataFrame]:
    """(N, K) key table -> (N,) int64 codes in order of first appearance, (G, K) unique keys; NaN is a key."""
    codes = keys.groupby(list(keys.columns), dropna=False, sort=False).ngroup().to_numpy(np.int64)
    first = np.unique(codes, return_index=True)[1]
    return codes, keys.iloc[first].reset_index(drop=True)


def check_op(op: str) -> None:
    """InputError unless ``op`` is one of OPS."""
    if op not in OPS:
        raise InputError(f"unknown aggregation {op!r}: use one of {', '.join(OPS)}")


def check_by(columns: Sequence[str], by: Sequence[str], features: Sequence[str]) -> tuple[str, ...]:
    """Validate grouping columns: present, not features, at least one."""
    by = tuple(by)
    if not by:
        raise InputError("no grouping columns given")
    missing = [c for c in by if c not in columns]
    if missing:
        meta = [c for c in columns if c.startswith("Metadata_")]
        raise InputError(
            f"grouping columns not in the table: {', '.join(missing)} (Metadata columns: {', '.join(meta[:8])})"
        )
    clash = [c for c in by if c in set(features)]
    if clash:
        raise InputError(f"grouping columns are feature columns: {', '.join(clash)}")
    return by


def nan_rows(values: F32Array) -> np.ndarray:
    """(N, D) -> (N,) bool, True where any feature is NaN."""
    return np.asarray(np.isnan(values).any(axis=1), dtype=bool)


def assemble(
    keys: pd.DataFrame, n_cells: I64Array, n_rows: I64Array, values: F32Array, features: Sequence[str]
) -> pd.DataFrame:
    """Grouping keys + counts + float32 features -> one output table."""
    counts = pd.DataFrame({COUNT_CELLS: n_cells.astype(np.int64), COUNT_ROWS: n_rows.astype(np.int64)})
    feats = pd.DataFrame(values.astype(np.float32, copy=False), columns=list(features))
    return pd.concat([keys.reset_index(drop=True), counts, feats], axis=1)


def aggregate(
    table: pd.DataFrame, *, by: Sequence[str], op: Op, features: Sequence[str] | None = None
) -> AggregateResult:
    """(N rows) profile table -> (G rows) one per group of ``by`` values; NaN-feature rows dropped, counted.

    ``median`` (cells -> site) or ``mean`` (sites -> well, wells -> treatment); NaN-feature rows dropped
    and counted. For inputs larger than memory use ``aggregate_files``.
    """
    check_op(op)
    names = feature_columns(table, features)
    by = check_by([str(c) for c in table.columns], by, names)
    values = feature_matrix(table, names)
    bad = nan_rows(values)
    keep = ~bad
    kept = table.loc[keep]
    values = values[keep]
    codes, keys = group_codes(kept.loc[:, list(by)])
    n_groups = len(keys)
    n_rows = np.bincount(codes, minlength=n_groups)
    if COUNT_CELLS in kept.columns and COUNT_CELLS not in by:
        weights = kept[COUNT_CELLS].to_numpy(np.float64)
        n_cells = np.rint(np.bincount(codes, weights=weights, minlength=n_groups)).astype(np.int64)
    else:
        n_cells = n_rows
    if op == "median":
        out = group_median(values, codes, n_groups)
    else:
        out = (group_sums(values, codes, n_groups) / np.maximum(n_rows, 1)[:, None]).astype(np.float32)
    if bad.any():
        logger.warning("dropped %d of %d rows with NaN features", int(bad.sum()), len(bad))
    return AggregateResult(
        profiles=assemble(keys, n_cells, n_rows, out, names),
        op=op,
        by=by,
        n_rows=len(table),
        n_rows_dropped_nan=int(bad.sum()),
        n_groups=n_groups,
        strategy="in-memory",
    )


def collapse_by_id(
    table: pd.DataFrame, *, id_col: str, features: Sequence[str], annotations: Sequence[str] = ()
) -> pd.DataFrame:
    """Rows sharing ``id_col`` -> one mean row each (wells -> treatment), id order of first appearance.

    Annotation columns become the ``|``-joined distinct non-empty values of the id's rows (so
    conflicting annotations are kept as a multi-valued annotation, never silently dropped).
    Rows with a missing id are dropped. Rows with NaN features propagate NaN to their id's mean.
    """
    if id_col not in table.columns:
        raise InputError(f"id column {id_col!r} not in the table")
    missing = [c for c in annotations if c not in table.columns]
    if missing:
        raise InputError(f"annotation columns not in the table: {', '.join(missing)}")
    described = [c for c in dict.fromkeys((id_col, *annotations)) if c in set(features)]
    if described:
        raise InputError(
            f"{', '.join(described)} is a feature column; ids and annotations must be Metadata_* columns"
        )
    table = table.loc[table[id_col].notna()]
    codes, keys = group_codes(table.loc[:, [id_col]])
    values = feature_matrix(table, features)
    check_finite(values, features, what="profiles")
    n_rows = np.bincount(codes, minlength=len(keys))
    if len(table) == len(keys):
        means = values[np.argsort(codes, kind="stable")]
    else:
        means = (group_sums(values, codes, len(keys)) / np.maximum(n_rows, 1)[:, None]).astype(np.float32)
    out = keys.copy()
    for column in annotations:
        joined = (
            table[column]
            .groupby(codes, sort=True)
            .agg(lambda s: "|".join(dict.fromkeys(str(v) for v in s.dropna() if str(v) != "")))
        )
        out[column] = joined.reindex(range(len(keys))).replace("", np.nan).to_numpy(object)
    out[COUNT_ROWS] = n_rows
    return pd.concat([out, pd.DataFrame(means, columns=list(features))], axis=1)
