"""Cosine similarity, exact top-k and the reference Library (build, save, memory-mapped load, match)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracles import top_k_naive

from cpcnn.errors import ConflictError, InputError
from cpcnn.profiles import Library, cosine_similarity, normalize_rows, top_k_cosine


def profiles(n: int, d: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.standard_normal((n, d)).astype(np.float32), columns=[f"f{i}" for i in range(d)])
    table.insert(0, "Metadata_id", [f"T{i}" for i in range(n)])
    table.insert(1, "Metadata_moa", [f"moa{i % 5}" for i in range(n)])
    return table


def test_cosine_zero_rows_score_zero_not_nan() -> None:
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]], dtype=np.float32)
    sims = cosine_similarity(rows, rows)
    assert sims.dtype == np.float32 and not np.isnan(sims).any()
    np.testing.assert_allclose(sims[0], [1.0, 0.0, 0.0], atol=1e-7)
    assert (sims[1] == 0).all() and (sims[2] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(normalize_rows(rows), axis=1), [1.0, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize(("n", "k", "block"), [(50, 5, 32_768), (3000, 10, 1000), (3000, 7, 700), (9, 20, 4)])
def test_top_k_matches_brute_force(n: int, k: int, block: int) -> None:
    rng = np.random.default_rng(n + k)
    library = rng.standard_normal((n, 16)).astype(np.float32)
    queries = rng.standard_normal((13, 16)).astype(np.float32)
    scores, rows = top_k_cosine(normalize_rows(queries), normalize_rows(library), k=k, block_rows=block)
    assert rows.tolist() == top_k_naive(queries, library, k)
    np.testing.assert_allclose(
        scores, np.take_along_axis(cosine_similarity(queries, library), rows, 1), atol=1e-6
    )
    exclude = rng.integers(-1, n, len(queries))
    _, rows = top_k_cosine(
        normalize_rows(queries), normalize_rows(library), k=k, exclude=exclude, block_rows=block
    )
    assert rows.tolist() == top_k_naive(queries, library, min(k, n - 1), exclude.tolist())


def test_top_k_ties_are_ordered_by_row() -> None:
    library = np.tile(np.array([[1.0, 0.0]], np.float32), (2000, 1))
    _, rows = top_k_cosine(normalize_rows(library[:2]), normalize_rows(library), k=4, block_rows=1024)
    assert rows.tolist() == [[0, 1, 2, 3]] * 2


def test_library_save_load_mmap_and_match(tmp_path: Path) -> None:
    table = profiles(40)
    doubled = pd.concat([table, table.assign(Metadata_moa="other")], ignore_index=True)
    library = Library.from_profiles(doubled, id_col="Metadata_id", annotations=["Metadata_moa"])
    assert len(library) == 40 and library.annotations["Metadata_moa"].iloc[0] == "moa0|other"
    loaded = Library.load(library.save(tmp_path / "lib"))
    assert isinstance(loaded.features, np.memmap) and not loaded.features.flags.writeable
    assert loaded.feature_names == library.feature_names and loaded.ids.tolist() == library.ids.tolist()
    matches = loaded.match(table.iloc[:3], k=5)
    assert list(matches.columns) == ["query_id", "rank", "library_id", "score", "Metadata_moa"]
    assert matches["query_id"].tolist()[:5] == ["T0"] * 5 and matches["rank"].tolist()[:5] == [1, 2, 3, 4, 5]
    assert matches.loc[0, "library_id"] == "T0" and matches.loc[0, "score"] == pytest.approx(1.0, abs=1e-6)
    loo = loaded.match(table, k=5, leave_one_out=True)
    assert (loo["query_id"] != loo["library_id"]).all() and len(loo) == 40 * 5
    assert Library.load(tmp_path / "lib", mmap=False).match(table, k=3).equals(loaded.match(table, k=3))


def test_library_errors(tmp_path: Path) -> None:
    library = Library.from_profiles(profiles(10), id_col="Metadata_id")
    with pytest.raises(InputError, match="feature mismatch with the library"):
        library.match(profiles(3).rename(columns={"f0": "g0"}))
    with pytest.raises(InputError, match="leave-one-out needs a query id column"):
        library.match(profiles(3).drop(columns="Metadata_id"), leave_one_out=True)
    with pytest.raises(InputError, match="k must be >= 1"):
        library.match(profiles(3), k=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ConflictError, match="not a cpcnn library folder"):
        library.save(tmp_path / "busy")
    with pytest.raises(InputError, match="not a cpcnn library folder"):
        Library.load(tmp_path / "busy")
    with pytest.raises(InputError, match="id column 'Metadata_x' not in the table"):
        Library.from_profiles(profiles(3), id_col="Metadata_x")
