"""Streaming aggregation of profile files that do not fit in memory (a plate of millions of cells).

Inputs are read in row batches (Parquet row groups, CSV chunks, one npz site at a time), reading only
the grouping, count and feature columns. Memory bounds, with B = one batch (``batch_rows`` x D x 4 bytes
for CSV; one row group for Parquet, 65,536 rows in files from ``write_profiles``), G groups and D
features:

- ``mean``: running float64 sums per group, O(B + G x D x 8 bytes).
- ``median``, strategy ``contiguous`` (inputs already grouped, e.g. cells written site by site): each
  group is reduced as soon as the next one starts, O(B + largest group + G x D x 4 bytes).
- ``median``, strategy ``partitioned`` (any row order): rows are spilled to 64 partition files on disk
  by group id, then partitions are loaded one bundle at a time up to ``memory_budget_bytes``,
  O(B + 2 x max(budget, largest partition) + G x D x 4 bytes); needs free disk of about the input
  size (``workdir``, default the system temporary folder).
- ``auto`` tries ``contiguous`` and, on finding a group that reappears later, restarts ``partitioned``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pandas as pd

from cpcnn._types import F32Array, I64Array
from cpcnn.errors import InputError
from cpcnn.profiles._prefetch import prefetched
from cpcnn.profiles.aggregate import (
    AggregateResult,
    Op,
    aggregate,
    assemble,
    check_by,
    check_op,
    group_median,
    group_sums,
    nan_rows,
)
from cpcnn.profiles.tables import (
    COUNT_CELLS,
    COUNT_ROWS,
    FeatureSelection,
    PathLike,
    check_same_features,
    feature_columns,
    ignored_columns,
    iter_feature_batches,
    table_kinds,
    warn_ignored_columns,
)

logger = logging.getLogger(__name__)

Strategy = Literal["auto", "contiguous", "partitioned"]
_N_PARTITIONS = 64


class _NotContiguous(Exception):
    """A group reappeared after it was closed: the input is not grouped."""


class _Rows:
    """A growable (rows, D) array (amortised doubling), for per-group outputs of unknown count."""

    def __init__(self, width: int, dtype: Any, fill: float = 0.0) -> None:
        self.data = np.full((64, width), fill, dtype=dtype)
        self.fill = fill

    def ensure(self, n: int) -> None:
        if n > len(self.data):
            grown = np.full((max(n, 2 * len(self.data)), self.data.shape[1]), self.fill, self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown


class _Groups:
    """Global group ids across batches, keyed by the tuple of grouping values (NaN -> None)."""

    def __init__(self, by: Sequence[str]) -> None:
        self.by = list(by)
        self.ids: dict[tuple[Any, ...], int] = {}
        self.n_rows: list[int] = []
        self.n_cells: list[float] = []

    def encode(self, keys: pd.DataFrame, cells: np.ndarray) -> I64Array:
        local = keys.groupby(self.by, dropna=False, sort=False).ngroup().to_numpy(np.int64)
        first = np.unique(local, return_index=True)[1]
        lookup = np.empty(len(first), dtype=np.int64)
        for i, key in enumerate(keys.iloc[first].itertuples(index=False, name=None)):
            key = tuple(None if pd.isna(v) else v for v in key)
            gid = self.ids.setdefault(key, len(self.ids))
            if gid == len(self.n_rows):
                self.n_rows.append(0)
                self.n_cells.append(0.0)
            lookup[i] = gid
        codes = lookup[local]
        rows = np.bincount(codes, minlength=len(self.ids))
        cell_sums = np.bincount(codes, weights=cells, minlength=len(self.ids))
        for seen in np.flatnonzero(rows).tolist():
            self.n_rows[seen] += int(rows[seen])
            self.n_cells[seen] += float(cell_sums[seen])
        return np.asarray(codes, dtype=np.int64)

    def keys(self, dtypes: pd.Series) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.ids), columns=self.by)
        for column in self.by:
            if column not in dtypes:
                continue
            try:
                frame[column] = frame[column].astype(dtypes[column])
            except (TypeError, ValueError):
                pass
        return frame


def _plan(paths: Sequence[Path], by: Sequence[str], features: FeatureSelection) -> tuple[list[str], bool]:
    """Feature names (``feature_columns`` on each input's column kinds, checked equal across inputs) and
    whether the inputs carry a cell count column; warns once about columns read as metadata."""
    expected: list[str] | None = None
    has_counts = True
    legacy: list[str] = []
    skipped: list[str] = []
    for path in paths:
        kinds = table_kinds(path)
        columns = list(kinds)
        try:
            names = feature_columns(kinds, features)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc
        if expected is None:
            expected = names
        else:
            check_same_features(names, expected, what=f"the first input (reading {path})")
        check_by(columns, by, names)
        found = ignored_columns(kinds, features)
        legacy += found[0]
        skipped += found[1]
        has_counts = has_counts and COUNT_CELLS in columns and COUNT_CELLS not in by
    warn_ignored_columns(legacy, skipped, source=str(paths[0]) + (f" (+{len(paths) - 1})" if len(paths) > 1 else ""))
    return list(expected or []), has_counts


def _batches(
    paths: Sequence[Path],
    by: Sequence[str],
    names: Sequence[str],
    has_counts: bool,
    batch_rows: int,
    stats: dict[str, int],
) -> Iterator[tuple[pd.DataFrame, F32Array, np.ndarray]]:
    """(keys, float32 values, cell counts) per batch with NaN-feature rows dropped and counted."""
    keys = [*by, COUNT_CELLS] if has_counts else list(by)
    for path in paths:
        for key_table, values in iter_feature_batches(path, keys=keys, features=names, batch_rows=batch_rows):
            bad = nan_rows(values)
            stats["rows"] += len(values)
            stats["dropped"] += int(bad.sum())
            cells = key_table[COUNT_CELLS].to_numpy(np.float64) if has_counts else np.ones(len(values))
            if bad.any():
                keep = ~bad
                yield key_table.loc[keep, list(by)], values[keep], cells[keep]
            else:
                yield key_table.loc[:, list(by)], values, cells


def _mean(batches: Iterator[Any], groups: _Groups, width: int) -> F32Array:
    sums = _Rows(width, np.float64)
    for keys, values, cells in batches:
        codes = groups.encode(keys, cells)
        sums.ensure(len(groups.ids))
        sums.data[: len(groups.ids)] += group_sums(values, codes, len(groups.ids))
    n = len(groups.ids)
    return (sums.data[:n] / np.maximum(np.asarray(groups.n_rows, np.float64), 1)[:, None]).astype(np.float32)


def _median_contiguous(batches: Iterator[Any], groups: _Groups, width: int) -> F32Array:
    out = _Rows(width, np.float32, np.nan)
    closed: set[int] = set()
    pending_gid, pending = -1, np.empty((0, width), np.float32)
    for keys, values, cells in batches:
        codes = groups.encode(keys, cells)
        if len(codes) == 0:
            continue
        out.ensure(len(groups.ids))
        bounds = np.r_[np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]), len(codes)]
        runs = codes[bounds[:-1]]
        if len(np.unique(runs)) != len(runs) or closed.intersection(runs.tolist()):
            raise _NotContiguous
        first = 0
        if runs[0] == pending_gid:
            pending = np.concatenate([pending, values[: bounds[1]]])
            if len(runs) == 1:
                continue
            first = 1
        if pending_gid >= 0:
            out.data[pending_gid] = np.median(pending, axis=0)
            closed.add(pending_gid)
        inner = runs[first:-1]
        if len(inner):
            lo, hi = bounds[first], bounds[len(runs) - 1]
            local = np.repeat(np.arange(len(inner), dtype=np.int64), np.diff(bounds[first : len(runs)]))
            out.data[inner] = group_median(values[lo:hi], local, len(inner))
            closed.update(inner.tolist())
        pending_gid, pending = int(runs[-1]), values[bounds[-2] :].copy()
    if pending_gid >= 0:
        out.data[pending_gid] = np.median(pending, axis=0)
    return out.data[: len(groups.ids)]


def _median_partitioned(
    batches: Iterator[Any], groups: _Groups, width: int, budget: int, workdir: Path | None
) -> F32Array:
    with tempfile.TemporaryDirectory(prefix="cpcnn-agg-", dir=workdir) as tmp:
        root = Path(tmp)
        handles: dict[int, tuple[BinaryIO, BinaryIO]] = {}
        with ExitStack() as stack:
            for keys, values, cells in batches:
                codes = groups.encode(keys, cells)
                part = codes % _N_PARTITIONS
                for p in np.unique(part).tolist():
                    rows = part == p
                    if p not in handles:
                        handles[p] = (
                            stack.enter_context(open(root / f"{p}.f32", "wb")),
                            stack.enter_context(open(root / f"{p}.gid", "wb")),
                        )
                    handles[p][0].write(np.ascontiguousarray(values[rows]).tobytes())
                    handles[p][1].write(codes[rows].tobytes())
        out = np.full((len(groups.ids), width), np.nan, dtype=np.float32)
        bundle: list[int] = []
        size = 0
        for p in sorted(handles) + [-1]:
            nbytes = (root / f"{p}.f32").stat().st_size if p >= 0 else 0
            if bundle and (p < 0 or size + nbytes > budget):
                values = np.concatenate([np.fromfile(root / f"{q}.f32", np.float32) for q in bundle])
                gids = np.concatenate([np.fromfile(root / f"{q}.gid", np.int64) for q in bundle])
                uniq, local = np.unique(gids, return_inverse=True)
                out[uniq] = group_median(values.reshape(-1, width), local.astype(np.int64), len(uniq))
                bundle, size = [], 0
            if p >= 0:
                bundle.append(p)
                size += nbytes
        return out


Reducer = Literal["mean", "contiguous", "partitioned"]


@dataclass(frozen=True)
class _Inputs:
    """Checked inputs of one aggregation: the files read as one table, grouping and feature columns."""

    files: tuple[Path, ...]
    by: tuple[str, ...]
    names: list[str]
    has_counts: bool  # every file carries Metadata_Count_Cells (not a grouping column)
    batch_rows: int


@dataclass(frozen=True)
class _Reduced:
    """One pass over the inputs: (G, D) float32 values, the G groups, row counts and key dtypes."""

    values: F32Array
    groups: _Groups
    stats: dict[str, int]  # rows read, rows dropped for NaN features
    dtypes: pd.Series  # dtype of each grouping column, as first read


def _input_files(paths: PathLike | Sequence[PathLike]) -> tuple[Path, ...]:
    """A path or paths -> existing paths, in order; InputError when none is given or one is missing."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise InputError("no input tables given")
    files = tuple(Path(p) for p in items)
    for path in files:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    return files


def _with_key_dtypes(
    batches: Iterator[tuple[pd.DataFrame, F32Array, np.ndarray]], by: Sequence[str], dtypes: dict[str, Any]
) -> Generator[tuple[pd.DataFrame, F32Array, np.ndarray], None, None]:
    """(keys, (B, D) float32, (B,) cells) batches, passed through; records each grouping column's dtype
    into ``dtypes`` the first time it is seen."""
    for keys, values, cells in batches:
        dtypes.update({c: keys[c].dtype for c in by if c not in dtypes})
        yield keys, values, cells


def _reduce(inputs: _Inputs, reducer: Reducer, budget: int, workdir: Path | None) -> _Reduced:
    """Read every input once (prefetched) -> (G, D) float32 per-group values by ``reducer``."""
    stats = {"rows": 0, "dropped": 0}
    groups = _Groups(inputs.by)
    dtypes: dict[str, Any] = {}
    read = _batches(inputs.files, inputs.by, inputs.names, inputs.has_counts, inputs.batch_rows, stats)
    batches = _with_key_dtypes(prefetched(read), inputs.by, dtypes)
    width = len(inputs.names)
    try:
        if reducer == "mean":
            values = _mean(batches, groups, width)
        elif reducer == "contiguous":
            values = _median_contiguous(batches, groups, width)
        else:
            values = _median_partitioned(batches, groups, width, budget, workdir)
    finally:
        batches.close()  # stops the reader thread now, not when the generator is collected
    return _Reduced(values, groups, stats, pd.Series(dtypes, dtype=object))


def _reduce_by_strategy(
    inputs: _Inputs, op: Op, strategy: Strategy, budget: int, workdir: Path | None
) -> tuple[str, _Reduced]:
    """The reduction ``op`` and ``strategy`` call for -> (its name, result); ``auto`` restarts partitioned
    when the input turns out not to be grouped."""
    if op == "mean":
        return "running-sums", _reduce(inputs, "mean", budget, workdir)
    if strategy == "partitioned":
        return "partitioned", _reduce(inputs, "partitioned", budget, workdir)
    try:
        return "contiguous", _reduce(inputs, "contiguous", budget, workdir)
    except _NotContiguous:
        if strategy == "contiguous":
            raise InputError(
                "input rows are not grouped by the grouping columns; use strategy 'auto'"
            ) from None
        logger.info("input is not grouped by %s; restarting with on-disk partitions", ", ".join(inputs.by))
        return "partitioned", _reduce(inputs, "partitioned", budget, workdir)


def aggregate_files(
    paths: PathLike | Sequence[PathLike],
    *,
    by: Sequence[str],
    op: Op,
    features: FeatureSelection = None,
    batch_rows: int = 65_536,
    strategy: Strategy = "auto",
    memory_budget_bytes: int = 256 * 2**20,
    workdir: PathLike | None = None,
) -> AggregateResult:
    """Aggregate profile files (together, as one table) by ``by`` in bounded memory; see the module notes.

    Returns the same ``AggregateResult`` as ``aggregate`` on the concatenated inputs (up to float
    summation order for ``mean``).
    """
    check_op(op)
    if strategy not in ("auto", "contiguous", "partitioned"):
        raise InputError(f"unknown strategy {strategy!r}: use auto, contiguous or partitioned")
    if batch_rows < 1:
        raise InputError(f"batch_rows must be >= 1, got {batch_rows}")
    files = _input_files(paths)
    names, has_counts = _plan(files, by, features)
    inputs = _Inputs(files, tuple(by), names, has_counts, batch_rows)
    work = Path(workdir) if workdir is not None else None
    kind, reduced = _reduce_by_strategy(inputs, op, strategy, memory_budget_bytes, work)
    stats, groups = reduced.stats, reduced.groups
    if stats["dropped"]:
        logger.warning("dropped %d of %d rows with NaN features", stats["dropped"], stats["rows"])
    n_cells = np.rint(np.asarray(groups.n_cells, np.float64)).astype(np.int64)
    profiles = assemble(
        groups.keys(reduced.dtypes), n_cells, np.asarray(groups.n_rows, np.int64), reduced.values, names
    )
    return AggregateResult(
        profiles=profiles,
        op=op,
        by=inputs.by,
        n_rows=stats["rows"],
        n_rows_dropped_nan=stats["dropped"],
        n_groups=len(groups.ids),
        strategy=f"streaming, {kind}",
    )


def cells_to_wells(
    paths: PathLike | Sequence[PathLike],
    *,
    site_by: Sequence[str] = ("Metadata_Plate", "Metadata_Well", "Metadata_Site"),
    well_by: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    **options: Any,
) -> AggregateResult:
    """The paper's chain on single-cell files: median per site (streamed), then mean of sites per well.

    ``Metadata_Count_Cells`` of a well is the number of cells behind it; ``n_rows_dropped_nan`` counts
    NaN cells. ``well_by`` must be a subset of ``site_by``. ``options`` go to ``aggregate_files``.
    """
    extra = [c for c in well_by if c not in site_by]
    if extra:
        raise InputError(f"well grouping columns must also group sites: {', '.join(extra)}")
    sites = aggregate_files(paths, by=site_by, op="median", **options)
    skip = {*site_by, COUNT_CELLS, COUNT_ROWS}
    names = [c for c in sites.profiles.columns if c not in skip]
    wells = aggregate(sites.profiles, by=well_by, op="mean", features=names)
    return AggregateResult(
        profiles=wells.profiles,
        op="median per site, mean per well",
        by=tuple(well_by),
        n_rows=sites.n_rows,
        n_rows_dropped_nan=sites.n_rows_dropped_nan,
        n_groups=wells.n_groups,
        strategy=sites.strategy,
    )
