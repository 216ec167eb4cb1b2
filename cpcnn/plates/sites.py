"""One field of view of a plate, as every plate reader describes it and every plate writer names it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: Characters kept in file names made from plate, well and site names; anything else becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class SiteSpec:
    """A site's identity (plate, well, site) and its files: one image per model channel, by channel name,
    and optionally one illumination function (``.npy``) per channel."""

    plate: str
    well: str
    site: str | int
    images: dict[str, Path]
    illum: dict[str, Path] = field(default_factory=dict)
    #: 1-based row in the file that listed the site (0 when it did not come from a file), for messages.
    row: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        """(plate, well, site) as text: the identity used to match locations, outputs and duplicates."""
        return (self.plate, self.well, str(self.site))

    @property
    def name(self) -> str:
        """File-name-safe ``Plate__Well__Site``, unique per key for the names plates really use."""
        return "__".join(_UNSAFE.sub("_", part) for part in self.key)

    def describe(self) -> str:
        where = f" (row {self.row})" if self.row else ""
        return f"plate {self.plate} well {self.well} site {self.site}{where}"


def file_safe(text: str) -> str:
    """One plate, well or site name as a file-name part: anything but ``A-Za-z0-9._-`` becomes ``_``."""
    return _UNSAFE.sub("_", text)
