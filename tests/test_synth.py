"""`cpcnn synth plate`: the files and columns other parts read, determinism, treatments that show in the
crops, confounders that illumination functions undo, one-line errors, and `cpcnn embed` on a synthetic site."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from _tiny_model import save_tiny_model

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main
from cpcnn.crops import crop_cells
from cpcnn.illum import apply_illum, read_illum
from cpcnn.io.images import read_site
from cpcnn.synth.plate import Screen, conditions_for_plate, write_screen
from cpcnn.synth.treatments import MOAS, Phenotype, design_layout

SMALL = {"wells": 2, "sites": 1, "cells_per_site": 8, "size": 256}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _site_image(screen: Screen, row: dict[str, str], *, illum: bool = False) -> np.ndarray:
    root = screen.load_data.parent
    image = read_site({ch: root / row[f"PathName_Orig{ch}"] / row[f"FileName_Orig{ch}"] for ch in CHANNELS})
    if illum:
        for index, ch in enumerate(CHANNELS):
            function = read_illum(root / row[f"PathName_Illum{ch}"] / row[f"FileName_Illum{ch}"])
            image[..., index] = apply_illum(image[..., index], function)
    return image


def _centers(screen: Screen, plate: str, well: str, site: str) -> np.ndarray:
    rows = [
        r for r in _rows(screen.nuclei)
        if (r["Metadata_Plate"], r["Metadata_Well"], r["Metadata_Site"]) == (plate, well, site)
    ]
    assert [int(r["ObjectNumber"]) for r in rows] == list(range(1, len(rows) + 1))
    return np.array([[float(r["Location_Center_X"]), float(r["Location_Center_Y"])] for r in rows])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Screen:
    return write_screen(tmp_path_factory.mktemp("synth"), plates=2, seed=3, **SMALL)


def test_files_and_columns_are_the_documented_layout(small: Screen) -> None:
    load = _rows(small.load_data)
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    header += [f"{kind}_Orig{ch}" for ch in CHANNELS for kind in ("FileName", "PathName")]
    header += [f"{kind}_Illum{ch}" for ch in CHANNELS for kind in ("FileName", "PathName")]
    assert list(load[0]) == header
    assert [(r["Metadata_Plate"], r["Metadata_Well"], r["Metadata_Site"]) for r in load] == [
        ("SYNTH-P1", "A01", "1"), ("SYNTH-P1", "A02", "1"), ("SYNTH-P2", "A01", "1"), ("SYNTH-P2", "A02", "1")
    ]
    assert load[2]["FileName_OrigMito"] == "A01_s1_Mito.tiff" and load[2]["PathName_OrigMito"] == "images/SYNTH-P2"
    assert load[2]["FileName_IllumER"] == "SYNTH-P2_IllumER.npy" and load[2]["PathName_IllumER"] == "illum/SYNTH-P2"
    for ch in CHANNELS:
        function = np.load(small.root / "illum" / "SYNTH-P1" / f"SYNTH-P1_Illum{ch}.npy")
        assert function.dtype == np.float32 and function.shape == (256, 256)
        assert function.min() > 0 and abs(function.mean() - 1) < 1e-3
    nuclei = _rows(small.nuclei)
    assert list(nuclei[0]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber",
                               "Location_Center_X", "Location_Center_Y"]
    assert len(nuclei) == 4 * SMALL["cells_per_site"]
    platemap = _rows(small.platemap)
    assert list(platemap[0]) == ["Metadata_Well", "Metadata_Treatment", "Metadata_MoA", "Metadata_Control"]
    controls = [r for r in platemap if r["Metadata_Control"] == "True"]
    assert [(r["Metadata_Treatment"], r["Metadata_MoA"]) for r in controls] == [("DMSO", "control")]
    treatments = _rows(small.treatments)
    assert list(treatments[0]) == ["Metadata_Treatment", "Metadata_MoA", "Metadata_Control", "Strength", "Effect"]
    assert {r["Metadata_Treatment"] for r in treatments} == {r["Metadata_Treatment"] for r in platemap}
    assert all(r["Effect"] for r in treatments)


def test_sites_read_as_uint16_images_with_nuclei_inside(small: Screen) -> None:
    import tifffile

    for row in _rows(small.load_data):
        raw = tifffile.imread(small.root / row["PathName_OrigDNA"] / row["FileName_OrigDNA"])
        assert raw.dtype == np.uint16 and raw.shape == (256, 256)
        image = _site_image(small, row)
        assert image.shape == (256, 256, 5)
        centers = _centers(small, row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Site"])
        assert centers.shape == (SMALL["cells_per_site"], 2)
        assert np.all((centers > 0) & (centers < 256))
        # Nuclei are where the DNA is: brighter at the listed centres than the site's median.
        at_centers = image[centers[:, 1].astype(int), centers[:, 0].astype(int), 0]
        assert np.all(at_centers > 2 * np.median(image[..., 0]))


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
        }

    first = digest(write_screen(tmp_path / "a", seed=5, **SMALL).root)
    second = digest(write_screen(tmp_path / "b", seed=5, **SMALL).root)
    other = digest(write_screen(tmp_path / "c", seed=6, **SMALL).root)
    assert first == second
    assert first["images/SYNTH-P1/A01_s1_DNA.tiff"] != other["images/SYNTH-P1/A01_s1_DNA.tiff"]


def test_layout_scales_with_wells() -> None:
    default = design_layout(16, seed=0)
    moas = {t.moa for _, t in default.wells}
    assert "control" in moas and len(moas - {"control"}) >= 3
    large = design_layout(64, seed=0)
    treated = [t for t in large.treatments if not t.is_control]
    assert 16 <= len(treated) <= 24 and len({t.moa for t in treated}) == 5
    assert len({t.moa for t in design_layout(384, seed=0).treatments}) == len(MOAS) + 1
    # Treatments of one MoA share its direction with different strengths: similar, not identical.
    tubulin = [t for t in treated if t.moa == "tubulin_destabilizer"]
    assert len({t.phenotype for t in tubulin}) == len(tubulin) > 1
    assert all(t.phenotype.nucleus_size > 1 and t.phenotype.cell_size < 1 for t in tubulin)
    assert [w for w, _ in large.wells][:3] == ["A01", "A02", "A03"] and large.wells[-1][0] == "C16"


def _crop_stats(crops: np.ndarray) -> np.ndarray:
    """(N, B, B, C) normalized crops -> (N, 4C): mean, spread, bright fraction and fine texture per channel."""
    texture = np.abs(np.diff(crops, axis=1)).mean(axis=(1, 2))
    return np.concatenate(
        [crops.mean(axis=(1, 2)), crops.std(axis=(1, 2)), (crops > 0.5).mean(axis=(1, 2)), texture], axis=1
    )


@pytest.mark.slow
def test_treatments_differ_in_the_crops_more_than_controls_differ_across_plates(tmp_path: Path) -> None:
    screen = write_screen(tmp_path, plates=2, wells=16, sites=1, cells_per_site=24, size=256, seed=0)
    treatment = {r["Metadata_Well"]: r["Metadata_Treatment"] for r in _rows(screen.platemap)}
    groups: dict[str, list[np.ndarray]] = {}
    raw_control_means: dict[str, list[float]] = {}
    for row in _rows(screen.load_data):
        plate, well = row["Metadata_Plate"], row["Metadata_Well"]
        image = _site_image(screen, row, illum=True)
        stats = _crop_stats(crop_cells(image, _centers(screen, plate, well, row["Metadata_Site"])))
        name = treatment[well]
        groups.setdefault(f"{name}/{plate}" if name == "DMSO" else name, []).append(stats)
        if name == "DMSO":
            raw_control_means.setdefault(plate, []).append(float(_site_image(screen, row)[..., 4].mean()))
    cells = {key: np.concatenate(value) for key, value in groups.items()}
    scale = np.concatenate(list(cells.values())).std(axis=0)
    profile = {key: value.mean(axis=0) / scale for key, value in cells.items()}
    plate_difference = np.linalg.norm(profile["DMSO/SYNTH-P1"] - profile["DMSO/SYNTH-P2"])
    control = (profile["DMSO/SYNTH-P1"] + profile["DMSO/SYNTH-P2"]) / 2
    effects = {key: np.linalg.norm(value - control) for key, value in profile.items() if "DMSO" not in key}
    assert len(effects) == 7 and min(effects.values()) > plate_difference
    # The plates' controls do differ in raw intensity (the confounders are there) ...
    p1, p2 = np.mean(raw_control_means["SYNTH-P1"]), np.mean(raw_control_means["SYNTH-P2"])
    assert abs(p1 / p2 - 1) > 0.05
    # ... and two treatments of one MoA are closer to each other than to another MoA's.
    assert np.linalg.norm(profile["TUB-01"] - profile["TUB-02"]) < np.linalg.norm(profile["TUB-01"] - profile["MIT-01"])


def test_dividing_by_the_illumination_functions_flattens_the_background(small: Screen) -> None:
    conditions = conditions_for_plate(3, 0, 256)
    row = _rows(small.load_data)[0]
    raw, corrected = _site_image(small, row), _site_image(small, row, illum=True)
    for ch in CHANNELS:
        written = np.load(small.root / row[f"PathName_Illum{ch}"] / row[f"FileName_Illum{ch}"])
        np.testing.assert_array_equal(written, conditions.illumination[ch])
    # DNA background (most of each tile: nuclei are small) follows the function before and is flat after.
    function = conditions.illumination["DNA"]
    tiles = [(slice(y, y + 64), slice(x, x + 64)) for y in range(0, 256, 64) for x in range(0, 256, 64)]
    before = np.array([np.median(raw[t][..., 0]) for t in tiles])
    after = np.array([np.median(corrected[t][..., 0]) for t in tiles])
    expected = np.array([function[t].mean() for t in tiles])
    assert np.corrcoef(before, expected)[0, 1] > 0.95
    assert after.std() / after.mean() < 0.2 * before.std() / before.mean()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "-5"], "--size must be at least 128, got -5"),
        (["--wells", "0"], "--wells must be at least 1, got 0"),
        (["--wells", "385"], "--wells must be at most 384"),
        (["--sites", "-1"], "--sites must be at least 1"),
        (["--plates", "0"], "--plates must be at least 1"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--cells-per-site", "0"], "--cells-per-site must be at least 1"),
        (["--cells-per-site", "5000", "--size", "256"], "--cells-per-site 5000 does not fit a 256x256 site"),
    ],
)
def test_bad_arguments_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["synth", "plate", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("cpcnn: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_screen_and_embed_reads_one_of_its_sites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setenv("CPCNN_HOME", str(tmp_path / "home"))
    save_tiny_model(tmp_path / "home" / "models")
    out = tmp_path / "screen"
    assert main(["synth", "plate", "--out", str(out), "--wells", "2", "--sites", "1", "--cells-per-site", "6",
                 "--size", "256", "--seed", "1"]) == 0
    assert "wrote 2 sites" in capsys.readouterr().out
    row = _rows(out / "load_data.csv")[1]
    nuclei = [r for r in _rows(out / "nuclei.csv") if r["Metadata_Well"] == row["Metadata_Well"]]
    locations = tmp_path / "site.csv"
    with locations.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(nuclei[0]))
        writer.writeheader()
        writer.writerows(nuclei)
    images = [f"--image={ch}={out / row[f'PathName_Orig{ch}'] / row[f'FileName_Orig{ch}']}" for ch in CHANNELS]
    cells = tmp_path / "cells.parquet"
    code = main(["embed", *images, "--locations", str(locations), "--plate", row["Metadata_Plate"],
                 "--well", row["Metadata_Well"], "--site", row["Metadata_Site"], "--out", str(cells)])
    assert code == 0, capsys.readouterr().err
    table = pq.read_table(cells).to_pandas()
    assert len(table) == 6 and table["Metadata_ObjectNumber"].tolist() == [1, 2, 3, 4, 5, 6]
    features = table[[c for c in table.columns if c.startswith("efficientnet_")]].to_numpy()
    assert features.shape == (6, 672) and np.all(np.isfinite(features))


def test_effect_scale_scales_each_moa_change_and_nothing_else() -> None:
    """Same seed, same draws: at scale 0.5 every MoA log2 change is half of scale 1's; side effects stay."""
    full, half = design_layout(64, 3), design_layout(64, 3, effect_scale=0.5)
    base = Phenotype()
    by_name = {m.name: m for m in MOAS}
    for a, b in zip(full.treatments[1:], half.treatments[1:], strict=True):
        assert (a.name, a.moa, a.strength) == (b.name, b.moa, b.strength)
        for parameter in vars(base):
            log_a = math.log2(getattr(a.phenotype, parameter) / getattr(base, parameter))
            log_b = math.log2(getattr(b.phenotype, parameter) / getattr(base, parameter))
            if parameter in by_name[a.moa].log2_changes and parameter != "mito_fragmentation":  # clipped at 1
                assert math.isclose(log_b, log_a / 2, abs_tol=1e-9), (a.name, parameter)
            elif parameter not in by_name[a.moa].log2_changes:
                assert math.isclose(log_b, log_a, abs_tol=1e-9), (a.name, parameter)
    assert [w for w, _ in full.wells] == [w for w, _ in half.wells]


def test_effect_scale_out_of_range_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "plate", "--out", str(tmp_path / "s"), "--effect-scale", "-1", "--size", "128",
                 "--wells", "1", "--sites", "1", "--cells-per-site", "1"]) == 1
    assert "effect scale" in capsys.readouterr().err
