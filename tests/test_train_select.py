"""Treatment strength: per-plate control median, z of distances against the controls', mean over wells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cpcnn.training.select import rank_treatments, write_ranking

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main
from cpcnn.errors import InputError


def _wells(seed: int = 0, plates: int = 2, controls: int = 6, strong: float = 4.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(plates):
        offset = rng.normal(0, 1, 8)  # plate effect, removed by the per-plate control median
        for c in range(controls):
            rows.append(("DMSO", offset + 5 + rng.normal(0, 0.3, 8), p, c))
        for name, shift in (("weak", 0.3), ("strong", strong), ("mid", 1.5)):
            for r in range(3):
                direction = np.eye(8)[["weak", "strong", "mid"].index(name)]
                rows.append((name, offset + 5 + shift * direction + rng.normal(0, 0.3, 8), p, r))
    table = pd.DataFrame(
        {
            "Metadata_Plate": [f"P{r[2]}" for r in rows],
            "Metadata_Well": [f"W{i:02d}" for i in range(len(rows))],
            "Metadata_Treatment": [r[0] for r in rows],
        }
    )
    features = pd.DataFrame(np.array([r[1] for r in rows], np.float32), columns=[f"f{i}" for i in range(8)])
    return pd.concat([table, features], axis=1)


def _naive(wells: pd.DataFrame, metric: str) -> dict[str, tuple[float, int]]:
    """Loops in float64: the reference the vectorized ranking must match."""
    names = [c for c in wells.columns if c.startswith("f")]
    z_by_treatment: dict[str, list[float]] = {}
    for plate in sorted(set(wells["Metadata_Plate"])):
        rows = wells[wells["Metadata_Plate"] == plate]
        ctrl = [[float(v) for v in r] for r in rows[rows["Metadata_Treatment"] == "DMSO"][names].to_numpy()]
        median = [float(np.median([c[j] for c in ctrl])) for j in range(len(names))]

        def dist(x: list[float], m: list[float] = median) -> float:
            if metric == "euclidean":
                return math.sqrt(sum((a - b) ** 2 for a, b in zip(x, m, strict=True)))
            dot = sum(a * b for a, b in zip(x, m, strict=True))
            return 1 - dot / math.sqrt(sum(a * a for a in x) * sum(b * b for b in m))

        cd = [dist(c) for c in ctrl]
        mean = sum(cd) / len(cd)
        sd = math.sqrt(sum((d - mean) ** 2 for d in cd) / (len(cd) - 1))
        for t, x in zip(rows["Metadata_Treatment"], rows[names].to_numpy(), strict=True):
            if t != "DMSO":
                z_by_treatment.setdefault(t, []).append((dist([float(v) for v in x]) - mean) / sd)
    return {t: (sum(v) / len(v), len(v)) for t, v in z_by_treatment.items()}


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_naive_loops_and_strong_ranks_first(metric: str) -> None:
    wells = _wells()
    ranked = rank_treatments(
        wells, treatment="Metadata_Treatment", controls="Metadata_Treatment=DMSO", metric=metric
    )
    expected = _naive(wells, metric)
    assert list(ranked["Metadata_Treatment"]) == sorted(expected, key=lambda t: -expected[t][0])
    assert ranked["Metadata_Treatment"][0] == "strong"
    assert list(ranked["rank"]) == [1, 2, 3]
    for _, row in ranked.iterrows():
        z, n = expected[row["Metadata_Treatment"]]
        assert row["n_replicates"] == n == 6
        assert row["strength_z"] == pytest.approx(z, rel=1e-4, abs=1e-3)


def test_plate_effect_is_removed_by_the_per_plate_median() -> None:
    wells = _wells(plates=2)
    shifted = wells.copy()
    on_p1 = shifted["Metadata_Plate"] == "P1"
    features = [c for c in wells.columns if c.startswith("f")]
    shifted.loc[on_p1, features] += 3.0
    a = rank_treatments(
        wells, treatment="Metadata_Treatment", controls="Metadata_Treatment=DMSO", metric="euclidean"
    )
    b = rank_treatments(
        shifted, treatment="Metadata_Treatment", controls="Metadata_Treatment=DMSO", metric="euclidean"
    )
    np.testing.assert_allclose(a["strength_z"], b["strength_z"], rtol=1e-4)


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (None, {"treatment": "Metadata_Nope"}, "treatment column 'Metadata_Nope' not in"),
        (None, {"controls": "Metadata_Treatment=PBS"}, "no control rows with Metadata_Treatment == 'PBS'"),
        ("drop_p1_controls", {}, "plate P1 has 0 control wells"),
        ("no_plate", {}, "need a Metadata_Plate column"),
        (None, {"metric": "manhattan"}, "unknown distance metric"),
    ],
)
def test_bad_input_is_named(change: str | None, kwargs: dict[str, str], message: str) -> None:
    wells = _wells()
    if change == "drop_p1_controls":
        wells = wells[~((wells["Metadata_Plate"] == "P1") & (wells["Metadata_Treatment"] == "DMSO"))]
    if change == "no_plate":
        wells = wells.drop(columns="Metadata_Plate")
    args = {"treatment": "Metadata_Treatment", "controls": "Metadata_Treatment=DMSO", **kwargs}
    with pytest.raises(InputError, match=message):
        rank_treatments(wells, **args)  # type: ignore[arg-type]


def test_cli_writes_ranked_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "wells.parquet"
    _wells().to_parquet(path)
    code = main(
        [
            "train", "select", "--profiles", str(path), "--treatment", "Metadata_Treatment",
            "--controls", "Metadata_Treatment=DMSO", "--top", "2", "--out", str(tmp_path / "sel"),
        ]
    )  # fmt: skip
    assert code == 0
    ranked = pd.read_csv(tmp_path / "sel" / "ranked.csv")
    assert list(ranked.columns) == ["Metadata_Treatment", "strength_z", "n_replicates", "rank"]
    assert list(pd.read_csv(tmp_path / "sel" / "kept.csv")["Metadata_Treatment"]) == list(
        ranked["Metadata_Treatment"][:2]
    )
    assert "strong" in capsys.readouterr().out
    assert main(["train", "select", "--profiles", str(path), "--treatment", "Metadata_X",
                 "--controls", "Metadata_Treatment=DMSO", "--out", str(tmp_path / "x")]) == 1  # fmt: skip
    assert "cpcnn: error: treatment column 'Metadata_X'" in capsys.readouterr().err


def test_write_ranking_refuses_zero_top(tmp_path: Path) -> None:
    ranked = pd.DataFrame({"t": ["a"], "strength_z": [1.0], "n_replicates": [1], "rank": [1]})
    with pytest.raises(InputError, match="--top must be at least 1"):
        write_ranking(ranked, tmp_path, top=0)


def test_cli_keeps_the_strongest_treatments_and_the_controls_of_an_index(tmp_path: Path) -> None:
    wells = _wells()
    profiles = tmp_path / "wells.csv"
    wells.to_csv(profiles, index=False)
    (tmp_path / "data").mkdir()
    index = tmp_path / "data" / "index.csv"
    pd.DataFrame(
        {
            "Metadata_Plate": wells["Metadata_Plate"],
            "Metadata_Well": wells["Metadata_Well"],
            "Metadata_Site": "1",
            **{c: [f"images/{w}_{c}.png" for w in wells["Metadata_Well"]] for c in CHANNELS},
            "locations": "/abs/cells.csv",
            "Metadata_Treatment": wells["Metadata_Treatment"],
        }
    ).to_csv(index, index=False)
    args = ["train", "select", "--profiles", str(profiles), "--treatment", "Metadata_Treatment",
            "--controls", "Metadata_Treatment=DMSO", "--out", str(tmp_path / "sel"), "--index", str(index)]  # fmt: skip
    assert main(args) == 1  # --index needs --top
    assert main([*args, "--top", "1"]) == 0
    kept = pd.read_csv(tmp_path / "sel" / "index.csv")
    assert set(kept["Metadata_Treatment"]) == {"strong", "DMSO"}
    assert len(kept) == 6 + 12  # 3 replicates x 2 plates, 6 controls x 2 plates
    assert kept["DNA"][0] == str((tmp_path / "data" / "images" / f"{kept['Metadata_Well'][0]}_DNA.png").resolve())
    assert set(kept["locations"]) == {"/abs/cells.csv"}
