"""PlateOutput: atomic site files, site medians and well means (float64 oracle), platemap join, run.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from oracles import group_reduce_naive

from cpcnn.errors import InputError
from cpcnn.io.cells import cells_table
from cpcnn.plates.output import PlateOutput
from cpcnn.plates.platemap import check_platemap
from cpcnn.plates.sites import SiteSpec

D = 6
FEATURES = [f"efficientnet_{i}" for i in range(D)]


def _site(well: str, site: int) -> SiteSpec:
    return SiteSpec("P1", well, site, images={})


def _cells(site: SiteSpec, n: int, rng: np.random.Generator):  # -> pyarrow.Table
    features = rng.standard_normal((n, D)).astype(np.float32)
    centers = rng.uniform(10, 90, (n, 2))
    metadata = {"Metadata_Plate": site.plate, "Metadata_Well": site.well, "Metadata_Site": site.site}
    return cells_table(features, centers, metadata=metadata, model_name="m")


@pytest.fixture
def written(tmp_path: Path) -> tuple[PlateOutput, list[SiteSpec]]:
    output = PlateOutput(tmp_path / "out")
    rng = np.random.default_rng(0)
    sites = [_site(w, s) for w in ("A01", "A02") for s in (1, 2, 3)]
    for index, site in enumerate(sites):
        output.write_site(site, _cells(site, 3 + index, rng))
    return output, sites


def test_write_site_is_atomic_and_marks_done(tmp_path: Path) -> None:
    output = PlateOutput(tmp_path)
    site = _site("A01", 1)
    assert not output.done(site)
    output.cells_dir.mkdir()
    (output.cells_dir / f".{site.name}.parquet-leftover").write_bytes(b"PAR1 half a file")
    assert not output.done(site)  # a killed write is never taken as done
    path = output.write_site(site, _cells(site, 4, np.random.default_rng(1)).to_pandas())
    assert path == tmp_path / "cells" / "P1__A01__1.parquet" and output.done(site)
    assert output.cell_files() == [path]
    assert ds.dataset(output.cells_dir, format="parquet").to_table().num_rows == 4  # dot-names ignored


def test_sites_are_cell_medians_and_wells_site_means(written: tuple[PlateOutput, list[SiteSpec]]) -> None:
    output, _ = written
    output.finish(platemap=None, run={"model": "m"})
    cells = ds.dataset(output.cells_dir, format="parquet").to_table().to_pandas()
    keys = list(zip(cells.Metadata_Well, cells.Metadata_Site, strict=True))
    medians = group_reduce_naive(cells[FEATURES].to_numpy(np.float64), keys, "median")
    sites = pd.read_parquet(output.sites_path)
    assert len(sites) == 6
    for _, row in sites.iterrows():
        np.testing.assert_allclose(row[FEATURES].to_numpy(np.float64), medians[(row.Metadata_Well, row.Metadata_Site)],
                                   rtol=1e-6)
    assert sites.Metadata_Count_Cells.tolist() == [cells.groupby(["Metadata_Well", "Metadata_Site"]).size()[k]
                                                    for k in zip(sites.Metadata_Well, sites.Metadata_Site, strict=True)]
    means = group_reduce_naive(sites[FEATURES].to_numpy(np.float64), list(sites.Metadata_Well), "mean")
    wells = pd.read_parquet(output.wells_path)
    assert wells.Metadata_Well.tolist() == ["A01", "A02"]
    for _, row in wells.iterrows():
        np.testing.assert_allclose(row[FEATURES].to_numpy(np.float64), means[row.Metadata_Well], rtol=1e-6)
    assert wells.Metadata_Count_Cells.sum() == len(cells)
    assert json.loads(output.run_path.read_text()) == {"model": "m"}
    assert not [p for p in output.root.rglob(".*")]  # no temporaries left


def test_wells_carry_the_platemap_before_the_features(written: tuple[PlateOutput, list[SiteSpec]]) -> None:
    output, sites = written
    platemap = pd.DataFrame({"Metadata_Well": ["A02", "A01"], "Metadata_Treatment": ["drug", "DMSO"]})
    output.finish(platemap=check_platemap(platemap, sites, source="map.csv"), run={})
    wells = pd.read_parquet(output.wells_path)
    assert wells.columns[:3].tolist() == ["Metadata_Plate", "Metadata_Well", "Metadata_Treatment"]
    assert wells.Metadata_Treatment.tolist() == ["DMSO", "drug"]
    assert wells.columns[-D:].tolist() == FEATURES


@pytest.mark.parametrize(
    ("platemap", "message"),
    [
        ({"Well": ["A01"]}, "no Metadata_Well column"),
        ({"Metadata_Well": ["A01", "A01", "A02"]}, "lists well A01 more than once"),
        ({"Metadata_Well": ["A01", "A02", "Z99"]}, "1 well\\(s\\) the plate does not have: Z99"),
        ({"Metadata_Well": ["A01"]}, "no row for 1 well\\(s\\): A02"),
    ],
)
def test_bad_platemaps_are_one_line_errors(platemap: dict[str, list[str]], message: str) -> None:
    sites = [_site("A01", 1), _site("A02", 1)]
    with pytest.raises(InputError, match=message):
        check_platemap(pd.DataFrame(platemap), sites, source="map.csv")


def test_finish_on_no_cells_writes_empty_tables(tmp_path: Path) -> None:
    output = PlateOutput(tmp_path)
    output.finish(platemap=None, run={"sites": 0})
    assert pd.read_parquet(output.sites_path).empty and pd.read_parquet(output.wells_path).empty
