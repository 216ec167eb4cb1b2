"""``.npy`` headers read before any data, so a file's declared shape and type can be checked first."""

from __future__ import annotations

from typing import IO

import numpy as np

from cpcnn.errors import InputError


def read_npy_header(stream: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Stream at the start of a ``.npy`` -> (shape, fortran order, dtype), stream left at the data.

    ``what`` names the file in the error raised for an unknown version or an unreadable header.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)  # type: ignore[no-any-return]
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(stream)  # type: ignore[no-any-return]
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{what} has no readable .npy header ({exc})".splitlines()[0]) from exc
    raise InputError(f"{what}: unsupported .npy version {version}")
