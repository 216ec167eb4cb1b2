"""A small multi-site plate made by the real ``cpcnn embed`` (tiny model), for profile-chain tests.

Treatments differ in how each channel is spread around the nucleus (a Gaussian of width ``sigma``
pixels), which survives DeepProfiler's per-crop min-max normalization: DMSO controls are sharp
everywhere, MoA ``er`` compounds spread ER, MoA ``mito`` compounds spread Mito. Cell positions,
counts and noise differ per site, so coordinates carry no treatment signal but plenty of variance:
if they leaked into profiles they would dominate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from _tiny_model import FEATURE_SIZE, save_tiny_model

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main
from cpcnn.profiles import read_profiles, write_profiles

#: treatment -> (MoA or None for controls, {channel: sigma}); unlisted channels use sigma 4.
TREATMENTS: dict[str, tuple[str | None, dict[str, float]]] = {
    "DMSO": (None, {}),
    "BRD-A1": ("er", {"ER": 13.0}),
    "BRD-A2": ("er", {"ER": 17.0}),
    "BRD-B1": ("mito", {"Mito": 13.0}),
    "BRD-B2": ("mito", {"Mito": 17.0}),
}
N_CONTROL_WELLS = 8
WELLS_PER_COMPOUND = 2
SITES = (1, 2)
SIZE = 200
FEATURES = [f"efficientnet_{i}" for i in range(FEATURE_SIZE)]
SITE_BY = "Metadata_Plate,Metadata_Well,Metadata_Site"
WELL_BY = "Metadata_Plate,Metadata_Well"
CONTROLS = "Metadata_broad_sample=DMSO"
CELL_METADATA = [
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_Model",
    "Metadata_ObjectNumber",
    "Metadata_Nuclei_Location_Center_X",
    "Metadata_Nuclei_Location_Center_Y",
]


@dataclass(frozen=True)
class Plate:
    """Where the plate lives: one cells Parquet per site, and the plate map (well -> treatment, MoA)."""

    root: Path
    cells: list[Path]
    platemap: pd.DataFrame
    locations: dict[Path, pd.DataFrame]


def wells() -> list[tuple[str, str]]:
    """(well, treatment) in plate order."""
    layout = [("DMSO", i) for i in range(N_CONTROL_WELLS)]
    layout += [(t, r) for t in TREATMENTS if t != "DMSO" for r in range(WELLS_PER_COMPOUND)]
    return [(f"{'ABCDEFGH'[i // 12]}{i % 12 + 1:02d}", t) for i, (t, _) in enumerate(layout)]


def site_images(treatment: str, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Five uint16 channels and (N, 2) centres (x, y) of 3-6 cells placed anywhere inside the field."""
    n_cells = int(rng.integers(3, 7))
    centers = rng.uniform(25, SIZE - 25, (n_cells, 2)).round(2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    spread = TREATMENTS[treatment][1]
    channels = {}
    for name in CHANNELS:
        sigma = spread.get(name, 4.0)
        plane = rng.uniform(100, 400, (SIZE, SIZE))
        for x, y in centers:
            plane += 6000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        channels[name] = np.clip(plane, 0, 65535).astype(np.uint16)
    return channels, centers


def build_plate(root: Path) -> Plate:
    """Embed every site with ``cpcnn embed`` (tiny model in ``root/home``); odd sites' locations carry
    their own ``ObjectNumber`` (10, 20, ...), even ones are numbered by position."""
    rng = np.random.default_rng(2024)
    cells: list[Path] = []
    locations: dict[Path, pd.DataFrame] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CPCNN_HOME", str(root / "home"))
        save_tiny_model(root / "home" / "models")
        for well, treatment in wells():
            for site in SITES:
                folder = root / "images" / f"{well}_{site}"
                folder.mkdir(parents=True)
                channels, centers = site_images(treatment, rng)
                args = []
                for name, plane in channels.items():
                    tifffile.imwrite(folder / f"{name}.tif", plane)
                    args.append(f"--image={name}={folder / f'{name}.tif'}")
                frame = pd.DataFrame(centers, columns=["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"])
                if site % 2:
                    frame.insert(0, "ObjectNumber", 10 * np.arange(1, len(frame) + 1))
                frame.to_csv(folder / "nuclei.csv", index=False)
                out = root / "cells" / f"{well}_{site}.parquet"
                code = main(["embed", *args, "--locations", str(folder / "nuclei.csv"), "--plate", "P1",
                             "--well", well, "--site", str(site), "--out", str(out)])
                assert code == 0
                cells.append(out)
                locations[out] = frame
    platemap = pd.DataFrame(
        [(w, t, TREATMENTS[t][0]) for w, t in wells()],
        columns=["Metadata_Well", "Metadata_broad_sample", "Metadata_moa"],
    )
    return Plate(root=root, cells=cells, platemap=platemap, locations=locations)


def cpcnn(*argv: object) -> None:
    """Run one ``cpcnn`` command in-process; it must succeed."""
    assert main([str(a) for a in argv]) == 0


def run_chain(plate: Plate) -> dict[str, Path]:
    """Every step's output, each made by the CLI from the previous one: site medians, well means, the
    plate map joined, a sphering fit on the DMSO wells and its application, and both evaluations."""
    root = plate.root
    out = {name: root / f"{name}.parquet" for name in ("sites", "wells", "annotated", "sphered")}
    cpcnn("aggregate", *plate.cells, "--by", SITE_BY, "--op", "median", "--out", out["sites"])
    cpcnn("aggregate", out["sites"], "--by", WELL_BY, "--op", "mean", "--out", out["wells"])
    annotated = read_profiles(out["wells"]).merge(plate.platemap, on="Metadata_Well")  # the plate map join
    write_profiles(annotated, out["annotated"])
    out["transform"] = root / "sphering.npz"
    cpcnn("sphering", "fit", out["annotated"], "--controls", CONTROLS, "--lambda", "1e-2", "--out", out["transform"])
    cpcnn("sphering", "apply", out["transform"], out["annotated"], "--out", out["sphered"])
    for name in ("annotated", "sphered"):
        out[f"metrics_{name}"] = root / f"metrics_{name}.json"
        cpcnn("evaluate", out[name], "--id", "Metadata_broad_sample", "--annotation", "Metadata_moa",
              "--out", out[f"metrics_{name}"])
    return out
