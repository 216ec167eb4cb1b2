"""Training sets combined from several sources (indexes of other plates, cell lines, perturbation types).

Each source is one site index. Its ``key`` column names the treatment; equal keys in different sources
are one class (the same compound or gene seen in several experiments). Key values listed in
``controls`` are negative controls: each value is its own class (DMSO and EMPTY stay apart), and a
control-heavy source can keep at most ``control_wells_per_plate`` control wells per plate (a seeded
choice). Classes with fewer than ``min_cells`` cells are dropped after cropping, and the resulting
classes are written as ``classes.csv`` (cells, plates and sources per class).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cpcnn.errors import InputError

logger = logging.getLogger(__name__)

CLASSES_CSV = "classes.csv"


class Source(BaseModel):
    """One index of a combined training set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Path
    #: Column whose value is matched across sources (compound id, gene); default: the run's label.
    key: str | None = Field(default=None, min_length=1)
    #: Key values that mark negative-control wells (e.g. DMSO, EMPTY).
    controls: tuple[str, ...] = ()
    cell_line: str | None = None
    perturbation: str | None = None
    #: Channels this source was imaged in; default: the run's channels.
    channels: tuple[str, ...] | None = None
    #: Keep at most this many control wells per plate (None keeps all).
    control_wells_per_plate: int | None = Field(default=None, ge=0)

    @property
    def name(self) -> str:
        return self.index.name


def parse_sources(values: object, *, base: Path, label: str) -> list[Source]:
    """A config file's ``sources`` list -> sources, relative index paths resolved against ``base``."""
    if not isinstance(values, list) or not values:
        raise InputError("config key 'sources' must be a non-empty list of tables")
    sources = []
    for number, item in enumerate(values, start=1):
        if not isinstance(item, dict):
            raise InputError(f"sources[{number}] must be a table, got {type(item).__name__}")
        item = {str(k).replace("-", "_"): v for k, v in item.items()}
        try:
            source = Source.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "source"
            problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise InputError(f"sources[{number}].{where}: {problem}") from exc
        index = source.index if source.index.is_absolute() else base / source.index
        sources.append(source.model_copy(update={"index": index, "key": source.key or label}))
    return sources


def check_channels(sources: Sequence[Source], channels: Sequence[str]) -> None:
    """Every source must have been imaged in the run's channels (order may differ)."""
    first = sources[0]
    first_channels = tuple(first.channels or channels)
    for other in sources[1:]:
        other_channels = tuple(other.channels or channels)
        if set(other_channels) != set(first_channels):
            raise InputError(
                f"sources {first.name} ({', '.join(first_channels)}) and {other.name} "
                f"({', '.join(other_channels)}) have different channels"
            )
    if set(first_channels) != set(channels):
        raise InputError(
            f"source {first.name} has channels {', '.join(first_channels)}; the run uses {', '.join(channels)}"
        )


def cap_control_wells(
    wells: Sequence[tuple[str, str]], is_control: Sequence[bool], cap: int | None, *, seed: int
) -> np.ndarray:
    """(plate, well) per site + control flags -> keep mask with at most ``cap`` control wells per plate."""
    keep = np.ones(len(wells), bool)
    if cap is None:
        return keep
    by_plate: dict[str, list[str]] = {}
    for (plate, well), control in zip(wells, is_control, strict=True):
        if control and well not in by_plate.setdefault(plate, []):
            by_plate[plate].append(well)
    kept: set[tuple[str, str]] = set()
    for plate, plate_wells in sorted(by_plate.items()):
        rng = np.random.default_rng([seed, 3, *plate.encode()])
        chosen = rng.permutation(sorted(plate_wells))[:cap]
        kept.update((plate, str(w)) for w in chosen)
    for i, (key, control) in enumerate(zip(wells, is_control, strict=True)):
        if control and key not in kept:
            keep[i] = False
    return keep


@dataclass(frozen=True)
class ClassRow:
    """One line of the class table."""

    name: str
    kind: str  # "treatment" or "control"
    cells: int
    plates: int
    sources: tuple[str, ...]
    kept: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "class": self.name,
            "kind": self.kind,
            "cells": self.cells,
            "plates": self.plates,
            "sources": ";".join(self.sources),
            "kept": self.kept,
        }


def class_table(
    labels: Sequence[str],
    cell_counts: Sequence[int],
    plates: Sequence[str],
    source_names: Sequence[str],
    controls: set[str],
    *,
    min_cells: int,
) -> list[ClassRow]:
    """Per-site label, cell count, plate and source -> a row per class, sorted, with the min-cells verdict."""
    cells: dict[str, int] = {}
    plate_sets: dict[str, set[tuple[str, str]]] = {}
    source_sets: dict[str, set[str]] = {}
    for label, count, plate, source in zip(labels, cell_counts, plates, source_names, strict=True):
        cells[label] = cells.get(label, 0) + int(count)
        if count:
            plate_sets.setdefault(label, set()).add((source, plate))
            source_sets.setdefault(label, set()).add(source)
    return [
        ClassRow(
            name=name,
            kind="control" if name in controls else "treatment",
            cells=cells[name],
            plates=len(plate_sets.get(name, ())),
            sources=tuple(sorted(source_sets.get(name, ()))),
            kept=cells[name] >= min_cells,
        )
        for name in sorted(cells)
    ]


def write_class_table(rows: Sequence[ClassRow], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLASSES_CSV
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ClassRow("", "", 0, 0, (), True).as_dict()))
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
    return path


def format_class_table(rows: Sequence[ClassRow]) -> str:
    """The table as aligned text for the terminal."""
    header = ("class", "kind", "cells", "plates", "sources", "")
    body = [
        (r.name, r.kind, str(r.cells), str(r.plates), ",".join(r.sources), "" if r.kept else "dropped")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *body)
    )
