"""A DeepProfiler project as laid out by scripts/deepprofiler/run_reference.py -> sites and locations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import tifffile

from cpcnn.errors import InputError
from cpcnn.io.images import read_channel
from cpcnn.plates.deepprofiler import read_deepprofiler_project
from cpcnn.plates.locations import DeepProfilerLocations

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "deepprofiler" / "run_reference.py"
CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")


def reference_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Two sites written the way the reference script feeds DeepProfiler 0.5.1."""
    inputs = tmp_path / "in"
    sites = []
    for number, (plate, well, site) in enumerate([("SYNTHA", "B02", 1), ("SYNTHA", "B03", 2)]):
        folder = inputs / "sites" / f"s{number}"
        folder.mkdir(parents=True)
        channels = {}
        for index, channel in enumerate(CHANNELS):
            tifffile.imwrite(folder / f"{channel}.tif", np.full((20, 30), 100 * index + number, np.uint16))
            channels[channel] = f"sites/s{number}/{channel}.tif"
        pd.DataFrame(
            {"ObjectNumber": [1, 2], "Nuclei_Location_Center_Y": [4.0, 5.0], "Nuclei_Location_Center_X": [6.0 + number, 7.0]}
        ).to_csv(folder / "locations.csv", index=False)
        sites.append(
            {"plate": plate, "well": well, "site": site, "channels": channels,
             "locations": f"sites/s{number}/locations.csv", "height": 20, "width": 30}
        )
    checkpoint = tmp_path / "Cell_Painting_CNN_v1.hdf5"
    checkpoint.write_bytes(b"")
    root = tmp_path / "dp"
    reference_script().layout_project(str(root), sites, str(inputs), str(checkpoint), 16)
    return root


def test_project_gives_sites_in_model_channel_order(project: Path) -> None:
    sites, locations = read_deepprofiler_project(project)
    assert [s.key for s in sites] == [("SYNTHA", "B02", "1"), ("SYNTHA", "B03", "2")]
    assert [s.row for s in sites] == [2, 3]
    first = sites[0]
    assert list(first.images) == list(CHANNELS)
    assert first.images["ER"] == project / "inputs" / "images" / "SYNTHA" / "B02_s1_ER.tif"
    assert float(read_channel(first.images["ER"]).max()) == 200.0
    assert isinstance(locations, DeepProfilerLocations)
    locations.check(sites)
    cells = locations.for_site(sites[1])
    np.testing.assert_array_equal(cells.centers, [[7.0, 4.0], [7.0, 5.0]])
    np.testing.assert_array_equal(cells.object_numbers, [1, 2])


def rewrite_config(project: Path, change: dict[str, object]) -> None:
    path = project / "inputs" / "config" / "config.json"
    params = json.loads(path.read_text())
    params["dataset"]["images"].update(change)
    path.write_text(json.dumps(params))


def test_channel_names_match_ignoring_case_or_by_mapping(project: Path) -> None:
    index = project / "inputs" / "metadata" / "index.csv"
    table = pd.read_csv(index, dtype=str).rename(columns={"DNA": "hoechst", "Mito": "mito"})
    table.to_csv(index, index=False)
    rewrite_config(project, {"channels": ["hoechst", "RNA", "ER", "AGP", "mito"]})
    with pytest.raises(InputError, match="none is DNA for model channel DNA"):
        read_deepprofiler_project(project)
    sites, _ = read_deepprofiler_project(project, channels={"DNA": "Hoechst"})
    assert sites[0].images["DNA"].name == "B02_s1_DNA.tif"
    assert sites[0].images["Mito"].name == "B02_s1_Mito.tif"


def test_config_paths_replace_the_default_folders(project: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (project / "inputs" / "locations").rename(moved)
    path = project / "inputs" / "config" / "config.json"
    params = json.loads(path.read_text())
    params["paths"] = {"locations": str(moved)}
    path.write_text(json.dumps(params))
    sites, locations = read_deepprofiler_project(project)
    assert len(locations.for_site(sites[0])) == 2


def test_index_lacking_a_channel_column(project: Path) -> None:
    index = project / "inputs" / "metadata" / "index.csv"
    pd.read_csv(index, dtype=str).drop(columns=["AGP"]).to_csv(index, index=False)
    with pytest.raises(InputError, match="lacks column.s. AGP; it has Metadata_Plate"):
        read_deepprofiler_project(project)


def test_duplicate_site_names_both_lines(project: Path) -> None:
    index = project / "inputs" / "metadata" / "index.csv"
    table = pd.read_csv(index, dtype=str)
    pd.concat([table, table.iloc[[0]]]).to_csv(index, index=False)
    with pytest.raises(InputError, match="duplicate site .* lines 2 and 4"):
        read_deepprofiler_project(project)


def test_config_choice_and_corrupt_config(project: Path) -> None:
    folder = project / "inputs" / "config"
    (folder / "other.json").write_text("{not json")
    with pytest.raises(InputError, match="exactly one config .json.*config.json, other.json"):
        read_deepprofiler_project(project)
    assert len(read_deepprofiler_project(project, config="config.json")[0]) == 2
    with pytest.raises(InputError, match="not valid JSON"):
        read_deepprofiler_project(project, config="other.json")
    with pytest.raises(InputError, match="no DeepProfiler config"):
        read_deepprofiler_project(project, config="../metadata/index.csv")
    (folder / "other.json").write_text(json.dumps({"dataset": {"images": {}}}))
    with pytest.raises(InputError, match="no dataset.images.channels"):
        read_deepprofiler_project(project, config="other.json")


def test_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a DeepProfiler project"):
        read_deepprofiler_project(tmp_path)
