"""The real chain on ``cpcnn embed`` outputs: embed -> aggregate (site median, well mean) -> sphering
fit/apply -> evaluate, through the ``cpcnn`` CLI, checking that exactly the model's features travel
and that no cell coordinate ever becomes one; plus ``--features`` on every profile command and the
reading of tables written before coordinates were prefixed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _plate import CELL_METADATA, CONTROLS, FEATURES, SITE_BY, SITES, WELL_BY, Plate, cpcnn, wells

from cpcnn.cli.main import main
from cpcnn.profiles import Library, Sphering, feature_columns, read_profiles, write_profiles

pytestmark = pytest.mark.slow

def _features_of(path: Path) -> list[str]:
    table = pd.read_parquet(path)
    return [c for c in table.columns if not c.startswith("Metadata_")]


def test_embed_writes_metadata_then_features(plate: Plate) -> None:
    assert len(plate.cells) == len(wells()) * len(SITES)
    for path in plate.cells:
        table = pd.read_parquet(path)
        assert list(table.columns) == CELL_METADATA + FEATURES
        assert table["Metadata_Site"].dtype == np.int64 and table["Metadata_Site"].iloc[0] == int(path.stem[-1])
        source = plate.locations[path]
        expected = source["ObjectNumber"] if "ObjectNumber" in source else np.arange(1, len(source) + 1)
        np.testing.assert_array_equal(table["Metadata_ObjectNumber"], expected)
        np.testing.assert_array_equal(table["Metadata_Nuclei_Location_Center_X"], source["Nuclei_Location_Center_X"])
        assert feature_columns(table) == FEATURES


def test_exactly_the_features_travel_through_every_step(plate: Plate, chain: dict[str, Path]) -> None:
    for step in ("sites", "wells", "annotated", "sphered"):
        assert _features_of(chain[step]) == FEATURES, step
    assert list(Sphering.load(chain["transform"]).features) == FEATURES
    sites = pd.read_parquet(chain["sites"])
    assert sites["Metadata_Site"].dtype == np.int64
    for column in CELL_METADATA[3:]:  # model, object number and coordinates are per cell: gone after grouping
        assert column not in sites.columns

    # Independent float64 oracle: median of each site's cells, then mean of a well's site medians.
    medians = {}
    for path in plate.cells:
        cells = pd.read_parquet(path)
        medians[path.stem] = np.median(cells[FEATURES].to_numpy(np.float64), axis=0)
    for row in sites.itertuples(index=False):
        got = np.asarray(row[-len(FEATURES):], np.float64)
        np.testing.assert_allclose(got, medians[f"{row.Metadata_Well}_{row.Metadata_Site}"], rtol=1e-6, atol=1e-6)
    well_table = pd.read_parquet(chain["wells"]).set_index("Metadata_Well")
    for well, _ in wells():
        expected = np.mean([medians[f"{well}_{s}"] for s in SITES], axis=0)
        np.testing.assert_allclose(well_table.loc[well, FEATURES].to_numpy(np.float64), expected, rtol=1e-5, atol=1e-6)


def test_metrics_of_the_chain(chain: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    unsphered = json.loads(chain["metrics_annotated"].read_text())
    sphered = json.loads(chain["metrics_sphered"].read_text())
    assert unsphered["n_queries"] == sphered["n_queries"] == 4
    assert unsphered["mean_average_precision"] == pytest.approx(1.0)
    assert sphered["mean_average_precision"] == pytest.approx(1.0)
    # The same numbers with the feature list spelled out as a glob.
    explicit = chain["sphered"].parent / "metrics_glob.json"
    cpcnn("evaluate", chain["sphered"], "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
          "--features", "efficientnet_*", "--out", explicit)
    assert json.loads(explicit.read_text())["mean_average_precision"] == sphered["mean_average_precision"]


@pytest.fixture(scope="module")
def legacy(plate: Plate) -> list[Path]:
    """The plate's cells as the previous version wrote them: coordinates unprefixed, no object number."""
    folder = plate.root / "legacy"
    folder.mkdir()
    paths = []
    for path in plate.cells:
        table = pd.read_parquet(path).drop(columns="Metadata_ObjectNumber")
        table = table.rename(columns=lambda c: c.removeprefix("Metadata_") if "Location" in c else c)
        site = table.pop("Metadata_Site").astype(str)  # the previous version wrote the site as text
        table.insert(2, "Metadata_Site", site)
        paths.append(write_profiles(table, folder / path.name))
    return paths


