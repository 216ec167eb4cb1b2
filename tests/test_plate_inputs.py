"""LoadData CSV -> sites, a site's images -> one (H, W, C) array (with illumination correction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from _plate_files import PLATE, write_plate

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main as main_cli
from cpcnn.errors import CpcnnError, InputError
from cpcnn.io.images import read_site
from cpcnn.plates.load_data import illum_name, parse_channel_names, parse_path_map, read_load_data
from cpcnn.plates.pipeline import load_site


def test_load_data_lists_every_site_with_files_resolved_against_the_csv_folder(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01", "B02"), sites=2)
    sites = read_load_data(files.load_data)
    assert [s.key for s in sites] == [(PLATE, w, s) for w in ("A01", "B02") for s in ("1", "2")]
    first = sites[0]
    assert first.images["DNA"] == tmp_path / "images" / PLATE / "A01_s1_DNA.tiff"
    assert all(p.is_file() for s in sites for p in [*s.images.values(), *s.illum.values()])
    assert set(first.illum) == set(CHANNELS)
    assert first.row == 2  # line in the file; the header is line 1


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    files = write_plate(tmp_path / "plate", absolute_paths=True, wells=("A01",), sites=1)
    moved = tmp_path / "elsewhere" / "load_data.csv"
    moved.parent.mkdir()
    files.load_data.rename(moved)
    [site] = read_load_data(moved)
    assert site.images["RNA"].is_file()


def test_channel_names_are_configurable_and_name_their_illumination(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01",), sites=1)
    table = pd.read_csv(files.load_data)
    table = table.rename(columns={"FileName_OrigDNA": "FileName_OrigHoechst", "PathName_OrigDNA": "PathName_OrigHoechst",
                                  "FileName_IllumDNA": "FileName_IllumHoechst", "PathName_IllumDNA": "PathName_IllumHoechst"})
    table.to_csv(files.load_data, index=False)
    with pytest.raises(InputError, match="FileName_OrigDNA.*OrigHoechst"):
        read_load_data(files.load_data)
    [site] = read_load_data(files.load_data, channels=parse_channel_names(["DNA=OrigHoechst"]))
    assert site.images["DNA"].name == "A01_s1_DNA.tiff"
    assert site.illum["DNA"].name == f"{PLATE}_IllumDNA.npy"
    assert illum_name("DNA", "Hoechst") == "IllumDNA"


def test_illumination_columns_are_optional(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01",), sites=1)
    table = pd.read_csv(files.load_data)
    table.drop(columns=[c for c in table.columns if "Illum" in c]).to_csv(files.load_data, index=False)
    [site] = read_load_data(files.load_data)
    assert site.illum == {}
    with pytest.raises(CpcnnError, match="no DNA illumination function"):
        load_site(site, illum=True)


@pytest.mark.parametrize(
    ("items", "message"),
    [(["Hoechst=OrigDNA"], "unknown channel Hoechst"), (["DNA"], "CHANNEL=LOADDATA_NAME")],
)
def test_bad_channel_options_are_one_line_errors(items: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_channel_names(items)


def test_duplicate_sites_name_both_lines(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01",), sites=2)
    table = pd.read_csv(files.load_data)
    pd.concat([table, table.iloc[[0]]]).to_csv(files.load_data, index=False)
    with pytest.raises(InputError, match="duplicate site .* well A01 site 1 on lines 2 and 4"):
        read_load_data(files.load_data)


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("Metadata_Plate,Metadata_Well,Metadata_Site\n")
    with pytest.raises(InputError, match="has no rows"):
        read_load_data(empty)
    with pytest.raises(InputError, match="does not exist"):
        read_load_data(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="unknown channel"):
        read_load_data(empty, channels={"Brightfield": "OrigBF"})


def test_load_site_is_read_site_in_model_order(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01",), sites=1)
    [site] = read_load_data(files.load_data)
    expected = read_site({c: site.images[c] for c in reversed(CHANNELS)})
    np.testing.assert_array_equal(load_site(site), expected)


def test_illum_divides_each_channel_by_its_function(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01",), sites=1)
    [site] = read_load_data(files.load_data)
    corrected = load_site(site, illum=True)
    for index, channel in enumerate(CHANNELS):
        raw = tifffile.imread(site.images[channel]).astype(np.float32)
        function = np.load(site.illum[channel]).astype(np.float32)
        np.testing.assert_array_equal(corrected[:, :, index], raw / function)


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    files = write_plate(tmp_path, wells=("A01",), sites=1)
    [site] = read_load_data(files.load_data)
    site.images["ER"].unlink()
    with pytest.raises(InputError, match="ER image .*A01_s1_ER.tiff"):
        load_site(site)


def test_jump_load_data_with_gallery_urls_reads_a_local_mirror(tmp_path: Path) -> None:
    """JUMP's load_data_with_illum.csv as published: extra metadata columns, s3:// folders with a trailing
    slash, integer sites; a mirrored Gallery is read through --path-map, the CSV left as it is."""
    files = write_plate(tmp_path / "mirror" / "cpg0016-jump" / "source_4", wells=("A01",), sites=2)
    table = pd.read_csv(files.load_data)
    local = str(tmp_path / "mirror")
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [
            "s3://cellpainting-gallery/cpg0016-jump/source_4/" + str(p).strip("/") + "/" for p in table[column]
        ]
    table.insert(0, "Metadata_Source", "source_4")
    table.insert(1, "Metadata_Batch", "2021_04_26_Batch1")
    jump_csv = tmp_path / "load_data_with_illum.csv"
    table.to_csv(jump_csv, index=False)

    sites = read_load_data(jump_csv, path_map={"s3://cellpainting-gallery/": local})
    assert [s.key for s in sites] == [(PLATE, "A01", "1"), (PLATE, "A01", "2")]
    assert all(p.is_file() for s in sites for p in [*s.images.values(), *s.illum.values()])
    with pytest.raises(InputError, match=r"s3:// URL .*--path-map s3://BUCKET/=/local/folder/"):
        read_load_data(jump_csv)
    out = tmp_path / "profile"
    code = main_cli([
        "profile", "--load-data", str(jump_csv), "--path-map", f"s3://cellpainting-gallery/={local}",
        "--locations", str(files.nuclei), "--model", "missing-model", "--out", str(out),
    ])
    assert code == 1 and not out.exists()  # sites resolved; only the model is missing


@pytest.mark.parametrize("item", ["s3://bucket/", "=/local", "noequals"])
def test_bad_path_maps_are_one_line_errors(item: str) -> None:
    with pytest.raises(InputError, match="--path-map expects PREFIX=LOCAL_FOLDER"):
        parse_path_map([item])
