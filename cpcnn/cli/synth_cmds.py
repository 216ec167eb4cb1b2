"""``cpcnn synth plate``: write a synthetic Cell Painting screen (images, illumination, LoadData, nuclei, platemap)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    synth = commands.add_parser(
        "synth",
        help="synthetic Cell Painting data",
        description="Generate synthetic Cell Painting data with known treatments and plate confounders.",
    )
    actions = synth.add_subparsers(dest="synth_command", metavar="ACTION", required=True)
    plate = actions.add_parser(
        "plate",
        help="write a synthetic screen",
        description=(
            "Write five-channel 16-bit TIFF sites, illumination functions, load_data.csv, nuclei.csv, "
            "platemap.csv and treatments.csv. Same seed, same bytes."
        ),
    )
    plate.add_argument("--out", required=True, type=Path, help="output folder")
    plate.add_argument("--plates", type=int, default=1, help="plates (default 1), named SYNTH-P1, SYNTH-P2, ...")
    plate.add_argument("--wells", type=int, default=16, help="wells per plate, 1..384 (default 16)")
    plate.add_argument("--sites", type=int, default=4, help="sites per well (default 4)")
    plate.add_argument("--cells-per-site", type=int, default=150, help="cells per site (default 150)")
    plate.add_argument("--size", type=int, default=1080, help="site side in pixels (default 1080)")
    plate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    plate.add_argument(
        "--effect-scale", type=float, default=1.0,
        help="multiply every treatment's phenotype changes (below 1: subtler treatments; default 1)",
    )
    plate.set_defaults(func=cmd_synth_plate)


def cmd_synth_plate(args: argparse.Namespace) -> int:
    from cpcnn.synth.plate import write_screen

    started = time.perf_counter()
    screen = write_screen(
        args.out, plates=args.plates, wells=args.wells, sites=args.sites,
        cells_per_site=args.cells_per_site, size=args.size, seed=args.seed,
        effect_scale=args.effect_scale,
    )
    n_sites = args.plates * args.wells * args.sites
    moas = sorted({t.moa for t in screen.layout.treatments})
    print(
        f"wrote {n_sites} sites ({len(screen.plates)} plate(s) x {args.wells} wells x {args.sites} sites, "
        f"{len(screen.layout.treatments)} treatments in {len(moas)} MoAs incl. control) to {screen.root} "
        f"in {time.perf_counter() - started:.1f} s; LoadData: {screen.load_data}"
    )
    return 0
