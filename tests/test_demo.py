"""``cpcnn demo`` runs the whole chain on a synthetic screen and reports where everything is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from _tiny_model import save_tiny_model

from cpcnn.cli.main import main


@pytest.mark.slow
def test_demo_chains_every_step_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny_model(Path(os.environ["CPCNN_HOME"]) / "models", "cnn1")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--plates", "2", "--wells", "24", "--sites", "1",
            "--cells-per-site", "12", "--size", "256", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "report" / "demo.json").read_text())
    assert "cpcnn demo: done" in printed and str(out / "report" / "demo.json") in printed
    # Every command of the chain ran, in the order a user runs them.
    assert list(summary["seconds"]) == ["synth", "profile", "sweep", "fit", "apply", "evaluate_raw", "evaluate_sphered"]
    cells = ds.dataset(out / "profiles" / "cells", format="parquet").to_table()
    assert cells.num_rows == summary["cells"] == 2 * 24 * 12
    for name in ("raw", "sphered"):
        metrics = summary["retrieval"][name]
        assert metrics["queries"] > 0 and 0 < metrics["mAP"] <= 1
        assert (out / "report" / f"retrieval_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The sphering lambda is one of the swept ones, scaled to these features.
    sweep = json.loads((out / "report" / "sweep.json").read_text())
    assert summary["sphering_lambda"] in [p["lambda"] for p in sweep["points"]]


def test_demo_without_a_model_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cpcnn models fetch cnn1" in err[0]
    assert not (tmp_path / "d" / "screen").exists()
