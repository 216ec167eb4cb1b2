"""Sphering: the paper's ZCA, its durable artifact, determinism and input errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracles import zca_naive

from cpcnn.errors import InputError
from cpcnn.metrics import sweep_lambda
from cpcnn.profiles import Sphering, feature_columns, fit_sphering, read_profiles

LINCS = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/profiles/lincs-SQ00015054/SQ00015054_normalized_feature_select.csv.gz"
)


def plate(n_controls: int = 200, n_treated: int = 40, d: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    values = rng.standard_normal((n_controls + n_treated, d)) @ mix + 3.0
    table = pd.DataFrame(values.astype(np.float32), columns=[f"f{i}" for i in range(d)])
    table.insert(
        0, "Metadata_broad_sample", ["DMSO"] * n_controls + [f"BRD-{i % 8}" for i in range(n_treated)]
    )
    return table


@pytest.mark.parametrize("method", ["zca", "zca-cor"])
def test_tiny_lambda_whitens_full_rank_controls(method: str) -> None:
    table = plate()
    sphering = fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-10, method=method)
    controls = table.loc[table.Metadata_broad_sample == "DMSO", list(sphering.features)].to_numpy(np.float64)
    x = (controls - sphering.mean) / (sphering.std if sphering.std is not None else 1.0)
    sphered = x @ sphering.matrix
    np.testing.assert_allclose(sphered.T @ sphered / len(sphered), np.eye(6), atol=1e-6)
    assert not sphering.rank_deficient and sphering.warnings == ()


def test_matches_direct_formula_and_is_deterministic() -> None:
    table = plate()
    sphering = fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-2)
    mu, w = zca_naive(table.iloc[:200, 1:].to_numpy(np.float64), 1e-2)
    np.testing.assert_allclose(sphering.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(sphering.matrix, w, rtol=1e-9, atol=1e-12)
    first, second = sphering.apply(table), sphering.apply(table)
    cols = list(sphering.features)
    assert first[cols].to_numpy().tobytes() == second[cols].to_numpy().tobytes()
    assert first["Metadata_broad_sample"].tolist() == table["Metadata_broad_sample"].tolist()


def test_save_load_roundtrip_without_pickle(tmp_path: Path) -> None:
    table = plate()
    fitted = fit_sphering(
        table, controls="Metadata_broad_sample=DMSO", lam=1e-3, method="zca-cor", source="plate.csv"
    )
    loaded = Sphering.load(fitted.save(tmp_path / "t.npz"))
    with np.load(tmp_path / "t.npz", allow_pickle=False) as archive:
        assert set(archive.files) == {"header", "features", "mean", "std", "matrix"}
    assert loaded.features == fitted.features and loaded.lam == 1e-3 and loaded.method == "zca-cor"
    assert (
        loaded.provenance["controls"] == "Metadata_broad_sample=DMSO"
        and loaded.provenance["source"] == "plate.csv"
    )
    assert loaded.apply(table).equals(fitted.apply(table))
    f32 = fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-3, dtype=np.float32)
    assert Sphering.load(f32.save(tmp_path / "f.npz")).matrix.dtype == np.float32


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    table = plate()
    with pytest.raises(
        InputError, match=r"no control rows with Metadata_broad_sample == 'PBS' \(values include 'DMSO'"
    ):
        fit_sphering(table, controls="Metadata_broad_sample=PBS", lam=1e-2)
    for lam in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="lambda must be a positive number"):
            fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=lam)
    with pytest.raises(InputError, match="COLUMN=VALUE"):
        fit_sphering(table, controls="DMSO", lam=1e-2)
    with pytest.raises(InputError, match="control column 'Metadata_x' not in the table"):
        fit_sphering(table, controls="Metadata_x=1", lam=1e-2)
    nan_cols = table.assign(f1=np.float32(np.nan), f4=np.float32(np.nan))
    with pytest.raises(InputError, match="only NaN in the controls: f1, f4"):
        fit_sphering(nan_cols, controls="Metadata_broad_sample=DMSO", lam=1e-2)
    fitted = fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-2)
    with pytest.raises(InputError, match="feature mismatch with the sphering transform"):
        fitted.apply(table.rename(columns={"f0": "other"}))
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="unreadable sphering file"):
        Sphering.load(tmp_path / "x.npz")


def test_fewer_controls_than_features_warns(caplog: pytest.LogCaptureFixture) -> None:
    table = plate(n_controls=4)
    with caplog.at_level(logging.WARNING, logger="cpcnn.profiles.sphering"):
        fitted = fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-2)
    assert fitted.rank_deficient and fitted.rank == 3 and "lambda=0.01 dominates" in fitted.warnings[0]
    assert "dominates" in caplog.text


@pytest.mark.skipif(not LINCS.is_file(), reason="shared LINCS plate not present")
def test_lincs_sphering_and_lambda_sweep() -> None:
    table = read_profiles(LINCS)
    fitted = fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-2)
    assert fitted.n_controls == 24 and fitted.rank == 23 and fitted.rank_deficient
    assert len(fitted.features) == len(feature_columns(table)) == 454
    sweep = sweep_lambda(
        table,
        controls="Metadata_broad_sample=DMSO",
        lambdas=[1e-2, 1.0, 1e2],
        id_col="Metadata_broad_sample",
        annotation="Metadata_moa",
    )
    assert [p.lam for p in sweep.points] == [1e-2, 1.0, 1e2]
    assert all(p.n_queries == 16 for p in sweep.points) and sweep.baseline.n_queries == 16
    assert all(0 < p.mean_average_precision <= 1 for p in sweep.points)
    assert sweep.to_dict()["best_lambda_by_map"] in (1e-2, 1.0, 1e2)
    with pytest.raises(InputError, match="lambda must be a positive number"):
        sweep_lambda(
            table, controls="Metadata_broad_sample=DMSO", lambdas=[1e-2, 0], id_col="x", annotation="y"
        )
