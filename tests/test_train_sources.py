"""Combined training sets: treatments matched across sources by key, control kinds kept apart, control
wells capped per plate, small classes dropped, differing channel sets refused, unreadable sites skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _train_index import write_index
from cpcnn.training.config import make_config
from cpcnn.training.data import load_or_build_cache, prepare_data, read_index
from cpcnn.training.sources import (
    Source,
    cap_control_wells,
    check_channels,
    format_class_table,
    parse_sources,
    write_class_table,
)

from cpcnn._types import CHANNELS
from cpcnn.errors import InputError

#: cpcnn.training.data imports torch; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow


def two_sources(folder: Path) -> list[Source]:
    """Compounds on P1, P2 (DMSO controls, two wells a plate) and ORFs on Q1 (EMPTY controls)."""
    compounds = write_index(
        folder,
        plates=("P1", "P2"),
        treatments={"A01": "cmpd1", "A02": "DMSO", "A03": "DMSO", "A04": "cmpd2"},
        label_column="Metadata_JCP",
        name="compounds.csv",
    )
    orfs = write_index(
        folder,
        plates=("Q1",),
        treatments={"A01": "cmpd1", "A02": "EMPTY", "A03": "EMPTY", "A04": "lonely"},
        label_column="Metadata_Gene",
        name="orfs.csv",
    )
    return parse_sources(
        [
            {
                "index": compounds.name,
                "key": "Metadata_JCP",
                "controls": ["DMSO"],
                "control-wells-per-plate": 1,
                "cell_line": "U2OS",
                "perturbation": "compound",
            },
            {"index": orfs.name, "key": "Metadata_Gene", "controls": ["EMPTY"], "perturbation": "orf"},
        ],
        base=folder,
        label="Metadata_Treatment",
    )


def test_class_table_of_two_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sources = two_sources(tmp_path)
    data = prepare_data(sources, make_config(min_cells=6, batch_size=8), cache_dir=tmp_path / "crops")
    assert "3 class(es) have fewer training cells than a batch (8)" in caplog.text
    table = {row.name: row for row in data.table}
    assert {name: (r.kind, r.cells, r.plates, r.sources, r.kept) for name, r in table.items()} == {
        "cmpd1": ("treatment", 15, 3, ("compounds.csv", "orfs.csv"), True),  # matched across sources
        "cmpd2": ("treatment", 10, 2, ("compounds.csv",), True),
        "DMSO": ("control", 10, 2, ("compounds.csv",), True),  # one of two control wells per plate
        "EMPTY": ("control", 10, 1, ("orfs.csv",), True),  # not capped, a class of its own
        "lonely": ("treatment", 5, 1, ("orfs.csv",), False),  # under min_cells
    }
    assert data.classes == ("DMSO", "EMPTY", "cmpd1", "cmpd2")
    assert len(data.cache) == 50  # 12 sites of 5 cells, 2 control sites capped away
    lonely = np.flatnonzero(data.labels < 0)
    assert lonely.size == 5 and not np.isin(lonely, np.concatenate([data.train, data.val])).any()
    assert np.bincount(data.labels[data.train]).tolist() == [6, 6, 9, 6]
    path = write_class_table(data.table, tmp_path / "run")
    assert path.read_text().splitlines()[:2] == [
        "class,kind,cells,plates,sources,kept",
        "DMSO,control,10,2,compounds.csv,True",
    ]
    text = format_class_table(data.table)
    assert "cmpd1   treatment  15     3       compounds.csv,orfs.csv" in text
    assert text.splitlines()[-1].endswith("dropped")


def test_control_wells_are_capped_per_plate() -> None:
    wells = [("P1", "A01"), ("P1", "A01"), ("P1", "A02"), ("P1", "A03"), ("P2", "A01"), ("P2", "B01")]
    control = [True, True, True, False, True, False]
    keep = cap_control_wells(wells, control, 1, seed=0)
    kept_controls = {w for w, c, k in zip(wells, control, keep, strict=True) if c and k}
    assert len({w for w in kept_controls if w[0] == "P1"}) == 1 and ("P2", "A01") in kept_controls
    assert keep[3] and keep[5]  # treatments are never capped
    assert keep[0] == keep[1]  # both sites of a well go together
    assert cap_control_wells(wells, control, None, seed=0).all()
    np.testing.assert_array_equal(keep, cap_control_wells(wells, control, 1, seed=0))


def test_sources_with_other_channels_are_refused(tmp_path: Path) -> None:
    a = Source(index=tmp_path / "a.csv")
    b = Source(index=tmp_path / "b.csv", channels=(*CHANNELS[:4], "Actin"))
    listed = ", ".join(CHANNELS)
    with pytest.raises(
        InputError, match=rf"a\.csv \({listed}\) and b\.csv \(.*Actin\) have different channels"
    ):
        check_channels([a, b], CHANNELS)
    check_channels([a, Source(index=tmp_path / "c.csv", channels=tuple(reversed(CHANNELS)))], CHANNELS)


def test_unknown_label_column_is_named(tmp_path: Path) -> None:
    index = write_index(tmp_path, plates=("P1",))
    with pytest.raises(InputError, match="has no label column 'Metadata_Moa'"):
        read_index(index, label="Metadata_Moa", channels=CHANNELS)


def test_unreadable_image_is_skipped_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index = write_index(tmp_path, plates=("P1", "P2"))
    sites = read_index(index, label="Metadata_Treatment", channels=CHANNELS)
    sites[1].images["RNA"].write_bytes(b"II*\x00" + b"\x00" * 20)  # a TIFF header and nothing else
    cache = load_or_build_cache(sites, tmp_path / "crops", channels=CHANNELS)
    assert len(cache) == 15 and cache.site_of_cell.tolist() == [0] * 5 + [2] * 5 + [3] * 5
    assert list(cache.skipped) == [1] and "RNA" in cache.skipped[1]
    assert "skipping plate P1 well A02 site 1: image not readable" in caplog.text
    again = load_or_build_cache(sites, tmp_path / "crops", channels=CHANNELS)  # reused, still knows
    assert again.skipped == cache.skipped and len(again) == 15
    data = prepare_data(index, make_config(min_cells=1), cache_dir=tmp_path / "crops")
    assert [(s.well, s.plate) for s, _ in data.skipped] == [("A02", "P1")]
