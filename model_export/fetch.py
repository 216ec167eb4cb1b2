"""Download Cell Painting CNN-1 from Zenodo, resumably and checksum-verified, then import it.

The file is large and Zenodo connections drop, so the download goes to ``<file>.part`` and resumes
with an HTTP Range request; a server that ignores Range (200) restarts it. Nothing is imported until
the checksum the record publishes matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cpcnn.model_export.importer import import_weights
from tqdm import tqdm

from cpcnn.errors import ConflictError, DownloadError
from cpcnn.model_store import ModelStore, StoredModel, cpcnn_home

logger = logging.getLogger(__name__)

DEFAULT_RECORD_URL = "https://zenodo.org/api/records/7114558"
RECORD_PAGE = "https://zenodo.org/records/7114558"
CNN1_FILENAME = "Cell_Painting_CNN_v1.hdf5"
#: Overrides the record URL (mirrors, tests); an explicit ``record_url`` argument wins over it.
RECORD_URL_ENV = "CPCNN_ZENODO_RECORD_URL"

_CHUNK = 1 << 20
_TIMEOUT = httpx.Timeout(60.0, connect=15.0)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a Zenodo record: where to get it and what it must hash to."""

    key: str
    url: str
    size: int | None
    algorithm: str  # "md5" or "sha256"
    digest: str


def find_file(record: dict[str, Any], filename: str) -> RemoteFile:
    """Pick ``filename`` from a record JSON (``files`` as a list, or ``files.entries`` as a dict)."""
    files = record.get("files")
    if isinstance(files, dict):
        entries = files.get("entries") or {}
        candidates = list(entries.values()) if isinstance(entries, dict) else list(entries)
    elif isinstance(files, list):
        candidates = files
    else:
        candidates = []
    for entry in candidates:
        if entry.get("key") != filename:
            continue
        links = entry.get("links") or {}
        url = links.get("content") or links.get("self") or links.get("download")
        algorithm, _, digest = str(entry.get("checksum", "")).partition(":")
        if not url or algorithm not in ("md5", "sha256") or not digest:
            raise DownloadError(
                f"record entry for {filename} lacks a download link or an md5/sha256 checksum"
            )
        size = entry.get("size")
        return RemoteFile(filename, url, int(size) if size is not None else None, algorithm, digest.lower())
    keys = ", ".join(str(e.get("key")) for e in candidates) or "none"
    raise DownloadError(f"the record has no file {filename!r} (files: {keys})")


def _hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _offline(url: str, filename: str, name: str, exc: Exception) -> DownloadError:
    return DownloadError(
        f"cannot reach {url} ({type(exc).__name__}); the machine seems offline. Instead, "
        f"download {filename} from {RECORD_PAGE} and run: cpcnn models import FILE --name {name}"
    )


def _download_once(client: httpx.Client, remote: RemoteFile, part: Path, *, progress: bool) -> None:
    """One GET, resuming from ``part``'s size; transport errors propagate so the caller can retry."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: Range counts bytes of the stored file, not of a compressed transfer.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", remote.url, headers=headers) as response:
        resumed = response.status_code == 206
        if response.status_code == 416 or (
            resumed and not response.headers.get("content-range", "").startswith(f"bytes {offset}-")
        ):
            part.unlink(missing_ok=True)  # the server will not continue where we stopped: start over
            return
        if response.status_code not in (200, 206):
            raise DownloadError(f"{remote.url} answered HTTP {response.status_code}")
        mode = "ab" if resumed else "wb"
        offset = offset if resumed else 0
        with (
            open(part, mode) as handle,
            tqdm(
                total=remote.size,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=remote.key,
                disable=not progress,
            ) as bar,
        ):
            for chunk in response.iter_bytes():  # unbuffered: what arrived is on disk if the link drops
                handle.write(chunk)
                bar.update(len(chunk))


def download_file(
    client: httpx.Client, remote: RemoteFile, target: Path, *, progress: bool = True, attempts: int = 4
) -> Path:
    """Download ``remote`` to ``target`` via ``target.part``, resuming up to ``attempts`` times; verify it."""
    part = target.with_name(target.name + ".part")
    last_error: Exception | None = None
    for _ in range(attempts):
        size = part.stat().st_size if part.exists() else 0
        if remote.size is not None and size > remote.size:
            part.unlink()
            size = 0
        try:
            if remote.size is None or size < remote.size:
                _download_once(client, remote, part, progress=progress)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise
        except httpx.TransportError as exc:
            last_error = exc
            logger.warning("download of %s interrupted (%s); resuming", remote.key, type(exc).__name__)
            continue
        if part.exists() and (remote.size is None or part.stat().st_size == remote.size):
            break
    else:
        raise DownloadError(
            f"download of {remote.key} failed after {attempts} attempts ({last_error!r}); "
            f"run the command again to resume from {part}"
        )
    actual = _hash(part, remote.algorithm)
    if actual != remote.digest:
        part.unlink()
        raise DownloadError(
            f"{remote.key} failed its {remote.algorithm} check (expected {remote.digest}, got {actual}); "
            "the partial download was removed, run the command again"
        )
    os.replace(part, target)
    return target


def fetch_cnn1(
    *,
    store: ModelStore | None = None,
    record_url: str | None = None,
    filename: str = CNN1_FILENAME,
    download_dir: Path | None = None,
    name: str = "cnn1",
    progress: bool = True,
    overwrite: bool = False,
) -> StoredModel:
    """Fetch CNN-1's weights (kept in ``download_dir``) and import them into ``store`` as ``name``.

    ``record_url`` defaults to ``$CPCNN_ZENODO_RECORD_URL``, else Zenodo record 7114558. A file already
    downloaded with the right checksum is not downloaded again.
    """
    url = record_url or os.environ.get(RECORD_URL_ENV) or DEFAULT_RECORD_URL
    store = store if store is not None else ModelStore()
    if not overwrite and name in store.names():
        raise ConflictError(f"model {name!r} already exists in {store.root}; pass overwrite to replace it")
    folder = Path(download_dir) if download_dir is not None else cpcnn_home() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    with httpx.Client(timeout=_TIMEOUT, follow_redirects=True) as client:
        try:
            response = client.get(url, headers={"Accept": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _offline(url, filename, name, exc) from exc
        except httpx.TransportError as exc:
            raise DownloadError(f"reading the record {url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise DownloadError(f"record {url} answered HTTP {response.status_code}")
        try:
            remote = find_file(response.json(), filename)
        except ValueError as exc:
            raise DownloadError(f"record {url} is not JSON") from exc
        if target.exists() and _hash(target, remote.algorithm) == remote.digest:
            logger.info("using %s downloaded earlier", target)
        else:
            target.unlink(missing_ok=True)
            try:
                download_file(client, remote, target, progress=progress)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise _offline(remote.url, filename, name, exc) from exc
    return import_weights(target, name=name, store=store, overwrite=overwrite)