def test_legacy_tables_read_coordinates_as_metadata_with_one_warning(
    plate: Plate, chain: dict[str, Path], legacy: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    assert "Nuclei_Location_Center_X" in pd.read_parquet(legacy[0]).columns
    sites = plate.root / "legacy_sites.parquet"
    with caplog.at_level(logging.WARNING, logger="cpcnn"):
        cpcnn("aggregate", *legacy, "--by", SITE_BY, "--op", "median", "--out", sites)
    notes = [r.getMessage() for r in caplog.records if "as metadata" in r.getMessage()]
    assert len(notes) == 1 and "Nuclei_Location_Center_X, Nuclei_Location_Center_Y" in notes[0]
    assert _features_of(sites) == FEATURES
    new = pd.read_parquet(chain["sites"])
    np.testing.assert_array_equal(pd.read_parquet(sites)[FEATURES].to_numpy(), new[FEATURES].to_numpy())

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpcnn"):
        table = read_profiles(legacy[:3])
    assert len([r for r in caplog.records if "as metadata" in r.getMessage()]) == 1
    assert feature_columns(table) == FEATURES


def test_leaked_coordinates_would_change_the_answer(plate: Plate, chain: dict[str, Path], legacy: list[Path]) -> None:
    """What the previous version did (coordinates as features) measurably hurts retrieval here, so the
    checks above would catch a leak."""
    leaky = ["efficientnet_*", "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]
    sites, wells_path = plate.root / "leaky_sites.parquet", plate.root / "leaky_wells.parquet"
    cpcnn("aggregate", *legacy, "--by", SITE_BY, "--op", "median", "--features", ",".join(leaky), "--out", sites)
    cpcnn("aggregate", sites, "--by", WELL_BY, "--features", ",".join(leaky), "--op", "mean", "--out", wells_path)
    annotated = read_profiles(wells_path, features=leaky).merge(plate.platemap, on="Metadata_Well")
    write_profiles(annotated, wells_path)
    metrics = plate.root / "leaky.json"
    cpcnn("evaluate", wells_path, "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
          "--features", ",".join(leaky), "--out", metrics)
    clean = json.loads(chain["metrics_annotated"].read_text())["mean_average_precision"]
    assert json.loads(metrics.read_text())["mean_average_precision"] < clean - 0.1


def test_features_option_on_every_command(plate: Plate, chain: dict[str, Path]) -> None:
    """A glob and a list select the same columns, and every command uses exactly them."""
    root = plate.root / "subset"
    root.mkdir()
    subset = [f"efficientnet_{i}" for i in range(5)]
    glob, names = "efficientnet_[0-4]", ",".join(subset)
    sites = root / "sites.parquet"
    cpcnn("aggregate", *plate.cells[:4], "--by", SITE_BY, "--op", "median", "--features", glob, "--out", sites)
    assert _features_of(sites) == subset
    annotated = chain["annotated"]
    transform, sphered = root / "t.npz", root / "sphered.parquet"
    cpcnn("sphering", "fit", annotated, "--controls", CONTROLS, "--lambda", "1e-3", "--features", names,
          "--out", transform)
    assert list(Sphering.load(transform).features) == subset
    cpcnn("sphering", "apply", transform, annotated, "--features", glob, "--out", sphered)
    assert _features_of(sphered) == subset
    with pytest.raises(SystemExit):  # argparse: the option needs a value
        main(["sphering", "apply", str(transform), str(annotated), "--out", str(sphered), "--features"])
    assert main(["sphering", "apply", str(transform), str(annotated), "--out", str(sphered)]) == 1  # 672 != 5
    sweep = root / "sweep.json"
    cpcnn("sphering", "sweep", annotated, "--controls", CONTROLS, "--lambdas", "1e-3,1e-1", "--id",
          "Metadata_broad_sample", "--annotation", "Metadata_moa", "--features", glob, "--out", sweep)
    assert json.loads(sweep.read_text())["settings"]["n_features"] == 5
    library = root / "library"
    cpcnn("library", "build", sphered, "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
          "--features", glob, "--out", library)
    assert list(Library.load(library).feature_names) == subset
    matches = root / "matches.parquet"
    cpcnn("match", library, annotated, "--features", names, "--top-k", "2", "--out", matches)
    assert len(pd.read_parquet(matches)) == 2 * len(wells())
    metrics = root / "metrics.json"
    cpcnn("evaluate", sphered, "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
          "--features", glob, "--out", metrics)
    assert json.loads(metrics.read_text())["n_queries"] == 4
    # A pattern that matches nothing and a Metadata column are one-line errors (exit code 1).
    assert main(["evaluate", str(sphered), "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
                 "--features", "cellprofiler_*", "--out", str(metrics)]) == 1
    assert main(["evaluate", str(sphered), "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
                 "--features", "Metadata_Well", "--out", str(metrics)]) == 1
