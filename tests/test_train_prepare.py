"""``cpcnn train prepare``: illumination-corrected, percentile-stretched 8-bit PNGs and a training index.

Slow as a whole: the written index is checked with the trainer's own reader, which imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _plate_files import write_plate
from cpcnn.training.prepare import (
    PrepareSettings,
    prepare,
    read_platemap,
    sites_from_index,
    sites_from_load_data,
)

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main
from cpcnn.errors import InputError
from cpcnn.illum import read_illum
from cpcnn.io.images import read_channel
from cpcnn.locations import read_locations
from cpcnn.plates.locations import open_locations

pytestmark = pytest.mark.slow


def _run(root: Path, out: Path, **kwargs: object) -> object:
    files = (root / "load_data.csv", root / "nuclei.csv", root / "platemap.csv")
    return prepare(
        sites_from_load_data(files[0]),
        out,
        locations=open_locations(files[1]),
        platemap=read_platemap(files[2]),
        progress=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_given_illum_pngs_match_an_independent_computation(tmp_path: Path) -> None:
    from cpcnn.training.data import read_index

    plate = write_plate(tmp_path / "plate", sites=2)
    out = tmp_path / "out"
    result = _run(plate.root, out)
    assert result.images_written == 6 * 5 and result.sites == 6  # type: ignore[attr-defined]
    sites = read_index(out / "index.csv", label="Metadata_Treatment", channels=CHANNELS)
    assert len(sites) == 6 and {s.label for s in sites} == {"T0", "T1", "T2"}
    scaling = json.loads((out / "illum" / "P1" / "scaling.json").read_text())["channels"]
    load_data = pd.read_csv(plate.load_data)
    for channel in ("DNA", "Mito"):
        low, high = scaling[channel]["low"], scaling[channel]["high"]
        function = read_illum(plate.root / "illum" / "P1" / f"P1_Illum{channel}.npy")
        written = []
        for _, row in load_data.iterrows():
            raw = read_channel(plate.root / row[f"PathName_Orig{channel}"] / row[f"FileName_Orig{channel}"])
            expected = np.clip(np.rint((raw / function - low) / (high - low) * 255), 0, 255)
            png = read_channel(
                out / "images" / "P1" / f"{row['Metadata_Well']}_s{row['Metadata_Site']}_{channel}.png"
            )
            assert png.dtype == np.uint8
            assert np.abs(png.astype(int) - expected).max() <= 1
            written.append(png)
        assert min(p.min() for p in written) == 0 and max(p.max() for p in written) == 255
    for site in sites:
        np.testing.assert_allclose(
            read_locations(site.locations), plate.centers[(site.plate, site.well, site.site)]
        )


def test_rerun_skips_finished_images_and_redoes_a_missing_one(tmp_path: Path) -> None:
    plate = write_plate(tmp_path / "plate", wells=("A01", "B01"), sites=1)
    out = tmp_path / "out"
    _run(plate.root, out)
    target = out / "images" / "P1" / "B01_s1_ER.png"
    before = target.read_bytes()
    target.unlink()
    (target.parent / ".B01_s1_ER.png-half").write_bytes(before[:10])  # a killed write's leftover
    again = _run(plate.root, out)
    assert again.images_written == 1 and again.images_done_before == 9  # type: ignore[attr-defined]
    assert target.read_bytes() == before
    nothing = _run(plate.root, out)
    assert nothing.images_written == 0  # type: ignore[attr-defined]


def test_rerun_recomputes_a_removed_function(tmp_path: Path) -> None:
    plate = write_plate(tmp_path / "plate", wells=("A01",), sites=1)
    out = tmp_path / "out"
    settings = PrepareSettings(illum="compute", filter_size=40)
    _run(plate.root, out, settings=settings)
    function = out / "illum" / "P1" / "P1_IllumAGP.npy"
    before = function.read_bytes()
    function.unlink()
    (out / "images" / "P1" / "A01_s1_AGP.png").unlink()
    assert _run(plate.root, out, settings=settings).images_written == 1  # type: ignore[attr-defined]
    assert function.read_bytes() == before


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    plate = write_plate(tmp_path / "plate", wells=("A01", "B01"), sites=2)
    _run(plate.root, tmp_path / "one", workers=1, settings=PrepareSettings(illum="compute", filter_size=40))
    _run(plate.root, tmp_path / "two", workers=2, settings=PrepareSettings(illum="compute", filter_size=40))
    for path in sorted((tmp_path / "one").rglob("*.png")) + sorted((tmp_path / "one").rglob("*.npy")):
        assert path.read_bytes() == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes()


def test_an_index_is_prepared_again_keeping_its_columns(tmp_path: Path) -> None:
    plate = write_plate(tmp_path / "plate", wells=("A01", "B01"), sites=1)
    _run(plate.root, tmp_path / "first")
    index = pd.read_csv(tmp_path / "first" / "index.csv")
    index["Metadata_Batch"] = "b1"
    index.to_csv(tmp_path / "first" / "index.csv", index=False)
    sites = sites_from_index(tmp_path / "first" / "index.csv", label="Metadata_Treatment")
    result = prepare(
        sites, tmp_path / "second", settings=PrepareSettings(illum="compute", filter_size=40), progress=False
    )
    again = pd.read_csv(result.index)
    assert list(again["Metadata_Batch"]) == ["b1", "b1"]
    assert list(again["Metadata_Treatment"]) == list(index["Metadata_Treatment"])
    assert (tmp_path / "second" / "illum" / "P1" / "P1_IllumDNA.npy").is_file()
    assert (tmp_path / "second" / again["locations"][0]).is_file() or Path(again["locations"][0]).is_file()


def test_cli_prepare_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plate = write_plate(tmp_path / "plate", wells=("A01",), sites=1)
    args = ["train", "prepare", "--load-data", str(plate.load_data), "--out", str(tmp_path / "out"), "-q"]
    assert (
        main([*args, "--locations", str(plate.nuclei), "--platemap", str(plate.platemap), "--workers", "1"])
        == 0
    )
    assert "1 sites" in capsys.readouterr().out
    assert main(args) == 1
    assert "cpcnn: error: --load-data needs --locations" in capsys.readouterr().err
    (plate.root / "illum" / "P1" / "P1_IllumRNA.npy").unlink()
    assert (
        main(
            [
                *args[:-3],
                "--out",
                str(tmp_path / "out2"),
                "--locations",
                str(plate.nuclei),
                "--illum",
                "given",
            ]
        )
        == 1
    )
    assert "P1_IllumRNA.npy does not exist" in capsys.readouterr().err


def test_missing_illum_columns_and_platemap_problems_are_named(tmp_path: Path) -> None:
    plate = write_plate(tmp_path / "plate", wells=("A01", "B01"), sites=1)
    table = pd.read_csv(plate.load_data)
    table.drop(columns=[c for c in table.columns if "Illum" in c]).to_csv(plate.load_data, index=False)
    with pytest.raises(InputError, match="names no illumination function for DNA"):
        _run(plate.root, tmp_path / "out", settings=PrepareSettings(illum="given"))
    pd.DataFrame({"Well": ["A01"]}).to_csv(plate.platemap, index=False)
    with pytest.raises(InputError, match="lacks Metadata_Well"):
        read_platemap(plate.platemap)
    pd.DataFrame({"Metadata_Well": ["A01"], "Metadata_Treatment": ["x"]}).to_csv(plate.platemap, index=False)
    result = _run(plate.root, tmp_path / "out", settings=PrepareSettings(illum="none"))
    assert result.sites == 1 and "platemap does not list" in result.skipped[0]  # type: ignore[attr-defined]


def test_synthetic_screen_function_recovers_the_shading_and_flattens_sites(tmp_path: Path) -> None:
    from cpcnn.training.data import read_index

    from cpcnn.synth.plate import write_screen

    screen = write_screen(tmp_path / "screen", wells=12, sites=2, cells_per_site=30, size=256)
    out = tmp_path / "out"
    settings = PrepareSettings(illum="compute", filter_size=100, downsample=4)
    result = prepare(
        sites_from_load_data(screen.load_data),
        out,
        settings=settings,
        locations=open_locations(screen.nuclei),
        platemap=read_platemap(screen.platemap),
        progress=False,
    )
    assert result.sites == 24
    sites = read_index(result.index, label="Metadata_Treatment", channels=CHANNELS)
    assert {s.label for s in sites} >= {"DMSO"}
    inner = (slice(26, -26), slice(26, -26))  # cells are sparser at the field's edges than the shading says
    for channel in CHANNELS:
        computed = np.load(out / "illum" / "SYNTH-P1" / f"SYNTH-P1_Illum{channel}.npy")
        truth = np.load(screen.root / "illum" / "SYNTH-P1" / f"SYNTH-P1_Illum{channel}.npy")
        assert np.corrcoef(computed[inner].ravel(), truth[inner].ravel())[0, 1] > 0.9, channel
        assert np.corrcoef(computed.ravel(), truth.ravel())[0, 1] > 0.8, channel
        pngs = [read_channel(s.images[channel]) for s in sites]
        assert min(p.min() for p in pngs) == 0 and max(p.max() for p in pngs) == 255
        raw_mean = np.mean(
            [read_channel(p) for p in sorted(screen.root.glob(f"images/*/*_{channel}.tiff"))], axis=0
        )
        flat_mean = np.mean(pngs, axis=0)
        assert (
            abs(np.corrcoef(flat_mean[inner].ravel(), truth[inner].ravel())[0, 1])
            < 0.5 * np.corrcoef(raw_mean[inner].ravel(), truth[inner].ravel())[0, 1]
        ), channel
