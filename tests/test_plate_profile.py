"""``cpcnn profile`` on a tiny synthetic screen (``cpcnn synth plate``): outputs, resume, skips, bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pandas as pd
import pyarrow.dataset as ds
import pytest
from _tiny_model import save_tiny_model

from cpcnn.cli.main import main
from cpcnn.model_store import ModelStore, cpcnn_home
from cpcnn.plates.load_data import read_load_data
from cpcnn.synth.plate import Screen, write_screen

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def screen(tmp_path: Path) -> Screen:
    save_tiny_model(cpcnn_home() / "models")
    return write_screen(tmp_path / "screen", wells=2, sites=2, cells_per_site=6, size=256, seed=1)


def _profile(screen: Screen, out: Path, *extra: str) -> int:
    return main(["profile", "--load-data", str(screen.load_data), "--locations", str(screen.nuclei),
                 "--model", "cnn1", "--out", str(out), "--device", "cpu", "--quiet", *extra])


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")}


def test_profile_writes_cells_sites_wells_and_run_json(screen: Screen, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _profile(screen, out, "--illum", "--platemap", str(screen.platemap)) == 0
    cells = ds.dataset(out / "cells", format="parquet").to_table().to_pandas()
    assert len(cells) == 24 and cells.Metadata_Site.dtype == "int64"
    assert cells.columns[:7].tolist() == [
        "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Model", "Metadata_ObjectNumber",
        "Metadata_Nuclei_Location_Center_X", "Metadata_Nuclei_Location_Center_Y",
    ]
    assert len(pd.read_parquet(out / "sites.parquet")) == 4
    wells = pd.read_parquet(out / "wells.parquet")
    assert {"Metadata_Treatment", "Metadata_MoA"} <= set(wells.columns) and len(wells) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["model"]["sha256"] == ModelStore().get("cnn1").manifest.onnx_sha256
    assert run["settings"]["illum"] is True and run["sites_embedded"] == 4 and run["skipped"] == {}
    assert sorted(run["cells_per_site"].values()) == [6, 6, 6, 6] and run["cells_per_s"] > 0
    assert set(run["timings"]) == {"setup_s", "embed_s", "summaries_s"}

    before = _mtimes(out)
    assert _profile(screen, out, "--illum", "--platemap", str(screen.platemap)) == 0  # nothing left to do
    assert _mtimes(out) == before
    rerun = json.loads((out / "run.json").read_text())
    assert rerun["sites_reused"] == 4 and rerun["sites_embedded"] == 0 and rerun["cells"] == 0
    assert rerun["cells_per_site"] == run["cells_per_site"]


def test_a_missing_image_skips_its_site_and_fails_the_exit_code(
    screen: Screen, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (screen.load_data.parent / "images" / "SYNTH-P1" / "A02_s1_ER.tiff").unlink()
    out = tmp_path / "out"
    assert _profile(screen, out) == 3
    err = capsys.readouterr().err
    assert "skipped plate SYNTH-P1 well A02 site 1" in err and "A02_s1_ER.tiff does not exist" in err
    run = json.loads((out / "run.json").read_text())
    assert list(run["skipped"]) == ["SYNTH-P1__A02__1"] and run["sites_embedded"] == 3
    assert len(pd.read_parquet(out / "sites.parquet")) == 3


def _rows(csv: Path, change) -> None:  # type: ignore[no-untyped-def]
    table = pd.read_csv(csv)
    change(table).to_csv(csv, index=False)


@pytest.mark.parametrize(
    ("break_input", "extra", "message"),
    [
        (None, ("--channel", "Hoechst=OrigDNA"), "unknown channel Hoechst"),
        (None, ("--channel", "DNA=OrigHoechst"), "lacks column\\(s\\) FileName_OrigHoechst"),
        ("load_data", (), "duplicate site in load_data.csv: plate SYNTH-P1 well A01 site 1 on lines 2 and 6"),
        ("nuclei", (), "SYNTH-P2"),
        ("platemap", (), "platemap platemap.csv names 1 well\\(s\\) the plate does not have: Z99"),
        (None, ("--sites", "*/H12/*"), "--sites \\*/H12/\\* matches none of the 4 sites"),
    ],
)
def test_bad_input_is_one_line_and_loses_nothing(
    screen: Screen, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    break_input: str | None, extra: tuple[str, ...], message: str,
) -> None:
    out = tmp_path / "out"
    assert _profile(screen, out, "--sites", "*/A01/1") == 0
    before = _mtimes(out)
    capsys.readouterr()
    if break_input == "load_data":
        _rows(screen.load_data, lambda t: pd.concat([t, t.iloc[[0]]]))
    elif break_input == "nuclei":
        _rows(screen.nuclei, lambda t: t.assign(Metadata_Plate="SYNTH-P2"))
    elif break_input == "platemap":
        _rows(screen.platemap, lambda t: pd.concat([t, t.iloc[[0]].assign(Metadata_Well="Z99")]))
    platemap = ("--platemap", str(screen.platemap)) if break_input == "platemap" else ()
    assert _profile(screen, out, *extra, *platemap) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cpcnn: error: "), err
    assert re.search(message, err), err
    assert _mtimes(out) == before


def test_sites_filter_profiles_only_matching_sites(screen: Screen, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _profile(screen, out, "--sites", "SYNTH-P1/A02/*") == 0
    assert sorted(_mtimes(out)) == ["SYNTH-P1__A02__1.parquet", "SYNTH-P1__A02__2.parquet"]


def test_a_different_model_or_setting_never_mixes_into_an_output(screen: Screen, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _profile(screen, out, "--sites", "*/A01/1") == 0
    assert _profile(screen, out, "--illum") == 1
    assert "was made with illum=False, not True" in capsys.readouterr().err


def test_jump_layout_writes_the_wells_as_jump_does(screen: Screen, tmp_path: Path) -> None:
    from cpcnn.plates.jump import read_jump_wells

    out = tmp_path / "out"
    assert _profile(screen, out, "--jump-layout") == 0
    [written] = json.loads((out / "run.json").read_text())["jump_layout"]
    assert Path(written) == out / "jump/source_local/workspace_dl/profiles/cpcnn_zenodo_7114558/local/SYNTH-P1/SYNTH-P1.parquet"
    jump = read_jump_wells(Path(written))
    wells = pd.read_parquet(out / "wells.parquet")
    features = [c for c in wells.columns if c.startswith("efficientnet_")]
    assert jump.Metadata_Well.tolist() == wells.Metadata_Well.tolist()
    assert (jump[features].to_numpy() == wells[features].to_numpy()).all()


def test_a_deepprofiler_project_gives_the_load_data_cells(screen: Screen, tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_reference", REPO / "scripts/deepprofiler/run_reference.py")
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    nuclei = pd.read_csv(screen.nuclei)
    sites = []
    for site in read_load_data(screen.load_data):
        mine = nuclei[(nuclei.Metadata_Well == site.well) & (nuclei.Metadata_Site == int(site.site))]
        locations = tmp_path / "locations" / f"{site.name}.csv"
        locations.parent.mkdir(exist_ok=True)
        mine.rename(columns={"Location_Center_X": "Nuclei_Location_Center_X",
                             "Location_Center_Y": "Nuclei_Location_Center_Y"}).to_csv(locations, index=False)
        sites.append({"plate": site.plate, "well": site.well, "site": site.site, "height": 256, "width": 256,
                      "channels": {c: str(p) for c, p in site.images.items()}, "locations": str(locations)})
    checkpoint = tmp_path / "checkpoint.hdf5"
    checkpoint.write_bytes(b"")
    reference.layout_project(str(tmp_path / "dp"), sites, "/", str(checkpoint), 16)
    assert _profile(screen, tmp_path / "from-load-data") == 0
    assert main(["profile", "--deepprofiler-project", str(tmp_path / "dp"), "--model", "cnn1", "--out",
                 str(tmp_path / "from-dp"), "--device", "cpu", "--quiet"]) == 0
    expected = ds.dataset(tmp_path / "from-load-data" / "cells", format="parquet").to_table().to_pandas()
    cells = ds.dataset(tmp_path / "from-dp" / "cells", format="parquet").to_table().to_pandas()
    pd.testing.assert_frame_equal(cells, expected)


@pytest.mark.slow
def test_detect_nuclei_finds_the_cells(screen: Screen, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["profile", "--load-data", str(screen.load_data), "--detect-nuclei", "--model", "cnn1",
                 "--out", str(out), "--device", "cpu", "--quiet", "--sites", "*/A01/1"])
    assert code == 0
    assert 3 <= len(pd.read_parquet(out / "cells")) <= 9  # 6 synthetic nuclei


@pytest.mark.slow
def test_server_mode_gives_the_local_cells(screen: Screen, tmp_path: Path, api: httpx.Client) -> None:
    assert _profile(screen, tmp_path / "local", "--illum") == 0
    server = ("--server", str(api.base_url), "--max-in-flight", "2")
    os.environ.pop("CPCNN_API_KEY", None)
    assert _profile(screen, tmp_path / "remote", "--illum", *server) == 0
    local = ds.dataset(tmp_path / "local" / "cells", format="parquet").to_table().to_pandas()
    remote = ds.dataset(tmp_path / "remote" / "cells", format="parquet").to_table().to_pandas()
    pd.testing.assert_frame_equal(remote, local)
    for name in ("sites.parquet", "wells.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "remote" / name),
                                      pd.read_parquet(tmp_path / "local" / name))
    assert json.loads((tmp_path / "remote" / "run.json").read_text())["model"]["server"] == str(api.base_url)
