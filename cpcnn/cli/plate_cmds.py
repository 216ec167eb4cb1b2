"""``cpcnn profile``: a whole plate -> per-cell Parquet dataset, site and well profiles, ``run.json``."""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpcnn._types import NORMALIZATIONS
from cpcnn.cli.embed_cmds import _batch_size
from cpcnn.io.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from cpcnn.plates.locations import LocationSource
    from cpcnn.plates.sites import SiteSpec

#: Exit status when the run finished but some sites were skipped (bad input is 1, as everywhere).
EXIT_SITES_SKIPPED = 3


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "profile",
        help="profile a whole plate (cells, site and well profiles)",
        description=(
            "Embed every cell of a plate listed by a CellProfiler LoadData CSV or a DeepProfiler project and "
            "write DIR/cells/ (one Parquet per site), sites.parquet (median per site), wells.parquet (mean of "
            "sites) and run.json. Sites already in DIR/cells are not recomputed."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--load-data", type=Path, metavar="CSV", help="CellProfiler LoadData CSV")
    source.add_argument("--deepprofiler-project", type=Path, metavar="ROOT", help="DeepProfiler project root")
    cells = parser.add_mutually_exclusive_group()
    cells.add_argument(
        "--locations", type=Path, metavar="TABLE_OR_DIR",
        help="CellProfiler nuclei table (CSV, CytoTable Parquet, SQLite) or a DeepProfiler locations folder",
    )
    cells.add_argument("--detect-nuclei", action="store_true", help="find nuclei on the DNA channel")
    parser.add_argument("--model", default="cnn1", help="model name in the store (or on the server), or a .onnx path")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created; resumed)")
    parser.add_argument(
        "--channel", action="append", default=[], metavar="CHANNEL=NAME",
        help="LoadData name of a model channel, e.g. --channel DNA=OrigHoechst (default OrigDNA, OrigRNA, ...)",
    )
    parser.add_argument("--illum", action="store_true", help="divide by the LoadData's illumination functions")
    parser.add_argument("--platemap", type=Path, help="CSV (or JUMP .txt) with Metadata_Well (or well_position)")
    parser.add_argument("--jump-layout", action="store_true", help="also write wells as JUMP's CNN profiles")
    parser.add_argument(
        "--sites", metavar="FILTER",
        help="only sites matching these comma-separated PLATE/WELL/SITE patterns, e.g. '*/A0?/1,P2/*/*'",
    )
    parser.add_argument("--server", metavar="URL", help="embed through a running cpcnn service")
    parser.add_argument("--api-key", help="the service's API key (default: $CPCNN_API_KEY)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="sites in the service at once (--server)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, help="override the model's crop normalization")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--batch-size", type=_batch_size, help="cells per inference call, or 'auto' to measure the fastest"
    )
    parser.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from cpcnn.plates.output import PlateOutput, check_platemap, read_platemap
    from cpcnn.plates.pipeline import profile_plate

    started = time.perf_counter()
    sites, locations = _sites_and_locations(args)
    selected = select_sites(sites, args.sites)
    locations.check(selected)
    platemap = None
    if args.platemap:
        platemap = check_platemap(read_platemap(args.platemap), sites, source=args.platemap.name)
    embedder, model = _embedder(args)
    output = PlateOutput(args.out)
    settings = _settings(args, model, locations)
    _check_resumable(output, settings)
    output.root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    output.write_run({**settings, "started_at": stamp, "complete": False})
    run_started = time.perf_counter()
    try:
        run = profile_plate(
            selected, locations, embedder, output, illum=args.illum, progress=not args.quiet,
            max_pixels=args.max_pixels, normalization=args.normalization,
        )
    finally:
        close = getattr(embedder, "close", None)
        if close is not None:
            close()
    record = {**settings, "started_at": stamp, "complete": True, **run.to_dict()}
    record["timings"] = {"setup_s": round(run_started - started, 3), "embed_s": round(run.seconds, 3)}
    output.finish(platemap=platemap, run=record, jump_layout=args.jump_layout)
    print(f"{run.summary()} -> {args.out}", file=sys.stderr if args.quiet else sys.stdout)
    return EXIT_SITES_SKIPPED if run.failed else 0


