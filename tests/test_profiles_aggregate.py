"""Aggregation: kernels against loop oracles, streaming strategies against in-memory, real npz data."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracles import group_reduce_naive

from cpcnn.errors import InputError
from cpcnn.profiles import (
    COUNT_CELLS,
    COUNT_ROWS,
    aggregate,
    aggregate_files,
    cells_to_wells,
    feature_columns,
    group_median,
    group_sums,
    write_profiles,
)

NPZ_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "profiles" / "deepprofiler-npz-example"
)
SITE = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def cells(n: int = 3000, d: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "Metadata_Plate": rng.choice(["P1", "P2"], n),
            "Metadata_Well": rng.choice(["A01", "A02", "B01"], n),
            "Metadata_Site": rng.integers(1, 5, n),
        }
    )
    values = rng.standard_normal((n, d)).astype(np.float32)
    values[[7, 100, 2500], [0, 3, 1]] = np.nan
    return pd.concat([table, pd.DataFrame(values, columns=[f"f{i}" for i in range(d)])], axis=1)


@pytest.mark.parametrize("op", ["median", "mean"])
def test_kernels_match_loop_oracle(op: str) -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 40, 500)
    values = rng.standard_normal((500, 3)).astype(np.float32)
    if op == "median":
        got = group_median(values, codes, 42)
    else:
        got = group_sums(values, codes, 42) / np.maximum(np.bincount(codes, minlength=42), 1)[:, None]
    want = group_reduce_naive(values, codes.tolist(), op)
    for g in range(42):
        if g in want:
            np.testing.assert_allclose(got[g], want[g], rtol=1e-6, atol=1e-7)
        elif op == "median":
            assert np.isnan(got[g]).all()


def test_in_memory_aggregate_drops_and_counts_nan_rows() -> None:
    table = cells()
    result = aggregate(table, by=SITE, op="median")
    assert result.n_rows == 3000 and result.n_rows_dropped_nan == 3
    assert result.profiles[COUNT_CELLS].sum() == 2997 and result.n_groups == len(result.profiles) == 24
    clean = table.dropna()
    want = group_reduce_naive(
        clean[["f0", "f1"]].to_numpy(), list(clean[SITE].itertuples(index=False, name=None)), "median"
    )
    for _, row in result.profiles.iterrows():
        np.testing.assert_array_equal(row[["f0", "f1"]].to_numpy(np.float32), want[tuple(row[SITE])])


@pytest.mark.parametrize("strategy", ["auto", "partitioned"])
@pytest.mark.parametrize("op", ["median", "mean"])
def test_streaming_equals_in_memory(tmp_path: Path, op: str, strategy: str) -> None:
    table = cells()
    path = write_profiles(table, tmp_path / "cells.parquet")
    want = aggregate(table, by=SITE, op=op).profiles.sort_values(SITE).reset_index(drop=True)
    got = aggregate_files(path, by=SITE, op=op, batch_rows=257, strategy=strategy, memory_budget_bytes=4096)
    assert got.n_rows_dropped_nan == 3
    pd.testing.assert_frame_equal(got.profiles.sort_values(SITE).reset_index(drop=True), want, rtol=1e-6)


def test_grouped_input_streams_contiguously_and_csv_works(tmp_path: Path) -> None:
    table = cells().sort_values(SITE, kind="stable")
    want = aggregate(table, by=SITE, op="median").profiles.reset_index(drop=True)
    got = aggregate_files(write_profiles(table, tmp_path / "c.parquet"), by=SITE, op="median", batch_rows=100)
    assert got.strategy == "streaming, contiguous"
    pd.testing.assert_frame_equal(got.profiles, want)
    shuffled = aggregate_files(
        write_profiles(cells(), tmp_path / "c.csv.gz"), by=SITE, op="median", batch_rows=100
    )
    assert shuffled.strategy == "streaming, partitioned"
    with pytest.raises(InputError, match="not grouped"):
        aggregate_files(tmp_path / "c.csv.gz", by=SITE, op="median", strategy="contiguous")
    assert not [t for t in threading.enumerate() if t.name == "cpcnn-aggregate-reader"]


def test_chained_counts_and_bad_arguments(tmp_path: Path) -> None:
    sites = aggregate(cells(), by=SITE, op="median").profiles
    wells = aggregate(sites, by=["Metadata_Plate", "Metadata_Well"], op="mean")
    assert wells.profiles[COUNT_CELLS].sum() == 2997 and wells.profiles[COUNT_ROWS].sum() == 24
    with pytest.raises(InputError, match="grouping columns not in the table: Metadata_Nope"):
        aggregate(cells(), by=["Metadata_Nope"], op="mean")
    with pytest.raises(InputError, match="unknown aggregation"):
        aggregate(cells(), by=SITE, op="max")  # type: ignore[arg-type]
    a = write_profiles(cells(), tmp_path / "a.parquet")
    b = write_profiles(cells().rename(columns={"f4": "g4"}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match="feature mismatch"):
        aggregate_files([a, b], by=SITE, op="mean")


@pytest.mark.skipif(not NPZ_DIR.is_dir(), reason="shared DeepProfiler example data not present")
def test_real_deepprofiler_sites_to_well_matches_numpy(tmp_path: Path) -> None:
    root = tmp_path / "features" / "SQ00014812" / "A01"
    root.mkdir(parents=True)
    raw = []
    for site in (5, 8):
        src = NPZ_DIR / f"SQ00014812_A01_{site}.npz"
        (root / f"{site}.npz").write_bytes(src.read_bytes())
        with np.load(src, allow_pickle=False) as archive:
            raw.append(archive["features"])
    want = np.mean([np.median(f, axis=0) for f in raw], axis=0)
    result = cells_to_wells(tmp_path / "features", batch_rows=64)
    assert len(result.profiles) == 1 and result.profiles[COUNT_CELLS].item() == 158 + 179
    got = result.profiles[feature_columns(result.profiles)].to_numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
