"""DeepProfiler single-cell feature files (``features/{Plate}/{Well}/{Site}.npz``) -> profile tables.

Site files are untrusted input, so nothing in them reaches ``pickle`` or ``np.load``. The zip is
bounded before anything is inflated (central directory size, member count, each member's declared
size and compression ratio); ``features`` and ``locations`` are read by their ``.npy`` header, which
must declare a plain numeric dtype and a shape that matches the member's size; the pickled
``metadata`` dict is decoded by ``_npz_metadata``, which interprets pickle opcodes without running them.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpcnn._types import FEATURE_PREFIX
from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.io.cells import OBJECT_NUMBER_COLUMN, X_COLUMN, Y_COLUMN, metadata_value
from cpcnn.io.npy import read_npy_header
from cpcnn.locations import validate_object_numbers
from cpcnn.profiles._npz_metadata import MAX_METADATA_BYTES, parse_metadata_pickle

METADATA_PREFIX = "Metadata_"

#: Largest declared uncompressed size of one member (``features.npy``) of a site file.
MAX_MEMBER_BYTES = 1 << 30
#: Most a member may inflate relative to its compressed size (float features barely compress;
#: a zip bomb inflates thousands of times). Members under ``_SMALL_MEMBER_BYTES`` are exempt.
MAX_COMPRESSION_RATIO = 100
_SMALL_MEMBER_BYTES = 1 << 20
#: Most members and central-directory bytes a site file may have (DeepProfiler writes three).
MAX_MEMBERS = 64
_MAX_DIRECTORY_BYTES = 1 << 20
_EOCD = b"PK\x05\x06"
_NUMERIC_KINDS = "biuf"


def _check_zip_directory(path: Path) -> None:
    """Refuse a zip whose central directory is huge before ``zipfile`` parses it into objects."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, io.SEEK_END)
            tail_size = min(size, 65_536 + 22)
            handle.seek(size - tail_size)
            tail = handle.read(tail_size)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise InputError(f"{path}: not a readable .npz (no zip directory)")
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10 : at + 16])
    if entries > MAX_MEMBERS or directory_bytes > _MAX_DIRECTORY_BYTES:
        raise PayloadTooLarge(
            f"{path}: zip directory lists {entries} members in {directory_bytes} bytes, over the limit of "
            f"{MAX_MEMBERS} members"
        )


def _member_info(archive: zipfile.ZipFile, member: str, path: Path, *, limit: int) -> zipfile.ZipInfo:
    """The member's ZipInfo once its declared size and compression ratio are within limits."""
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise PayloadTooLarge(f"{path}: '{member}' declares {info.file_size} bytes, over the limit of {limit}")
    if info.file_size > max(_SMALL_MEMBER_BYTES, MAX_COMPRESSION_RATIO * info.compress_size):
        raise PayloadTooLarge(
            f"{path}: '{member}' inflates {info.compress_size} bytes to {info.file_size}, over the "
            f"compression ratio limit of {MAX_COMPRESSION_RATIO}"
        )
    return info


def _open_npy(archive: zipfile.ZipFile, member: str, path: Path, *, limit: int) -> tuple[Any, tuple[int, ...], bool, np.dtype]:
    """Open a member and parse its ``.npy`` header -> (stream at the data, shape, fortran, dtype)."""
    info = _member_info(archive, member, path, limit=limit)
    stream = archive.open(info)
    try:
        shape, fortran, dtype = read_npy_header(stream, f"{path}: '{member}'")
    except InputError:
        stream.close()
        raise
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        stream.close()
        raise InputError(f"{path}: '{member}' has no readable .npy header ({exc})".splitlines()[0]) from exc
    return stream, shape, fortran, dtype


