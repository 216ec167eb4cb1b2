"""Synthetic five-channel fields of view for benchmarks: cell-like blobs on a noisy background."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from cpcnn._types import CHANNELS


def make_fields(
    folder: Path, *, n_fields: int, size: int = 1080, cells: int = 300, seed: int = 0, compression: str | None = None
) -> Path:
    """Write ``n_fields`` sites (one 16-bit TIFF per channel + nuclei CSV) and an ``index.json``.

    The index uses the layout of ``scripts/deepprofiler/make_inputs.py`` so DeepProfiler can run the
    same workload. Returns the index path.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-20:21, -20:21]
    stamp = np.exp(-(xx**2 + yy**2) / (2 * 7.0**2))
    sites = []
    for index in range(n_fields):
        site_id = f"bench-{index:03d}"
        site_dir = folder / "sites" / site_id
        site_dir.mkdir(parents=True, exist_ok=True)
        centers = rng.uniform(20, size - 21, size=(cells, 2))
        channels = {}
        for c, name in enumerate(CHANNELS):
            plane = rng.normal(400 + 50 * c, 30, size=(size, size))
            for x, y in centers.astype(int):
                plane[y - 20 : y + 21, x - 20 : x + 21] += stamp * rng.uniform(2000, 20000)
            path = site_dir / f"{name}.tif"
            tifffile.imwrite(path, np.clip(plane, 0, 65535).astype(np.uint16), compression=compression)
            channels[name] = str(path.relative_to(folder))
        locations = site_dir / "locations.csv"
        np.savetxt(locations, centers, delimiter=",", fmt="%.3f",
                   header="Nuclei_Location_Center_X,Nuclei_Location_Center_Y", comments="")
        sites.append({
            "id": site_id, "plate": "BENCH", "well": f"A{index + 1:02d}", "site": 1,
            "height": size, "width": size, "dtype": "uint16", "channels": channels,
            "locations": str(locations.relative_to(folder)), "n_cells": cells,
        })
    index_path = folder / "index.json"
    index_path.write_text(json.dumps({"channels": list(CHANNELS), "box_size": 128, "sites": sites}, indent=1))
    return index_path
