"""Plate job test helpers: a lab volume with a tiny plate, and the same plate profiled locally."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
from _plate_files import PlateFiles

from cpcnn.plates.output import PlateOutput


def submit(client: httpx.Client, lab: PlateFiles, **options: str) -> httpx.Response:
    """POST a plate of ``lab`` (LoadData path, nuclei table, platemap, illumination) with ``options`` replaced."""
    data = {"load_data": str(lab.load_data), "locations": str(lab.nuclei), "platemap": str(lab.platemap),
            "illum": "true"} | options
    return client.post("/v1/plates", data={k: v for k, v in data.items() if v is not None})


def profile_locally(lab: PlateFiles, models_dir: Path, out: Path, *, model: str = "cnn1") -> PlateOutput:
    """What ``cpcnn profile`` writes for ``lab``: ``cpcnn.plates.pipeline.profile_plate`` + ``finish``."""
    from cpcnn.embedding import Embedder
    from cpcnn.model_store import ModelStore
    from cpcnn.plates.load_data import read_load_data
    from cpcnn.plates.locations import open_locations
    from cpcnn.plates.pipeline import profile_plate
    from cpcnn.plates.platemap import check_platemap, read_platemap

    sites = read_load_data(lab.load_data)
    output = PlateOutput(out)
    embedder = Embedder(ModelStore(models_dir).get(model), device="cpu", threads=1)
    try:
        profile_plate(sites, open_locations(lab.nuclei), embedder, output, illum=True, progress=False)
    finally:
        embedder.close()
    platemap = check_platemap(read_platemap(lab.platemap), sites,
                              source=str(lab.platemap))
    output.finish(platemap=platemap, run={})
    return output


def assert_same_profiles(served: pd.DataFrame, local: pd.DataFrame, keys: list[str]) -> None:
    """Same rows, same columns, features equal to float32 rounding (batches differ between the two)."""
    served = served.sort_values(keys).reset_index(drop=True)
    local = local.sort_values(keys).reset_index(drop=True)
    assert list(served.columns) == list(local.columns)
    features = [c for c in local.columns if not c.startswith("Metadata_")]
    pd.testing.assert_frame_equal(served.drop(columns=features), local.drop(columns=features), check_dtype=False)
    pd.testing.assert_frame_equal(served[features], local[features], check_dtype=False, atol=1e-5, rtol=1e-4)
