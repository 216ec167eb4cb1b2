"""Our tables in pycytominer: its aggregate, normalize and feature_select read them with our feature list,
and where an operation overlaps with ours the numbers agree.

- aggregate median (cells -> site) and mean (sites -> well) against ``cpcnn aggregate``;
- normalize ``spherize`` ZCA against ``cpcnn sphering``: pycytominer whitens with the singular values of
  the centred controls and rescales by sqrt(n - 1), which makes its covariance estimate the n - 1 one;
  ours divides by n (the paper's). With both regularizers negligible, pycytominer's output is ours
  times sqrt((n - 1) / n), exactly;
- feature_select's surviving features, handed back as ``--features``, drive ``cpcnn evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _plate import CONTROLS, FEATURES, Plate, cpcnn

from cpcnn.profiles import metadata_columns, read_profiles, write_profiles

pycytominer = pytest.importorskip("pycytominer")

pytestmark = pytest.mark.slow

SITE_KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def _by_keys(table: pd.DataFrame, keys: list[str], columns: list[str]) -> np.ndarray:
    return table.sort_values(keys).loc[:, columns].to_numpy(np.float64)


def test_aggregate_agrees_with_pycytominer(plate: Plate, chain: dict[str, Path]) -> None:
    cells = read_profiles(plate.cells)
    sites = pycytominer.aggregate(
        population_df=cells, strata=SITE_KEYS, features=FEATURES, operation="median",
        compute_object_count=True, object_feature="Metadata_ObjectNumber", output_type=None,
    )
    ours = pd.read_parquet(chain["sites"])
    assert len(sites) == len(ours) == len(plate.cells)
    np.testing.assert_allclose(_by_keys(sites, SITE_KEYS, FEATURES), _by_keys(ours, SITE_KEYS, FEATURES),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(
        sites.sort_values(SITE_KEYS)["Metadata_Object_Count"], ours.sort_values(SITE_KEYS)["Metadata_Count_Cells"]
    )
    wells = pycytominer.aggregate(
        population_df=ours, strata=SITE_KEYS[:2], features=FEATURES, operation="mean", output_type=None
    )
    np.testing.assert_allclose(
        _by_keys(wells, SITE_KEYS[:2], FEATURES), _by_keys(pd.read_parquet(chain["wells"]), SITE_KEYS[:2], FEATURES),
        rtol=1e-5, atol=1e-6,
    )


def test_pycytominer_infer_no_longer_takes_coordinates(plate: Plate) -> None:
    """pycytominer infers CellProfiler compartment prefixes (Cells_, Nuclei_, ...): the previous
    unprefixed Nuclei_Location_Center_X/Y were its only 'features'; now nothing of ours matches."""
    from pycytominer.cyto_utils import infer_cp_features

    cells = pd.read_parquet(plate.cells[0])
    legacy = cells.rename(columns=lambda c: c.removeprefix("Metadata_") if "Location" in c else c)
    assert infer_cp_features(legacy) == ["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]
    try:
        inferred = infer_cp_features(cells)
    except ValueError:  # pycytominer refuses a table without CellProfiler features
        inferred = []
    assert inferred == []
    assert infer_cp_features(cells, metadata=True) == metadata_columns(cells)


def test_spherize_agrees_with_pycytominer(plate: Plate, chain: dict[str, Path]) -> None:
    """Five features (the tiny model's features have rank 5) so that the 8 control wells give a full-rank
    covariance, which pycytominer requires; both regularizers negligible."""
    subset = [f"efficientnet_{i}" for i in range(5)]
    wells = read_profiles(chain["annotated"])
    transform, sphered = plate.root / "zca5.npz", plate.root / "zca5.parquet"
    cpcnn("sphering", "fit", chain["annotated"], "--controls", CONTROLS, "--lambda", "1e-16",
          "--features", "efficientnet_[0-4]", "--out", transform)
    cpcnn("sphering", "apply", transform, chain["annotated"], "--features", "efficientnet_[0-4]", "--out", sphered)
    ours = pd.read_parquet(sphered)
    # float64 in, so that both sides compute in float64 (pycytominer keeps the input dtype)
    theirs = pycytominer.normalize(
        profiles=wells.astype({name: np.float64 for name in subset}), features=subset,
        meta_features=metadata_columns(wells), samples="Metadata_broad_sample == 'DMSO'",
        method="spherize", spherize_method="ZCA", spherize_epsilon=1e-16, output_type=None,
    )
    n = int((wells["Metadata_broad_sample"] == "DMSO").sum())
    keys = ["Metadata_Well"]
    expected = _by_keys(ours, keys, subset) * np.sqrt((n - 1) / n)
    got = _by_keys(theirs, keys, subset)
    # float32 output rounding only (measured 4e-8); the controls' smallest eigenvalues are ~4e-9, so a
    # regularizer of 1e-12 would already move the result by ~1e-4
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()
    controls = ours["Metadata_broad_sample"] == "DMSO"
    np.testing.assert_allclose(np.cov(ours.loc[controls, subset].to_numpy(np.float64).T, bias=True),
                               np.eye(5), atol=1e-3)  # ours whitens the controls (covariance / n)


def test_feature_select_output_feeds_back(plate: Plate, chain: dict[str, Path]) -> None:
    wells = read_profiles(chain["sphered"])
    selected = pycytominer.feature_select(
        profiles=wells, features=FEATURES, operation=["variance_threshold", "correlation_threshold", "drop_na_columns"],
        output_file=None,
    )
    kept = [c for c in selected.columns if c in set(FEATURES)]
    assert 0 < len(kept) < len(FEATURES)
    assert [c for c in selected.columns if c not in set(kept)] == metadata_columns(wells)
    # pycytominer's output is again one of our tables: the default feature rule picks exactly `kept`.
    path = write_profiles(selected, plate.root / "selected.parquet")
    assert list(read_profiles(path).columns[-len(kept):]) == kept
    metrics = plate.root / "selected.json"
    cpcnn("evaluate", path, "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa", "--out", metrics)
    explicit = plate.root / "selected_explicit.json"
    cpcnn("evaluate", chain["sphered"], "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
          "--features", ",".join(kept), "--out", explicit)
    assert json.loads(metrics.read_text())["mean_average_precision"] == pytest.approx(
        json.loads(explicit.read_text())["mean_average_precision"]
    )