def _sites_and_locations(args: argparse.Namespace) -> tuple[list[SiteSpec], LocationSource]:
    from cpcnn.errors import InputError

    locations: LocationSource | None = None
    if args.deepprofiler_project:
        from cpcnn.plates.deepprofiler import read_deepprofiler_project
        from cpcnn.plates.load_data import parse_channel_names

        renamed = parse_channel_names(args.channel, defaults={}) if args.channel else None
        sites, locations = read_deepprofiler_project(args.deepprofiler_project, channels=renamed)
    else:
        from cpcnn.plates.load_data import parse_channel_names, read_load_data

        sites = read_load_data(args.load_data, channels=parse_channel_names(args.channel))
    if args.locations:
        from cpcnn.plates.locations import open_locations

        locations = open_locations(args.locations)
    elif args.detect_nuclei:
        from cpcnn.plates.locations import DetectNuclei

        locations = DetectNuclei()
    if locations is None:
        raise InputError("say where the nuclei are: --locations TABLE_OR_DIR or --detect-nuclei")
    if args.illum and not any(site.illum for site in sites):
        raise InputError("--illum: the LoadData CSV has no FileName_Illum*/PathName_Illum* columns")
    return sites, locations


def select_sites(sites: list[SiteSpec], pattern: str | None) -> list[SiteSpec]:
    """Sites whose ``PLATE/WELL/SITE`` matches any of the comma-separated glob patterns (all when None)."""
    from cpcnn.errors import InputError

    if not pattern:
        return sites
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    bad = [p for p in patterns if p.count("/") != 2]
    if bad or not patterns:
        raise InputError(f"--sites expects PLATE/WELL/SITE patterns (e.g. '*/A01/*'), got {pattern!r}")
    chosen = [s for s in sites if any(fnmatch.fnmatchcase("/".join(s.key), p) for p in patterns)]
    if not chosen:
        raise InputError(f"--sites {pattern} matches none of the {len(sites)} sites")
    return chosen


def _embedder(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The local Embedder, or the service's; plus what run.json says about the model."""
    if args.server:
        import os

        from cpcnn.client import Client
        from cpcnn.plates.remote import ServiceEmbedder

        client = Client(args.server, api_key=args.api_key or os.environ.get("CPCNN_API_KEY"))
        remote = ServiceEmbedder(client, args.model, max_in_flight=args.max_in_flight)
        manifest = remote.manifest
        model = {"name": manifest.name, "sha256": manifest.onnx_sha256, "source": manifest.source,
                 "normalization": manifest.normalization, "server": args.server}
        return remote, model
    from cpcnn.embedding import Embedder
    from cpcnn.model_store import ModelStore

    stored = ModelStore().resolve(args.model)
    embedder = Embedder(stored, device=args.device, threads=args.threads, batch_size=args.batch_size)
    manifest = stored.manifest
    model = {"name": manifest.name, "sha256": manifest.onnx_sha256, "source": manifest.source,
             "normalization": manifest.normalization, "provider": embedder.info.provider, "threads": embedder.info.threads,
             "batch_size": embedder.info.batch_size}
    return embedder, model


def _settings(args: argparse.Namespace, model: dict[str, Any], locations: LocationSource) -> dict[str, Any]:
    from cpcnn import __version__

    return {
        "cpcnn": __version__,
        "model": model,
        "settings": {
            "load_data": str(args.load_data) if args.load_data else None,
            "deepprofiler_project": str(args.deepprofiler_project) if args.deepprofiler_project else None,
            "locations": locations.describe(),
            "channels": args.channel,
            "illum": args.illum,
            "normalization": args.normalization or model.get("normalization"),
            "platemap": str(args.platemap) if args.platemap else None,
            "sites_filter": args.sites,
            "server": args.server,
            "max_pixels": args.max_pixels,
            "jump_layout": args.jump_layout,
            "command": sys.argv,
        },
    }


def _check_resumable(output: Any, settings: dict[str, Any]) -> None:
    """An output folder holds one model's cells with one set of inputs: refuse to mix in another's."""
    import json

    from cpcnn.errors import InputError

    if not output.run_path.is_file():
        return
    try:
        earlier = json.loads(output.run_path.read_text())
    except (OSError, ValueError):
        return
    before, now = earlier.get("model", {}), settings["model"]
    if before.get("sha256") and before.get("sha256") != now.get("sha256"):
        raise InputError(f"{output.root} holds cells of another model ({before.get('name')}); use a new --out")
    for key in ("illum", "normalization", "locations"):
        old, new = earlier.get("settings", {}).get(key), settings["settings"][key]
        if old != new:
            raise InputError(f"{output.root} was made with {key}={old!r}, not {new!r}; use a new --out")
