"""A DeepProfiler 0.5.1 project root -> the plate's sites and its locations folder, so a project set up
for DeepProfiler profiles with cpcnn unchanged.

What DeepProfiler 0.5.1 reads, and so what is read here (cytomining/DeepProfiler ``deepprofiler/__main__.py``,
``dataset/metadata.py``, ``dataset/image_dataset.py``, ``imaging/boxes.py``):

- the config ``{root}/inputs/config/<name>.json``; its optional ``paths`` entries (``images``,
  ``locations``, ``metadata``) replace the defaults ``inputs/images/``, ``inputs/locations/`` and
  ``inputs/metadata/``. ``dataset.images.channels`` names the channels, in order.
- the index ``{metadata}/index.csv``: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and one
  column per channel name holding the image's path. DeepProfiler joins a value to the images root
  (``root + "/" + value``) unless the value's folder exists as given; here a relative value is joined to
  the images root and an absolute one is used as is.
- the locations ``{locations}/{Plate}/{Well}-{Site}-Nuclei.csv`` (``Nuclei_Location_Center_X/Y``).

DeepProfiler channel names map to model channels by name, ignoring case (``dna`` is ``DNA``); other names
need ``channels={"DNA": "Hoechst", ...}``. Compressed PNG copies (``prepare.compression``) are not used:
the raw images are profiled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cpcnn._types import CHANNELS
from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.plates.locations import DeepProfilerLocations, LocationSource
from cpcnn.plates.sites import SiteSpec, check_unique_sites
from cpcnn.profiles.tables import csv_header, read_csv_table

SITE_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
INDEX_NAME = "index.csv"
#: A config is a few kilobytes; anything far larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024
#: Sites one index may list (a 1,536-well plate at 16 sites is 24,576; a large screen has thousands of plates).
MAX_INDEX_ROWS = 5_000_000
_DEFAULT_DIRS = {"images": "inputs/images", "locations": "inputs/locations", "metadata": "inputs/metadata"}


def read_deepprofiler_project(
    root: Path,
    *,
    config: str | None = None,
    channels: Mapping[str, str] | None = None,
    model_channels: Sequence[str] = CHANNELS,
) -> tuple[list[SiteSpec], LocationSource]:
    """The sites of a DeepProfiler project (index order) and its locations folder.

    ``config`` names the file in ``inputs/config/`` (needed only when there are several); ``channels``
    maps a model channel to a DeepProfiler channel name when the names differ by more than case.
    """
    root = Path(root)
    if not (root / "inputs").is_dir():
        raise InputError(f"{root} is not a DeepProfiler project (no inputs/ folder)")
    params = _read_config(_config_path(root, config))
    dirs = _project_dirs(root, params)
    names = channel_names(_config_channels(params), channels, model_channels)
    sites = _read_index(dirs["metadata"] / INDEX_NAME, dirs["images"], names)
    return sites, DeepProfilerLocations(dirs["locations"])


def _config_path(root: Path, name: str | None) -> Path:
    folder = root / "inputs" / "config"
    if name is not None:
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise InputError(f"no DeepProfiler config {name!r} in {folder}")
        return path
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise InputError(f"{folder} must hold exactly one config .json or the config must be named; found {listed}")
    return found[0]


def _read_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PayloadTooLarge(f"DeepProfiler config {path} is over the limit of {MAX_CONFIG_BYTES} bytes")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"DeepProfiler config {path} is not valid JSON ({str(exc)[:120]})") from exc
    if not isinstance(params, dict):
        raise InputError(f"DeepProfiler config {path} is not a JSON object")
    return params


def _project_dirs(root: Path, params: Mapping[str, Any]) -> dict[str, Path]:
    """DeepProfiler's folders: the defaults under ``root``, replaced by the config's ``paths`` entries."""
    paths = params.get("paths")
    overrides = paths if isinstance(paths, dict) else {}
    dirs: dict[str, Path] = {}
    for key, default in _DEFAULT_DIRS.items():
        value = overrides.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"DeepProfiler config paths.{key} must be a path, got {json.dumps(value)[:60]}")
        dirs[key] = root / value if value else root / default  # an absolute value replaces root
    return dirs


def _config_channels(params: Mapping[str, Any]) -> list[str]:
    try:
        listed = params["dataset"]["images"]["channels"]
    except (KeyError, TypeError) as exc:
        raise InputError("DeepProfiler config has no dataset.images.channels list") from exc
    if not isinstance(listed, list) or not listed or not all(isinstance(c, str) and c for c in listed):
        raise InputError(f"DeepProfiler config dataset.images.channels must be a list of names, got {listed!r:.80}")
    return listed


def channel_names(
    available: Sequence[str], mapping: Mapping[str, str] | None = None, model_channels: Sequence[str] = CHANNELS
) -> dict[str, str]:
    """Model channel -> DeepProfiler channel name: ``mapping`` first, then the same name ignoring case."""
    mapping = dict(mapping or {})
    unknown = [c for c in mapping if c not in model_channels]
    if unknown:
        raise InputError(f"unknown channel(s) {', '.join(unknown)}; model channels: {', '.join(model_channels)}")
    by_lower = {name.lower(): name for name in available}
    names: dict[str, str] = {}
    for channel in model_channels:
        wanted = mapping.get(channel, channel)
        name = wanted if wanted in available else by_lower.get(wanted.lower())
        if name is None:
            raise InputError(
                f"DeepProfiler channels are {', '.join(available)}; none is {wanted} for model channel {channel} "
                f"(map it, e.g. {channel}=<DeepProfiler channel>)"
            )
        names[channel] = name
    return names


def _read_index(path: Path, images: Path, names: Mapping[str, str]) -> list[SiteSpec]:
    if not path.is_file():
        raise InputError(f"DeepProfiler index {path} does not exist")
    header = csv_header(path, what=str(path))
    wanted = [*SITE_COLUMNS, *dict.fromkeys(names.values())]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise InputError(f"DeepProfiler index {path} lacks column(s) {', '.join(missing)}; it has {', '.join(header[:20])}")
    table = read_csv_table(path, what=str(path), columns=wanted, text_columns=wanted, max_rows=MAX_INDEX_ROWS)
    if table.empty:
        raise InputError(f"DeepProfiler index {path} has no rows")
    table = table.fillna("")
    sites: list[SiteSpec] = []
    for offset, row in enumerate(table.itertuples(index=False, name=None)):
        line = offset + 2  # the header is line 1
        values = dict(zip(wanted, (str(v).strip() for v in row), strict=True))
        files: dict[str, Path] = {}
        for channel, name in names.items():
            if not values[name]:
                raise InputError(f"DeepProfiler index {path} line {line}: column {name} is empty")
            files[channel] = images / values[name]  # an absolute value is used as is
        site = SiteSpec(values["Metadata_Plate"], values["Metadata_Well"], values["Metadata_Site"], files, row=line)
        sites.append(site)
    check_unique_sites(sites, source=path.name)
    return sites
