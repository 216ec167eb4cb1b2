"""`cpcnn embed` end to end on a tiny model: the table it writes, and one-line errors with exit code 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
from _tiny_model import expected_features, locations_csv, save_tiny_model, synthetic_site

from cpcnn.cli.main import main
from cpcnn.crops import crop_cells
from cpcnn.io.images import read_site
from cpcnn.profiles import feature_columns, read_profiles


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path, dict, np.ndarray]:
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path / "home"))
    save_tiny_model(tmp_path / "home" / "models")
    channels, centers = synthetic_site(n_cells=5)
    args = []
    for name, plane in channels.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", plane, compression="zlib")
        args.append(f"--image={name}={tmp_path / f'{name}.tif'}")
    (tmp_path / "nuclei.csv").write_bytes(locations_csv(centers))
    return args, tmp_path, channels, centers


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_embed_writes_one_row_per_cell(site: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    images, folder, channels, centers = site
    out = folder / "cells.parquet"
    code, _ = run(["embed", *images, "--locations", str(folder / "nuclei.csv"), "--plate", "P1", "--well", "B02",
                   "--site", "4", "--out", str(out)], capsys)
    assert code == 0
    table = pq.read_table(out).to_pandas()
    assert list(table.columns[:8]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Model",
                                       "Metadata_ObjectNumber", "Metadata_Nuclei_Location_Center_X",
                                       "Metadata_Nuclei_Location_Center_Y", "efficientnet_0"]
    assert table["Metadata_Well"].tolist() == ["B02"] * 5
    assert table["Metadata_Site"].tolist() == [4] * 5 and table["Metadata_Site"].dtype == np.int64
    assert table["Metadata_ObjectNumber"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(table["Metadata_Nuclei_Location_Center_X"], centers[:, 0])
    features = table[[c for c in table.columns if c.startswith("efficientnet_")]].to_numpy()
    expected = expected_features(crop_cells(read_site(channels), centers))
    assert np.abs(features - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, f: [x for x in a if "ER=" not in x], "missing channel(s) ER"),
        (lambda a, f: [*a, a[0]], "given more than once"),
        (lambda a, f: [*a[:-1], f"--image=Mito={f / 'nope.tif'}"], "does not exist"),
        (lambda a, f: [*a, "--model", "nosuch"], "model 'nosuch' is not in the store"),
        (lambda a, f: [*a, "--stack", str(f / "DNA.tif")], "either --image"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    site: tuple, capsys: pytest.CaptureFixture[str], change, message: str
) -> None:
    images, folder, _, _ = site
    argv = ["embed", *change(images, folder), "--locations", str(folder / "nuclei.csv"), "--out",
            str(folder / "x.parquet")]
    code, err = run(argv, capsys)
    assert code == 1
    assert message in err and err.startswith("cpcnn: error:") and "\n" not in err
    assert not (folder / "x.parquet").exists()


def test_bad_locations_and_box_outside(site: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    images, folder, _, _ = site
    (folder / "bad.csv").write_text("x,y\n1,2\n")
    code, err = run(["embed", *images, "--locations", str(folder / "bad.csv"), "--out", str(folder / "x.npz")], capsys)
    assert code == 1 and "Nuclei_Location_Center_X" in err
    (folder / "far.csv").write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n10,10\n900,10\n")
    code, err = run(["embed", *images, "--locations", str(folder / "far.csv"), "--out", str(folder / "x.npz")], capsys)
    assert code == 1 and "row 1 (x=900, y=10)" in err


@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_batch_size_is_a_usage_error(site: tuple, capsys: pytest.CaptureFixture[str], value: str) -> None:
    images, folder, _, _ = site
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", *images, "--locations", str(folder / "nuclei.csv"), "--out", str(folder / "x.parquet"),
              "--batch-size", value])
    assert exit_info.value.code == 2
    assert "positive integer or 'auto'" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_embed_other_formats_carry_the_same_metadata(
    site: tuple, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    images, folder, _, centers = site
    numbered = folder / "numbered.csv"
    numbered.write_text("ObjectNumber,Location_Center_X,Location_Center_Y\n"
                        + "".join(f"{9 - i},{x},{y}\n" for i, (x, y) in enumerate(centers)))
    out = folder / f"cells{suffix}"
    code, _ = run(["embed", *images, "--locations", str(numbered), "--plate", "P1", "--well", "B02", "--site", "s2",
                   "--out", str(out)], capsys)
    assert code == 0
    if suffix == ".csv":
        table = pd.read_csv(out)
        assert [c for c in table.columns if not c.startswith("efficientnet_")] == [
            "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Model", "Metadata_ObjectNumber",
            "Metadata_Nuclei_Location_Center_X", "Metadata_Nuclei_Location_Center_Y"]
        assert table["Metadata_Site"].tolist() == ["s2"] * 5  # not a number: stays text
        assert table["Metadata_ObjectNumber"].tolist() == [9, 8, 7, 6, 5]
        return
    with np.load(out, allow_pickle=True) as archive:  # our own file; DeepProfiler's layout
        assert sorted(archive.files) == ["features", "locations", "metadata", "object_numbers"]
        assert archive["metadata"].item() == {"Metadata_Plate": "P1", "Metadata_Well": "B02",
                                              "Metadata_Site": "s2", "Metadata_Model": "efficientnet"}
        np.testing.assert_array_equal(archive["object_numbers"], [9, 8, 7, 6, 5])
        np.testing.assert_array_equal(archive["locations"], centers)
    table = read_profiles(out)  # the npz reader names the locations and object numbers as the tables do
    np.testing.assert_array_equal(table["Metadata_Nuclei_Location_Center_Y"], centers[:, 1])
    assert table["Metadata_ObjectNumber"].dtype == np.int64
    assert table["Metadata_ObjectNumber"].tolist() == [9, 8, 7, 6, 5]
    assert table["Metadata_Site"].tolist() == ["s2"] * 5  # not a number: stays text
    assert feature_columns(table) == [f"efficientnet_{i}" for i in range(672)]


def test_npz_metadata_site_is_an_integer(site: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    images, folder, _, _ = site
    out = folder / "cells.npz"
    assert run(["embed", *images, "--locations", str(folder / "nuclei.csv"), "--site", "3", "--out", str(out)],
               capsys)[0] == 0
    with np.load(out, allow_pickle=True) as archive:
        assert archive["metadata"].item()["Metadata_Site"] == 3
    table = read_profiles(out)  # read back as the Parquet and CSV outputs are: an integer site
    assert table["Metadata_Site"].dtype == np.int64 and set(table["Metadata_Site"]) == {3}
    assert table["Metadata_ObjectNumber"].tolist() == list(range(1, len(table) + 1))