def _read_numeric(archive: zipfile.ZipFile, member: str, path: Path) -> np.ndarray:
    """A numeric ``.npy`` member whose header shape matches its declared size, read without pickle."""
    stream, shape, fortran, dtype = _open_npy(archive, member, path, limit=MAX_MEMBER_BYTES)
    with stream:
        if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype:
            raise InputError(f"{path}: '{member}' is a {dtype} array, expected plain numbers")
        if len(shape) > 2:
            raise InputError(f"{path}: '{member}' has {len(shape)} dimensions, expected at most 2")
        n_values = 1
        for extent in shape:
            n_values *= extent
        expected = n_values * dtype.itemsize
        available = archive.getinfo(member).file_size - stream.tell()
        if expected != available:
            raise InputError(
                f"{path}: '{member}' header declares shape {shape} ({expected} bytes) but holds {available} bytes"
            )
        try:
            raw = stream.read(expected)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError) as exc:
            raise InputError(f"{path}: '{member}' is corrupt ({exc})".splitlines()[0]) from exc
    if len(raw) != expected:
        raise InputError(f"{path}: '{member}' is truncated")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_site_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata`` dict of one DeepProfiler ``.npz`` ({} when absent); never unpickles."""
    _check_zip_directory(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if "metadata.npy" not in archive.namelist():
                return {}
            stream, _shape, _fortran, dtype = _open_npy(archive, "metadata.npy", path, limit=MAX_METADATA_BYTES)
            with stream:
                if dtype != np.dtype(object):
                    raise InputError(f"{path}: 'metadata' is a {dtype} array, expected a pickled dict")
                pickled = stream.read(MAX_METADATA_BYTES + 1)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz ({exc})".splitlines()[0]) from exc
    return parse_metadata_pickle(pickled, what=f"{path}: 'metadata'")


def _path_metadata(path: Path, root: Path) -> dict[str, str]:
    """Plate/Well/Site from ``{Plate}/{Well}/{Site}.npz`` or ``{Plate}/{Well}_{Site}.npz`` layouts."""
    parts = path.relative_to(root).with_suffix("").parts
    if len(parts) >= 3:
        return {"Metadata_Plate": parts[-3], "Metadata_Well": parts[-2], "Metadata_Site": parts[-1]}
    if len(parts) == 2 and "_" in parts[1]:
        well, site = parts[1].rsplit("_", 1)
        return {"Metadata_Plate": parts[0], "Metadata_Well": well, "Metadata_Site": site}
    return {}


def npz_files(root: Path) -> list[Path]:
    """Every ``*.npz`` below ``root``, sorted so reads are reproducible."""
    files = sorted(p for p in root.rglob("*.npz") if p.is_file())
    if not files:
        raise InputError(f"{root}: no DeepProfiler .npz files found below this folder")
    return files


def read_site(path: Path, root: Path | None = None) -> pd.DataFrame:
    """One site file -> (cells, Metadata_* + ``{Metadata_Model}_{i}`` float32) table, cells in file order.

    The columns match ``cpcnn embed``'s other outputs: ``locations`` become
    ``Metadata_Nuclei_Location_Center_X/Y``, our ``object_numbers`` member ``Metadata_ObjectNumber``
    (int64), and a digit-only site an integer ``Metadata_Site``.
    """
    _check_zip_directory(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            if "features.npy" not in members:
                keys = ", ".join(m.removesuffix(".npy") for m in members)
                raise InputError(f"{path}: no 'features' array (keys: {keys})")
            features = _read_numeric(archive, "features.npy", path).astype(np.float32)
            locations = _read_numeric(archive, "locations.npy", path) if "locations.npy" in members else None
            objects = _read_numeric(archive, "object_numbers.npy", path) if "object_numbers.npy" in members else None
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz ({exc})".splitlines()[0]) from exc
    if features.ndim != 2:
        raise InputError(f"{path}: 'features' has shape {features.shape}, expected (cells, features)")
    meta = {**(_path_metadata(path, root) if root else {}), **read_site_metadata(path)}
    model = str(meta.get("Metadata_Model", FEATURE_PREFIX))
    columns: dict[str, Any] = {}
    for key, value in meta.items():
        name = key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key
        value = metadata_value(name, value)  # a digit-only site is an integer, as in every other reader
        columns[name] = np.full(len(features), value, dtype=np.int64 if isinstance(value, int) else object)
    if objects is not None:
        if objects.ndim != 1 or objects.dtype.kind not in "iu":
            raise InputError(f"{path}: 'object_numbers' is a {objects.dtype} array of shape {objects.shape}, "
                             "expected one integer per cell")
        try:
            columns[OBJECT_NUMBER_COLUMN] = validate_object_numbers(objects, len(features))
        except InputError as exc:
            raise InputError(f"{path}: 'object_numbers': {exc}") from exc
    if locations is not None and locations.ndim == 2 and locations.shape == (len(features), 2):
        columns[X_COLUMN] = locations[:, 0].astype(np.float64)
        columns[Y_COLUMN] = locations[:, 1].astype(np.float64)
    names = [f"{model}_{i}" for i in range(features.shape[1])]
    meta_frame = pd.DataFrame(columns, index=pd.RangeIndex(len(features)))
    return pd.concat([meta_frame, pd.DataFrame(features, columns=names)], axis=1)


def iter_sites(root: Path) -> Iterator[pd.DataFrame]:
    """Each site file below ``root`` as a table, one at a time (memory: one site).

    Every site must have the same feature names as the first (same model and feature count).
    """
    expected: list[str] | None = None
    for path in npz_files(root):
        site = read_site(path, root)
        names = [str(c) for c in site.columns if not str(c).startswith(METADATA_PREFIX)]
        if expected is None:
            expected = names
        elif names != expected:
            raise InputError(
                f"{path}: feature mismatch with the first site ({len(names)} features named {names[0]}..., "
                f"expected {len(expected)} named {expected[0]}...)"
            )
        yield site
