"""A tiny training index on disk: TIFF sites with a few synthetic cells, locations CSVs and the index table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile

from cpcnn._types import CHANNELS

SIDE = 200
CENTERS = ((60.0, 60.0), (140.0, 62.0), (58.0, 139.0), (141.0, 141.0), (100.0, 100.0))


def _site_image(treatment: str, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(5, SIDE, SIDE) uint16: treatment A = small round cells, B = large cells with a bright Mito rim."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    planes = rng.integers(90, 110, size=(len(CHANNELS), SIDE, SIDE)).astype(np.float64)
    for x, y in centers:
        dist = np.hypot(xx - x, yy - y)
        radius = 8 if treatment == "A" else 22
        for channel in range(len(CHANNELS)):
            planes[channel] += 2000 * (dist < radius) * (channel + 1)
        if treatment == "B":
            planes[4] += 6000 * ((dist > radius - 4) & (dist < radius))
    return planes.astype(np.uint16)


def write_index(
    folder: Path,
    *,
    plates: tuple[str, ...] = ("P1", "P2"),
    treatments: dict[str, str] | None = None,
    cells_per_site: int = 5,
    empty_label: str | None = None,
    name: str = "sites.csv",
    label_column: str = "Metadata_Treatment",
) -> Path:
    """2 plates x (well -> treatment) x 1 site of 200x200 TIFFs, locations CSVs and the index."""
    treatments = treatments or {"A01": "A", "A02": "B"}
    rng = np.random.default_rng(0)
    rows = []
    for plate in plates:
        for well, treatment in treatments.items():
            stem = f"{Path(name).stem}_{plate}_{well}_s1"
            centers = np.array(CENTERS[:cells_per_site]) + rng.uniform(-3, 3, size=(cells_per_site, 2))
            if treatment == empty_label:
                centers = centers[:0]
            image = _site_image(treatment, centers, rng)
            row = {
                "Metadata_Plate": plate,
                "Metadata_Well": well,
                "Metadata_Site": "1",
                label_column: treatment,
                "locations": f"loc/{stem}.csv",
            }
            for channel, plane in zip(CHANNELS, image, strict=True):
                (folder / "img").mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(folder / "img" / f"{stem}_{channel}.tif", plane)
                row[channel] = f"img/{stem}_{channel}.tif"
            (folder / "loc").mkdir(exist_ok=True)
            with (folder / "loc" / f"{stem}.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"])
                writer.writerows(centers.tolist())
            rows.append(row)
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
