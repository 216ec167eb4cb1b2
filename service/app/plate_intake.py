"""Checking a plate request before anything is stored or queued: every problem is one 4xx naming it.

The LoadData CSV is read by ``cpcnn.plates.load_data.read_load_data`` (unknown channel names, missing
columns and duplicate sites are its errors); this module adds what a server must check on top: every
path under the allowed roots (``AllowedRoots``), every listed file present, the number of sites, a
locations table that matches the sites, a platemap whose wells are the plate's.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cpcnn.service.config import ApiSettings
from cpcnn.service.plate_paths import AllowedRoots
from cpcnn.service.plate_store import PlateSpec, checked_platemap

from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.plates.sites import SiteSpec

UPLOADED = "upload"


@dataclass(frozen=True)
class PlateRequest:
    """A plate submission as received: the CSV (uploaded bytes, or a server path) and the options."""

    model: str
    load_data_path: str | None
    load_data_bytes: bytes | None
    locations: str | None
    detect_nuclei: bool
    illum: bool
    platemap: str | None
    channels: list[str] | None


def parse_channels(text: str | None) -> list[str] | None:
    """``DNA=OrigHoechst,RNA=OrigSyto`` -> the items ``parse_channel_names`` reads; None when absent."""
    if text is None or not text.strip():
        return None
    return [item for item in text.split(",") if item.strip()]


def prepare_plate(
    request: PlateRequest, settings: ApiSettings, model_channels: list[str]
) -> tuple[PlateSpec, list[SiteSpec], bytes]:
    """Validate everything -> (spec, sites, CSV bytes); raises InputError (4xx) naming the problem."""
    from cpcnn.plates.load_data import parse_channel_names, read_load_data

    roots = AllowedRoots(settings.plates.roots)
    roots.require_enabled()
    limit = settings.plates.max_load_data_bytes
    channels = parse_channel_names(request.channels, model_channels) if request.channels else None
    with tempfile.TemporaryDirectory(prefix="cpcnn-plate-") as scratch:
        if request.load_data_path is not None:
            csv_path = roots.check(request.load_data_path, what="LoadData CSV")
            if not csv_path.is_file():
                raise InputError(f"LoadData CSV {request.load_data_path} does not exist")
            if csv_path.stat().st_size > limit:
                raise PayloadTooLarge(f"LoadData CSV {request.load_data_path} is over the limit of {limit} bytes")
            data = csv_path.read_bytes()
            shown = str(csv_path)
        else:
            data = request.load_data_bytes or b""
            csv_path = Path(scratch) / "load_data.csv"  # relative PathName values cannot lie under a root
            csv_path.write_bytes(data)
            shown = UPLOADED
        sites = read_load_data(csv_path, channels=channels, model_channels=model_channels)
    if not sites:
        raise InputError("the LoadData CSV lists no sites")
    if len(sites) > settings.plates.max_sites:
        raise PayloadTooLarge(f"the LoadData CSV lists {len(sites)} sites, over the limit of "
                              f"{settings.plates.max_sites} (CPCNN_PLATES__MAX_SITES)")
    _check_site_files(sites, roots, illum=request.illum)
    locations = _check_locations(request, sites, roots)
    platemap = _check_platemap(request.platemap, sites, roots)
    spec = PlateSpec(
        id=plate_id_for(data, request, locations, platemap), model=request.model, load_data=shown,
        locations=locations, detect_nuclei=request.detect_nuclei, illum=request.illum, platemap=platemap,
        channels=channels, n_sites=len(sites), max_cells=settings.limits.max_cells,
    )
    return spec, sites, data


def plate_id_for(data: bytes, request: PlateRequest, locations: str | None, platemap: str | None) -> str:
    """Content hash of the CSV and the options: the same request gives the same plate."""
    options = {"model": request.model, "load_data": request.load_data_path, "locations": locations,
               "detect_nuclei": request.detect_nuclei, "illum": request.illum, "platemap": platemap,
               "channels": request.channels}
    digest = hashlib.sha256(data)
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _check_site_files(sites: list[SiteSpec], roots: AllowedRoots, *, illum: bool) -> None:
    def listed() -> list[tuple[Path, str]]:
        paths: list[tuple[Path, str]] = []
        for site in sites:
            paths += [(path, f"{site.describe()} {channel} image") for channel, path in site.images.items()]
            if illum:
                paths += [(path, f"{site.describe()} {channel} illumination") for channel, path in site.illum.items()]
        return paths

    if illum:
        lacking = [site for site in sites if not site.illum]
        if lacking:
            raise InputError(f"illum was asked for but the LoadData CSV has no FileName_Illum* columns for "
                             f"{lacking[0].describe()}")
    roots.check_files(listed())


def _check_locations(request: PlateRequest, sites: list[SiteSpec], roots: AllowedRoots) -> str | None:
    if request.detect_nuclei == (request.locations is not None):
        raise InputError("give either locations (a nuclei table or DeepProfiler locations folder on the shared "
                         "volume) or detect_nuclei=true, not both or neither")
    if request.locations is None:
        return None
    from cpcnn.plates.locations import open_locations

    path = roots.check(request.locations, what="locations")
    if not path.exists():
        raise InputError(f"locations {request.locations} does not exist")
    source = open_locations(path)
    source.check(sites)
    return str(path)


def _check_platemap(platemap: str | None, sites: list[SiteSpec], roots: AllowedRoots) -> str | None:
    if platemap is None:
        return None
    path = roots.check(platemap, what="platemap")
    if not path.is_file():
        raise InputError(f"platemap {platemap} does not exist")
    checked_platemap(path, sites)
    return str(path)
