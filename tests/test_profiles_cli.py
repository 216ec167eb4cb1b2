"""The profiles CLI commands end to end on small tables, through a local argparse harness."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpcnn.cli.profiles_cmds import register
from cpcnn.errors import CpcnnError
from cpcnn.profiles import Sphering, read_profiles, write_profiles


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cpcnn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def plate(tmp_path: Path) -> Path:
    """Cells of 12 wells x 2 sites: 4 DMSO wells and 4 compounds x 2 wells, MoAs a, b, a|c, d."""
    rng = np.random.default_rng(0)
    rows = []
    moa = {"DMSO": None, "BRD-1": "a", "BRD-2": "b", "BRD-3": "a|c", "BRD-4": "d"}
    wells = [("DMSO", w) for w in range(4)] + [
        (f"BRD-{i}", 4 + 2 * (i - 1) + r) for i in range(1, 5) for r in range(2)
    ]
    for sample, well in wells:
        for site in (1, 2):
            for _ in range(15):
                rows.append(("P1", f"W{well:02d}", str(site), sample, moa[sample]))
    meta = pd.DataFrame(
        rows,
        columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_broad_sample", "Metadata_moa"],
    )
    feats = pd.DataFrame(
        rng.standard_normal((len(meta), 12)).astype(np.float32),
        columns=[f"efficientnet_{i}" for i in range(12)],
    )
    return write_profiles(pd.concat([meta, feats], axis=1), tmp_path / "cells.parquet")


def test_full_workflow(tmp_path: Path, plate: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sites, wells = tmp_path / "sites.parquet", tmp_path / "wells.csv"
    by = "Metadata_Plate,Metadata_Well,Metadata_Site,Metadata_broad_sample,Metadata_moa"
    assert (
        run("aggregate", str(plate), "--by", by, "--op", "median", "--out", str(sites), "--batch-rows", "50")
        == 0
    )
    by = "Metadata_Plate,Metadata_Well,Metadata_broad_sample,Metadata_moa"
    assert run("aggregate", str(sites), "--by", by, "--op", "mean", "--out", str(wells)) == 0
    assert len(read_profiles(wells)) == 12 and "-> 12 groups" in capsys.readouterr().out

    transform, sphered = tmp_path / "t.npz", tmp_path / "sphered.parquet"
    assert (
        run(
            "sphering",
            "fit",
            str(wells),
            "--controls",
            "Metadata_broad_sample=DMSO",
            "--lambda",
            "1e-2",
            "--out",
            str(transform),
        )
        == 0
    )
    assert "warning:" in capsys.readouterr().out  # 4 controls for 12 features
    assert Sphering.load(transform).n_controls == 4
    assert run("sphering", "apply", str(transform), str(wells), "--out", str(sphered)) == 0
    sweep = tmp_path / "sweep.json"
    assert (
        run(
            "sphering",
            "sweep",
            str(wells),
            "--controls",
            "Metadata_broad_sample=DMSO",
            "--lambdas",
            "1e-3,1e-1",
            "--id",
            "Metadata_broad_sample",
            "--annotation",
            "Metadata_moa",
            "--out",
            str(sweep),
            "--plot",
            str(tmp_path / "s.png"),
        )
        == 0
    )
    assert [p["lambda"] for p in json.loads(sweep.read_text())["points"]] == [1e-3, 1e-1]
    assert (tmp_path / "s.png").stat().st_size > 1000

    metrics = tmp_path / "metrics.json"
    assert (
        run(
            "evaluate",
            str(sphered),
            "--id",
            "Metadata_broad_sample",
            "--annotation",
            "Metadata_moa",
            "--out",
            str(metrics),
            "--per-query",
            str(tmp_path / "pq.csv"),
            "--plot",
            str(tmp_path / "report.png"),
        )
        == 0
    )
    summary = json.loads(metrics.read_text())
    assert summary["n_queries"] == 2 and {
        "mean_average_precision",
        "mean_average_precision_interpolated",
        "folds_of_enrichment",
    } <= set(summary)
    assert len(pd.read_csv(tmp_path / "pq.csv")) == 2 and (tmp_path / "report.png").stat().st_size > 1000

    library, matches = tmp_path / "lib", tmp_path / "matches.csv"
    assert (
        run(
            "library",
            "build",
            str(sphered),
            "--id",
            "Metadata_broad_sample",
            "--annotation",
            "Metadata_moa",
            "--out",
            str(library),
        )
        == 0
    )
    assert (
        run("match", str(library), str(sphered), "--top-k", "3", "--leave-one-out", "--out", str(matches))
        == 0
    )
    table = pd.read_csv(matches)
    assert len(table) == 12 * 3 and (table["query_id"] != table["library_id"]).all()
    assert (
        run(
            "match",
            str(sphered),
            str(sphered),
            "--top-k",
            "2",
            "--id",
            "Metadata_broad_sample",
            "--out",
            str(matches),
        )
        == 0
    )
    assert len(pd.read_csv(matches)) == 12 * 2


def test_errors_are_cpcnn_errors(tmp_path: Path, plate: Path) -> None:
    with pytest.raises(CpcnnError, match="no control rows"):
        run(
            "sphering",
            "fit",
            str(plate),
            "--controls",
            "Metadata_broad_sample=PBS",
            "--lambda",
            "1e-2",
            "--out",
            str(tmp_path / "t.npz"),
        )
    with pytest.raises(CpcnnError, match="lambda must be a positive number"):
        run(
            "sphering",
            "fit",
            str(plate),
            "--controls",
            "Metadata_broad_sample=DMSO",
            "--lambda",
            "0",
            "--out",
            str(tmp_path / "t.npz"),
        )
    with pytest.raises(CpcnnError, match="no such file"):
        run(
            "evaluate",
            str(tmp_path / "nope.csv"),
            "--id",
            "x",
            "--annotation",
            "y",
            "--out",
            str(tmp_path / "m.json"),
        )
    with pytest.raises(CpcnnError, match="needs --library-id or --id"):
        run("match", str(plate), str(plate), "--out", str(tmp_path / "m.csv"))


def test_evaluate_and_sweep_convention(
    tmp_path: Path, plate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--convention paper: the JSON names the convention; its mAP needs two hits per query."""
    angles = np.deg2rad([0, 15, 40, 70, 120, 210])  # hand-computed in test_metrics_conventions
    table = pd.DataFrame(
        {
            "Metadata_id": [f"T{i}" for i in range(6)],
            "Metadata_moa": ["a", "b", "a", "a|c", "c", "d"],
            "f0": np.cos(angles),
            "f1": np.sin(angles),
        }
    )
    source = write_profiles(table, tmp_path / "angles.csv")
    for convention, want_map, want_foe in (("copairs", 37 / 48, 7.5), ("paper", 53 / 72, 1.5)):
        out = tmp_path / f"{convention}.json"
        argv = [
            "evaluate",
            str(source),
            "--id",
            "Metadata_id",
            "--annotation",
            "Metadata_moa",
            "--out",
            str(out),
        ]
        assert run(*argv, "--convention", convention) == 0
        summary = json.loads(out.read_text())
        assert summary["convention"] == summary["settings"]["convention"] == convention
        assert summary["mean_average_precision"] == pytest.approx(want_map, abs=1e-6)
        assert summary["folds_of_enrichment"] == pytest.approx(want_foe, rel=1e-6)
        assert f"{convention} convention, 4 queries" in capsys.readouterr().out

    sweep = tmp_path / "sweep.json"
    argv = ["sphering", "sweep", str(plate), "--controls", "Metadata_broad_sample=DMSO", "--lambdas", "1e-2"]
    argv += ["--id", "Metadata_broad_sample", "--annotation", "Metadata_moa", "--out", str(sweep)]
    assert run(*argv, "--convention", "paper") == 0
    result = json.loads(sweep.read_text())
    # Two queries (BRD-1 a, BRD-3 a|c) with one hit each: FoE queries, but no paper mAP query.
    assert result["convention"] == "paper" and result["points"][0]["n_queries"] == 2
    assert result["points"][0]["n_queries_average_precision"] == 0
    assert result["points"][0]["mean_average_precision"] is None
    assert "paper convention, unsphered" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(*argv, "--convention", "nature")
