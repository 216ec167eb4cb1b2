"""Fidelity: our features against DeepProfiler 0.5.1 itself, run in its own virtual environment.

``scripts/deepprofiler/make_reference.sh`` builds a checkpoint in the exact CNN-1 file format with
seeded random weights, synthetic and real fields of view (border cells included), and runs
``python -m deepprofiler profile`` on them. We import the same checkpoint, embed the same sites and
require, per field of view, max |ours - DeepProfiler| <= 1e-4 * max |DeepProfiler|.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from cpcnn.cli.main import main as cli_main
from cpcnn.crops import crop_cells
from cpcnn.embedding import Embedder
from cpcnn.io.images import read_site
from cpcnn.locations import read_locations
from cpcnn.store import ModelStore, StoredModel

pytestmark = [pytest.mark.reference, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def deepprofiler_python() -> Path | None:
    configured = os.environ.get("CPCNN_DEEPPROFILER_PYTHON")
    candidate = Path(configured) if configured else REPO / ".venv-deepprofiler" / "bin" / "python"
    return candidate if candidate.is_file() else None


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    python = deepprofiler_python()
    if python is None:
        message = "DeepProfiler venv missing: run scripts/deepprofiler/setup_env.sh .venv-deepprofiler"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("deepprofiler")
    env = dict(os.environ, DP_VENV=str(python.parent.parent))
    subprocess.run(
        ["bash", str(REPO / "scripts/deepprofiler/make_reference.sh"), str(out)],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=1200,
    )
    return out, json.loads((out / "reference" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def model(reference: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    from model_export.importer import import_weights

    out, manifest = reference
    store = ModelStore(tmp_path_factory.mktemp("home") / "models")
    return import_weights(out / manifest["checkpoint"], name="cnn1", store=store)


def load_site(out: Path, site: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = read_site({name: out / path for name, path in site["channels"].items()})
    centers = read_locations(out / site["locations"])
    expected = np.load(out / site["features"])["features"]
    return image, centers, expected


def relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def test_every_site_matches_deepprofiler(reference: tuple[Path, dict[str, Any]], model: StoredModel) -> None:
    out, manifest = reference
    embedder = Embedder(model, device="cpu")
    assert {s["dtype"] for s in manifest["sites"]} >= {"uint8", "uint16"}
    for site in manifest["sites"]:
        image, centers, expected = load_site(out, site)
        ours = embedder.embed_site(image, centers)
        assert ours.shape == expected.shape == (site["n_cells"], 672)
        assert np.isfinite(ours).all(), site["id"]
        # DeepProfiler's graph divides 0 by 0 for a channel flat above ~2 (NaN for the whole cell);
        # those rows are compared separately below.
        finite = np.isfinite(expected).all(axis=1)
        error = relative_error(ours[finite], expected[finite])
        assert error <= TOLERANCE, f"{site['id']}: {error:.2e}"
        cosine = (ours[finite] * expected[finite]).sum(1) / (
            np.linalg.norm(ours[finite], axis=1) * np.linalg.norm(expected[finite], axis=1)
        )
        assert cosine.min() > 0.99999, site["id"]


def test_nan_rows_in_reference_are_flat_channel_cells(reference: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = reference
    nan_sites = [s for s in manifest["sites"] if s["nan_rows"]]
    assert nan_sites, "the reference inputs should include a flat channel"
    for site in nan_sites:
        image, centers, expected = load_site(out, site)
        raw = crop_cells(image, centers, normalization=None)
        flat = (raw.min(axis=(1, 2)) == raw.max(axis=(1, 2))) & (raw.max(axis=(1, 2)) > 2)
        assert np.array_equal(np.flatnonzero(flat.any(axis=1)), np.array(site["nan_rows"]))


def test_paper_normalization_is_distinguishable(reference: tuple[Path, dict[str, Any]], model: StoredModel) -> None:
    """The tolerance is tight enough to catch the smallest real slip we know of."""
    out, manifest = reference
    site = next(s for s in manifest["sites"] if s["id"].startswith("pcatlas"))
    image, centers, expected = load_site(out, site)
    paper = Embedder(model, device="cpu").embed_site(image, centers, normalization="minmax_paper")
    assert relative_error(paper, expected) > 100 * TOLERANCE


def test_cli_embed_matches_deepprofiler(
    reference: tuple[Path, dict[str, Any]], model: StoredModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, manifest = reference
    site = next(s for s in manifest["sites"] if s["id"].startswith("pcatlas"))
    monkeypatch.setenv("CPCNN_HOME", str(model.onnx_path.parents[2]))  # <home>/models/cnn1/model.onnx
    images = [f"--image={name}={out / path}" for name, path in site["channels"].items()]
    common = ["embed", "--model", "cnn1", *images, "--locations", str(out / site["locations"]),
              "--plate", str(site["plate"]), "--well", str(site["well"]), "--site", str(site["site"])]
    assert cli_main([*common, "--out", str(tmp_path / "cells.parquet")]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "cells.npz")]) == 0

    table = pq.read_table(tmp_path / "cells.parquet").to_pandas()
    expected = np.load(out / site["features"])["features"]
    features = table[[f"efficientnet_{i}" for i in range(672)]].to_numpy()
    assert relative_error(features, expected) <= TOLERANCE
    assert table["Metadata_Well"].unique().tolist() == [str(site["well"])]
    assert table["Metadata_Model"].unique().tolist() == ["cnn1"]
    centers = read_locations(out / site["locations"])
    assert np.array_equal(table[["Metadata_Nuclei_Location_Center_X", "Metadata_Nuclei_Location_Center_Y"]].to_numpy(), centers)

    npz = np.load(tmp_path / "cells.npz", allow_pickle=True)
    assert relative_error(npz["features"], expected) <= TOLERANCE
    assert npz["metadata"].item()["Metadata_Model"] == "efficientnet"
    assert np.array_equal(npz["locations"], centers)
