"""A tiny plate on disk in CellProfiler's layout: TIFFs, illumination functions, LoadData CSV, nuclei table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from _tiny_model import synthetic_site

from cpcnn._types import CHANNELS

PLATE = "P1"


@dataclass(frozen=True)
class PlateFiles:
    root: Path
    load_data: Path
    nuclei: Path
    platemap: Path
    centers: dict[tuple[str, str, str], np.ndarray]


def write_plate(
    root: Path, *, wells: Sequence[str] = ("A01", "A02", "B01"), sites: int = 2, size: int = 200,
    n_cells: int = 4, absolute_paths: bool = False,
) -> PlateFiles:
    """Images under ``images/``, illumination under ``illum/``, ``load_data.csv`` with relative paths."""
    images, illum = root / "images" / PLATE, root / "illum" / PLATE
    images.mkdir(parents=True)
    illum.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for channel in CHANNELS:
        function = rng.uniform(0.7, 1.3, (size, size)).astype(np.float32)
        np.save(illum / f"{PLATE}_Illum{channel}.npy", function)
    rows, nuclei, centers = [], [], {}
    seed = 0
    for well in wells:
        for site in range(1, sites + 1):
            seed += 1
            planes, site_centers = synthetic_site(size=size, n_cells=n_cells, seed=seed)
            centers[(PLATE, well, str(site))] = site_centers
            row: dict[str, object] = {"Metadata_Plate": PLATE, "Metadata_Well": well, "Metadata_Site": site}
            for channel in CHANNELS:
                name = f"{well}_s{site}_{channel}.tiff"
                tifffile.imwrite(images / name, planes[channel])
                row[f"FileName_Orig{channel}"] = name
                row[f"PathName_Orig{channel}"] = str(images) if absolute_paths else f"images/{PLATE}"
            for channel in CHANNELS:
                row[f"FileName_Illum{channel}"] = f"{PLATE}_Illum{channel}.npy"
                row[f"PathName_Illum{channel}"] = f"illum/{PLATE}"
            rows.append(row)
            for number, (x, y) in enumerate(site_centers, start=1):
                nuclei.append({"Metadata_Plate": PLATE, "Metadata_Well": well, "Metadata_Site": site,
                               "ObjectNumber": number, "Location_Center_X": x, "Location_Center_Y": y})
    load_data = root / "load_data.csv"
    pd.DataFrame(rows).to_csv(load_data, index=False)
    nuclei_path = root / "nuclei.csv"
    pd.DataFrame(nuclei).to_csv(nuclei_path, index=False)
    platemap = root / "platemap.csv"
    pd.DataFrame({"Metadata_Well": list(wells), "Metadata_Treatment": [f"T{i}" for i in range(len(wells))]}).to_csv(
        platemap, index=False
    )
    return PlateFiles(root, load_data, nuclei_path, platemap, centers)
