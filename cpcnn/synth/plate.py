"""Write a synthetic Cell Painting screen to disk in the layout real screens arrive in.

Model (details in :mod:`cpcnn.synth.render` and :mod:`cpcnn.synth.treatments`):

- Each well gets a treatment from one platemap shared by all plates: DMSO controls and treatments
  grouped into mechanisms of action (MoAs) that change nucleus size and shape, chromatin texture,
  nucleoli, ER spread and texture, mitochondrial fragmentation and spread, actin fibres, cortex and
  cell size. Treatments of one MoA move the same parameters the same way with different strengths
  and small side effects.
- Each plate has its own confounders: an intensity scale per channel, a focus blur and an
  illumination function per channel (vignetting plus tilt, mean 1). The functions are written as
  ``.npy``; dividing a raw image by its function removes the gradient (exactly in expectation: the
  camera offset is modelled as part of the illuminated background).
- Every site is rendered from a generator seeded by (seed, plate, well, site), so files are
  byte-identical for the same seed and any one site can be regenerated on its own.

Files under ``out``: ``images/<Plate>/<Well>_s<Site>_<Ch>.tiff`` (uint16), ``illum/<Plate>/<Plate>_Illum<Ch>.npy``,
``load_data.csv`` (paths relative to its folder), ``nuclei.csv``, ``platemap.csv``, ``treatments.csv``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpcnn._types import CHANNELS
from cpcnn.errors import InputError
from cpcnn.synth.render import MIN_AREA_PER_CELL, PlateConditions, draw_plate_conditions, render_site
from cpcnn.synth.treatments import Layout, design_layout

logger = logging.getLogger(__name__)

#: Wells of a 384-well plate, the most a synthetic plate has.
MAX_WELLS = 384
#: Smallest site side: one 128 px crop must fit.
MIN_SIZE = 128


@dataclass(frozen=True)
class Screen:
    """Where a written screen's files are."""

    root: Path
    plates: tuple[str, ...]
    load_data: Path
    nuclei: Path
    platemap: Path
    treatments: Path
    layout: Layout


def plate_name(index: int) -> str:
    """0-based plate index -> ``SYNTH-P1``, ``SYNTH-P2``, ..."""
    return f"SYNTH-P{index + 1}"


def write_screen(
    out: Path,
    *,
    plates: int = 1,
    wells: int = 16,
    sites: int = 4,
    cells_per_site: int = 150,
    size: int = 1080,
    seed: int = 0,
    effect_scale: float = 1.0,
) -> Screen:
    """Render and write a screen of ``plates`` x ``wells`` x ``sites`` fields of ``size`` x ``size`` px.

    ``effect_scale`` multiplies every treatment's phenotype changes: below 1 treatments are subtler than
    the cell-to-cell and plate variation, as weak compounds are (harder screens for methods to separate).
    """
    check_screen_arguments(plates=plates, wells=wells, sites=sites, cells_per_site=cells_per_site, size=size, seed=seed)
    if not 0 <= effect_scale <= 4:
        raise InputError(f"effect scale must be between 0 and 4, got {effect_scale}")
    import tifffile

    out = Path(out)
    layout = design_layout(wells, seed, effect_scale=effect_scale)
    names = tuple(plate_name(p) for p in range(plates))
    load_rows, nuclei_rows = [], []
    for plate_index, plate in enumerate(names):
        conditions = conditions_for_plate(seed, plate_index, size)
        image_dir, illum_dir = out / "images" / plate, out / "illum" / plate
        image_dir.mkdir(parents=True, exist_ok=True)
        illum_dir.mkdir(parents=True, exist_ok=True)
        for ch in CHANNELS:
            np.save(illum_dir / f"{plate}_Illum{ch}.npy", conditions.illumination[ch])
        for well_index, (well, treatment) in enumerate(layout.wells):
            for site in range(1, sites + 1):
                rng = site_rng(seed, plate_index, well_index, site)
                images, centers = render_site(
                    rng, treatment.phenotype, conditions, size=size, n_cells=cells_per_site
                )
                for ch in CHANNELS:
                    tifffile.imwrite(image_dir / f"{well}_s{site}_{ch}.tiff", images[ch], photometric="minisblack")
                load_rows.append(_load_data_row(plate, well, site))
                nuclei_rows.extend(
                    [plate, well, site, number, f"{x:.3f}", f"{y:.3f}"]
                    for number, (x, y) in enumerate(centers, start=1)
                )
        logger.info("wrote plate %s (%d wells x %d sites) under %s", plate, wells, sites, out)
    screen = Screen(
        root=out, plates=names, load_data=out / "load_data.csv", nuclei=out / "nuclei.csv",
        platemap=out / "platemap.csv", treatments=out / "treatments.csv", layout=layout,
    )
    _write_csv(screen.load_data, _load_data_header(), load_rows)
    _write_csv(
        screen.nuclei,
        ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber", "Location_Center_X", "Location_Center_Y"],
        nuclei_rows,
    )
    _write_csv(
        screen.platemap,
        ["Metadata_Well", "Metadata_Treatment", "Metadata_MoA", "Metadata_Control"],
        [[well, t.name, t.moa, t.is_control] for well, t in layout.wells],
    )
    _write_csv(
        screen.treatments,
        ["Metadata_Treatment", "Metadata_MoA", "Metadata_Control", "Strength", "Effect"],
        [[t.name, t.moa, t.is_control, f"{t.strength:.2f}", t.effect] for t in layout.treatments],
    )
    return screen


def check_screen_arguments(*, plates: int, wells: int, sites: int, cells_per_site: int, size: int, seed: int) -> None:
    """InputError (one line) for any argument outside what a screen can have."""
    for name, value, low in (("plates", plates, 1), ("wells", wells, 1), ("sites", sites, 1),
                             ("cells-per-site", cells_per_site, 1), ("size", size, MIN_SIZE), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InputError(f"--{name} must be an integer, got {value!r}")
        if value < low:
            raise InputError(f"--{name} must be at least {low}, got {value}")
    if wells > MAX_WELLS:
        raise InputError(f"--wells must be at most {MAX_WELLS} (one 384-well plate), got {wells}")
    most = size * size // MIN_AREA_PER_CELL
    if cells_per_site > most:
        raise InputError(f"--cells-per-site {cells_per_site} does not fit a {size}x{size} site (at most {most})")


def site_rng(seed: int, plate_index: int, well_index: int, site: int) -> np.random.Generator:
    """The generator a site is drawn from (0-based plate and well index, 1-based site): any site alone."""
    return np.random.default_rng([seed, plate_index, well_index, site])


def conditions_for_plate(seed: int, plate_index: int, size: int) -> PlateConditions:
    """The confounders ``write_screen`` drew for a plate (to compare against, or to regenerate a site)."""
    return draw_plate_conditions(np.random.default_rng([seed, plate_index]), size)


def _load_data_row(plate: str, well: str, site: int) -> list[object]:
    row: list[object] = [plate, well, site]
    for ch in CHANNELS:
        row += [f"{well}_s{site}_{ch}.tiff", f"images/{plate}"]
    for ch in CHANNELS:
        row += [f"{plate}_Illum{ch}.npy", f"illum/{plate}"]
    return row


def _load_data_header() -> list[str]:
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for ch in CHANNELS:
        header += [f"FileName_Orig{ch}", f"PathName_Orig{ch}"]
    for ch in CHANNELS:
        header += [f"FileName_Illum{ch}", f"PathName_Illum{ch}"]
    return header


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
