"""profile_plate on a tiny plate: the same cells as ``cpcnn embed`` per site, resume, skipped sites, illum,
and the service as the embedder."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from _plate_files import PlateFiles, write_plate
from _tiny_model import save_tiny_model

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main
from cpcnn.embedding import Embedder
from cpcnn.model_store import ModelStore, cpcnn_home
from cpcnn.plates.load_data import read_load_data
from cpcnn.plates.locations import open_locations
from cpcnn.plates.output import PlateOutput
from cpcnn.plates.pipeline import PlateRun, load_site, profile_plate
from cpcnn.plates.sites import SiteSpec


@pytest.fixture
def files(tmp_path: Path) -> PlateFiles:
    save_tiny_model(cpcnn_home() / "models")
    return write_plate(tmp_path / "plate", wells=("A01", "A02"), sites=2)


@pytest.fixture
def embedder(files: PlateFiles) -> Embedder:
    embedder = Embedder(ModelStore().get("cnn1"), device="cpu", threads=2)
    yield embedder
    embedder.close()


def _run(files: PlateFiles, embedder: Embedder, out: Path, sites: list[SiteSpec] | None = None, **options) -> PlateRun:
    sites = read_load_data(files.load_data) if sites is None else sites
    return profile_plate(sites, open_locations(files.nuclei), embedder, PlateOutput(out), progress=False, **options)


def _cells(out: Path) -> pd.DataFrame:
    return ds.dataset(out / "cells", format="parquet").to_table().to_pandas()


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    return table.sort_values(keys).reset_index(drop=True)


def test_cells_are_cpcnn_embed_of_each_site(files: PlateFiles, embedder: Embedder, tmp_path: Path) -> None:
    run = _run(files, embedder, tmp_path / "out")
    assert run.skipped == {} and len(run.embedded) == 4 and run.cells == 16
    expected = []
    nuclei = pd.read_csv(files.nuclei)
    for site in read_load_data(files.load_data):
        mine = nuclei[(nuclei.Metadata_Well == site.well) & (nuclei.Metadata_Site == int(site.site))]
        locations = tmp_path / f"{site.name}.csv"
        mine[["ObjectNumber", "Location_Center_X", "Location_Center_Y"]].to_csv(locations, index=False)
        out = tmp_path / f"{site.name}.parquet"
        images = [f"--image={c}={site.images[c]}" for c in CHANNELS]
        assert main(["embed", *images, "--locations", str(locations), "--out", str(out), "--plate", site.plate,
                     "--well", site.well, "--site", str(site.site), "--device", "cpu"]) == 0
        expected.append(pd.read_parquet(out))
    cells = _cells(tmp_path / "out")
    pd.testing.assert_frame_equal(_sorted(cells), _sorted(pd.concat(expected, ignore_index=True)))
    duckdb = pytest.importorskip("duckdb")
    glob = str(tmp_path / "out" / "cells" / "*.parquet")
    counted = duckdb.sql(f"select Metadata_Well, count(*) as n from read_parquet('{glob}') group by 1 order by 1").df()
    assert counted.n.tolist() == [8, 8]


@pytest.mark.slow
def test_summaries_are_cpcnn_aggregate_of_the_cells(files: PlateFiles, embedder: Embedder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(files, embedder, out)
    PlateOutput(out).finish(platemap=None, run={})
    cell_files = sorted(str(p) for p in (out / "cells").glob("*.parquet"))
    assert main(["aggregate", *cell_files, "--by", "Metadata_Plate,Metadata_Well,Metadata_Site", "--op", "median",
                 "--out", str(tmp_path / "sites.parquet")]) == 0
    assert main(["aggregate", str(tmp_path / "sites.parquet"), "--by", "Metadata_Plate,Metadata_Well", "--op", "mean",
                 "--out", str(tmp_path / "wells.parquet")]) == 0
    for name in ("sites.parquet", "wells.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(tmp_path / name))


def test_a_rerun_computes_only_the_missing_sites(files: PlateFiles, embedder: Embedder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sites = read_load_data(files.load_data)
    _run(files, embedder, out, sites[:2])  # a run killed after two sites ...
    leftover = out / "cells" / f".{sites[2].name}.parquet-killed"
    leftover.write_bytes(b"PAR1 partial")  # ... in the middle of writing the third
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")}
    assert len(before) == 2
    run = _run(files, embedder, out)
    assert sorted(run.reused) == sorted(s.name for s in sites[:2])
    assert sorted(run.embedded) == sorted(s.name for s in sites[2:])
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")}
    assert len(after) == 4 and all(after[name] == mtime for name, mtime in before.items())
    assert len(_cells(out)) == 16  # the leftover temporary is not part of the dataset
    assert _run(files, embedder, out).embedded == {}


def test_missing_and_corrupt_images_skip_their_sites(files: PlateFiles, embedder: Embedder, tmp_path: Path) -> None:
    sites = read_load_data(files.load_data)
    sites[0].images["RNA"].unlink()
    sites[3].images["Mito"].write_bytes(sites[3].images["Mito"].read_bytes()[:300])
    run = _run(files, embedder, tmp_path / "out")
    assert sorted(run.embedded) == sorted(s.name for s in sites[1:3])
    assert set(run.skipped) == {sites[0].name, sites[3].name}
    assert "does not exist" in run.skipped[sites[0].name] and "A01_s1_RNA.tiff" in run.skipped[sites[0].name]
    assert "Mito" in run.skipped[sites[3].name]
    assert run.failed and not PlateOutput(tmp_path / "out").done(sites[0])


def test_illum_equals_embedding_divided_images(files: PlateFiles, embedder: Embedder, tmp_path: Path) -> None:
    sites = read_load_data(files.load_data)[:1]
    _run(files, embedder, tmp_path / "out", sites, illum=True)
    cells = _cells(tmp_path / "out")
    [site] = sites
    raw = load_site(site)
    functions = np.stack([np.load(site.illum[c]) for c in CHANNELS], axis=-1).astype(np.float32)
    centers = open_locations(files.nuclei).for_site(site).centers
    expected = embedder.embed_site((raw / functions).astype(np.float32), centers)
    np.testing.assert_array_equal(cells.filter(like="efficientnet_").to_numpy(np.float32), expected)


@pytest.mark.slow
def test_the_service_gives_the_same_cells(files: PlateFiles, embedder: Embedder, api: httpx.Client,
                                           tmp_path: Path) -> None:
    from cpcnn.client import Client
    from cpcnn.plates.remote import ServiceEmbedder

    _run(files, embedder, tmp_path / "local")
    with Client(str(api.base_url), api_key=os.environ.get("CPCNN_API_KEY")) as client:
        remote = ServiceEmbedder(client, "cnn1", max_in_flight=2)
        run = _run(files, remote, tmp_path / "remote")  # type: ignore[arg-type]
    assert run.skipped == {} and len(run.embedded) == 4
    pd.testing.assert_frame_equal(_sorted(_cells(tmp_path / "remote")), _sorted(_cells(tmp_path / "local")))


def test_a_missing_illumination_function_skips_with_its_name(files: PlateFiles, embedder: Embedder,
                                                             tmp_path: Path) -> None:
    sites = read_load_data(files.load_data)[:2]
    sites[0].illum["AGP"].unlink()
    run = _run(files, embedder, tmp_path / "out", sites, illum=True)
    assert set(run.skipped) == {s.name for s in sites}  # one function serves the whole plate
    assert all("P1_IllumAGP.npy does not exist" in reason for reason in run.skipped.values())
