"""Plates on disk: what was asked, which sites exist, and durable facts from which progress is derived.

Layout, one folder per plate id (a content hash, so the path is safe to build from it)::

    plates/<id>/plate.json          PlateSpec: what was asked (immutable)
    plates/<id>/sites.json          every site of the LoadData CSV, paths resolved (immutable)
    plates/<id>/load_data.csv       the CSV as submitted
    plates/<id>/queued              marker: every site job was put in line
    plates/<id>/cancelled           marker: DELETE; workers skip the plate's sites
    plates/<id>/failed/<site>.json  a site that failed for good, and why
    plates/<id>/attempts/<site>     starts of a site job (the in-process queue's durable count)
    plates/<id>/finishing.lock      taken (O_EXCL) by the one process that writes the plate tables
    plates/<id>/finished.json       the plate tables are written
    plates/<id>/output/             ``cpcnn.plates.output.PlateOutput`` root, the layout of ``cpcnn profile``:
                                    cells/<site>.parquet, sites.parquet, wells.parquet, run.json

A site is done exactly when its cells file exists (``PlateOutput`` renames it into place whole), failed
when its failure record exists, pending otherwise; nothing else is counted, so an API or worker that
restarts derives the same progress and never recomputes a done site.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpcnn.service.job_store import utcnow
from pydantic import BaseModel, Field

from cpcnn.errors import NotFoundError
from cpcnn.io.durable import STALE_TEMPORARY_S, remove_stale, replace_durably, write_bytes_durably
from cpcnn.plates.sites import SiteSpec
from cpcnn.schemas import PlateLinks, PlateProgress, PlatePublic, PlateStatus, SiteFailure

if TYPE_CHECKING:
    import pandas as pd

    from cpcnn.plates.output import PlateOutput

_PLATE_ID = re.compile(r"[0-9a-f]{32}")
_SITE_JOB = re.compile(r"([0-9a-f]{32})-([0-9]{1,9})")
#: A finishing lock older than this belongs to a process that died while writing the plate tables.
STALE_FINISH_S = 600.0


class PlateSpec(BaseModel):
    """What the client asked for; written once at submit. Paths are resolved server paths."""

    id: str
    model: str
    load_data: str
    locations: str | None = None
    detect_nuclei: bool = False
    illum: bool = False
    platemap: str | None = None
    channels: dict[str, str] | None = None
    n_sites: int
    max_cells: int | None = Field(default=None, description="cells a site may have (limit when it was submitted)")
    created_at: datetime = Field(default_factory=utcnow)


def check_plate_id(plate_id: str) -> str:
    if not _PLATE_ID.fullmatch(plate_id):
        raise NotFoundError(f"plate {plate_id!r} does not exist (ids are 32 hexadecimal digits)")
    return plate_id


def site_job_id(plate_id: str, index: int) -> str:
    """The queue id of one site of a plate: ``<plate id>-<site index>``."""
    return f"{plate_id}-{index}"


def parse_site_job_id(job_id: str) -> tuple[str, int]:
    match = _SITE_JOB.fullmatch(job_id)
    if match is None:
        raise NotFoundError(f"{job_id!r} is not a plate site job")
    return match.group(1), int(match.group(2))


def site_to_json(site: SiteSpec) -> dict[str, Any]:
    return {"plate": site.plate, "well": site.well, "site": site.site, "row": site.row,
            "images": {k: str(v) for k, v in site.images.items()}, "illum": {k: str(v) for k, v in site.illum.items()}}


def site_from_json(data: dict[str, Any]) -> SiteSpec:
    return SiteSpec(plate=data["plate"], well=data["well"], site=data["site"], row=data.get("row", 0),
                    images={k: Path(v) for k, v in data["images"].items()},
                    illum={k: Path(v) for k, v in data.get("illum", {}).items()})


class PlateStore:
    """Plate folders under ``root/plates``; opening one removes crash leftovers older than ``stale_s``."""

    def __init__(self, root: Path, *, stale_s: float = STALE_TEMPORARY_S) -> None:
        self.root = Path(root)
        self.plates_dir = self.root / "plates"
        self.plates_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(self.plates_dir, max_age_s=stale_s, depth=1)
        self._sites: dict[str, list[SiteSpec]] = {}
        self._cells: dict[Path, int] = {}  # cells files never change once written: count each once
        self._lock = threading.Lock()

    # -- records --------------------------------------------------------------------------------

    def folder(self, plate_id: str) -> Path:
        return self.plates_dir / check_plate_id(plate_id)

    def exists(self, plate_id: str) -> bool:
        return (self.folder(plate_id) / "plate.json").is_file()

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.plates_dir.iterdir() if _PLATE_ID.fullmatch(p.name) and p.is_dir())

    def create(self, spec: PlateSpec, sites: list[SiteSpec], load_data: bytes) -> bool:
        """Write a new plate folder atomically; False if a plate with this id already exists."""
        target = self.folder(spec.id)
        if target.exists():
            return False
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.id}-", dir=self.plates_dir))
        try:
            (staging / "load_data.csv").write_bytes(load_data)
            (staging / "sites.json").write_text(json.dumps([site_to_json(s) for s in sites]))
            (staging / "plate.json").write_text(spec.model_dump_json())
            for sub in ("failed", "attempts", "output"):
                (staging / sub).mkdir()
            try:
                replace_durably(staging, target, overwrite=False)
            except OSError:  # an identical request created it first
                return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def spec(self, plate_id: str) -> PlateSpec:
        try:
            return PlateSpec.model_validate_json((self.folder(plate_id) / "plate.json").read_text())
        except FileNotFoundError as exc:
            raise NotFoundError(f"plate {plate_id} does not exist") from exc

    def sites(self, plate_id: str) -> list[SiteSpec]:
        with self._lock:
            cached = self._sites.get(plate_id)
        if cached is not None:
            return cached
        try:
            raw = json.loads((self.folder(plate_id) / "sites.json").read_text())
        except FileNotFoundError as exc:
            raise NotFoundError(f"plate {plate_id} does not exist") from exc
        sites = [site_from_json(item) for item in raw]
        with self._lock:
            self._sites[plate_id] = sites
        return sites

    def output(self, plate_id: str) -> PlateOutput:
        from cpcnn.plates.output import PlateOutput

        return PlateOutput(self.folder(plate_id) / "output")

    # -- markers --------------------------------------------------------------------------------

    def _mark(self, plate_id: str, name: str, data: bytes = b"") -> None:
        folder = self.folder(plate_id)
        if not folder.is_dir():
            raise NotFoundError(f"plate {plate_id} was deleted")
        write_bytes_durably(folder / name, data)

    def mark_queued(self, plate_id: str) -> None:
        self._mark(plate_id, "queued")

    def is_queued(self, plate_id: str) -> bool:
        return (self.folder(plate_id) / "queued").is_file()

    def cancel(self, plate_id: str) -> None:
        self._mark(plate_id, "cancelled", utcnow().isoformat().encode())

    def uncancel(self, plate_id: str) -> None:
        (self.folder(plate_id) / "cancelled").unlink(missing_ok=True)

    def is_cancelled(self, plate_id: str) -> bool:
        return (self.folder(plate_id) / "cancelled").is_file()

    def is_finished(self, plate_id: str) -> bool:
        return (self.folder(plate_id) / "finished.json").is_file()

    # -- sites ----------------------------------------------------------------------------------

    def is_done(self, plate_id: str, site: SiteSpec) -> bool:
        return self.output(plate_id).site_path(site).is_file()

    def failure(self, plate_id: str, site: SiteSpec) -> str | None:
        try:
            return str(json.loads((self.folder(plate_id) / "failed" / f"{site.name}.json").read_text())["reason"])
        except FileNotFoundError:
            return None

    def record_failure(self, plate_id: str, site: SiteSpec, reason: str) -> None:
        record = {"site": site.name, "reason": reason, "at": utcnow().isoformat()}
        write_bytes_durably(self.folder(plate_id) / "failed" / f"{site.name}.json", json.dumps(record).encode())

    def count_attempt(self, plate_id: str, site: SiteSpec) -> int:
        """One more start of a site job, counted durably before it runs (one process per data
        directory in in-process mode; RQ workers count in Redis instead)."""
        path = self.folder(plate_id) / "attempts" / site.name
        try:
            count = int(path.read_text() or 0) + 1
        except (FileNotFoundError, ValueError):
            count = 1
        write_bytes_durably(path, str(count).encode())
        return count

    def unresolved(self, plate_id: str) -> list[int]:
        """Indexes of sites neither done nor failed: what a restart puts in line again."""
        done, failed = self._done_names(plate_id), self._failed_names(plate_id)
        return [i for i, site in enumerate(self.sites(plate_id)) if site.name not in done and site.name not in failed]

    def _done_names(self, plate_id: str) -> set[str]:
        cells = self.folder(plate_id) / "output" / "cells"
        try:
            return {entry.name.removesuffix(".parquet") for entry in os.scandir(cells)
                    if entry.name.endswith(".parquet") and not entry.name.startswith(".")}
        except FileNotFoundError:
            return set()

    def _failed_names(self, plate_id: str) -> dict[str, str]:
        failed: dict[str, str] = {}
        folder = self.folder(plate_id) / "failed"
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return failed
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                try:
                    failed[entry.name.removesuffix(".json")] = json.loads(Path(entry.path).read_text())["reason"]
                except (OSError, ValueError, KeyError):
                    continue
        return failed

    # -- finishing, exactly once ----------------------------------------------------------------

    def try_lock_finish(self, plate_id: str) -> bool:
        """Take the plate's finishing lock (atomic ``O_EXCL`` create); False when another process has it.

        A lock older than ``STALE_FINISH_S`` without ``finished.json`` was left by a process that died
        while finishing: it is broken and taken anew.
        """
        path = self.folder(plate_id) / "finishing.lock"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    stale = time.time() - path.stat().st_mtime > STALE_FINISH_S
                except FileNotFoundError:
                    continue
                if stale and not self.is_finished(plate_id):
                    path.unlink(missing_ok=True)
                    continue
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {utcnow().isoformat()}")
            return True
        return False

    def release_finish(self, plate_id: str) -> None:
        (self.folder(plate_id) / "finishing.lock").unlink(missing_ok=True)

    def mark_finished(self, plate_id: str, summary: dict[str, Any]) -> None:
        self._mark(plate_id, "finished.json", json.dumps(summary).encode())

    def finished_summary(self, plate_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.folder(plate_id) / "finished.json").read_text())
        except FileNotFoundError:
            return None
        return data

    # -- what clients see -----------------------------------------------------------------------

    def progress(self, plate_id: str) -> tuple[PlateProgress, dict[str, str]]:
        spec, sites = self.spec(plate_id), self.sites(plate_id)
        names = {site.name for site in sites}
        done = self._done_names(plate_id) & names
        failed = {k: v for k, v in self._failed_names(plate_id).items() if k in names and k not in done}
        cells_dir = self.folder(plate_id) / "output" / "cells"
        n_cells, last = 0, spec.created_at.timestamp()
        for name in done:
            path = cells_dir / f"{name}.parquet"
            n_cells += self._count_cells(path)
            try:
                last = max(last, path.stat().st_mtime)
            except FileNotFoundError:
                continue
        pending = len(sites) - len(done) - len(failed)
        elapsed = (last if pending == 0 else time.time()) - spec.created_at.timestamp()
        resolved = len(done) + len(failed)
        progress = PlateProgress(
            sites=len(sites), done=len(done), failed=len(failed), pending=pending, cells=n_cells,
            cells_per_s=n_cells / elapsed if elapsed > 0 and done else None,
            eta_s=pending * elapsed / resolved if resolved and pending else (0.0 if not pending else None),
        )
        return progress, failed

    def _count_cells(self, path: Path) -> int:
        with self._lock:
            known = self._cells.get(path)
        if known is not None:
            return known
        import pyarrow.parquet as pq

        try:
            rows = int(pq.read_metadata(path).num_rows)
        except (OSError, ValueError):
            return 0
        with self._lock:
            self._cells[path] = rows
        return rows

    def status(self, plate_id: str, progress: PlateProgress) -> PlateStatus:
        if self.is_finished(plate_id):
            return PlateStatus.FAILED if progress.done == 0 and progress.sites else PlateStatus.SUCCEEDED
        if self.is_cancelled(plate_id):
            return PlateStatus.CANCELLED
        if progress.done or progress.failed:
            return PlateStatus.RUNNING
        return PlateStatus.QUEUED

    def public(self, plate_id: str, *, prefix: str = "/v1") -> PlatePublic:
        spec = self.spec(plate_id)
        progress, failed = self.progress(plate_id)
        summary = self.finished_summary(plate_id)
        finished_at = datetime.fromisoformat(summary["finished_at"]) if summary else None
        base = f"{prefix}/plates/{spec.id}"
        return PlatePublic(
            id=spec.id, status=self.status(plate_id, progress), model=spec.model, load_data=spec.load_data,
            locations=spec.locations, detect_nuclei=spec.detect_nuclei, illum=spec.illum, platemap=spec.platemap,
            channels=spec.channels, progress=progress,
            failures=[SiteFailure(site=k, reason=v) for k, v in list(failed.items())[:100]],
            created_at=spec.created_at, finished_at=finished_at,
            links=PlateLinks(self_=base, wells=f"{base}/wells", sites=f"{base}/sites"),
        )


def checked_platemap(path: Path, sites: list[SiteSpec]) -> pd.DataFrame:
    """The platemap, checked against the plate's wells (``check_platemap``: no unknown, none missing)."""
    from cpcnn.plates.platemap import check_platemap, read_platemap

    return check_platemap(read_platemap(path), sites, source=str(path))
