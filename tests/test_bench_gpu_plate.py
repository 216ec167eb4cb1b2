"""bench/gpu_plate.py on the CPU: its device crops are cpcnn.crops' crops, and a smoke run reports every field."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from cpcnn._types import CHANNELS
from cpcnn.crops import crop_cells
from cpcnn.synth.plate import conditions_for_plate, site_rng
from cpcnn.synth.render import render_site
from cpcnn.synth.treatments import Phenotype

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_plate.py"


@pytest.fixture(scope="module")
def gpu_plate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_plate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_plate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("normalize", [True, False])
def test_device_crops_equal_cpcnn_crops_inside_and_across_the_border(gpu_plate: ModuleType, normalize: bool) -> None:
    import torch

    images, centers = render_site(site_rng(0, 0, 0, 1), Phenotype(), conditions_for_plate(0, 0, 256),
                                  size=256, n_cells=6)
    image = np.stack([images[ch] for ch in CHANNELS], axis=-1).astype(np.float32)
    image[..., 2] = 7.0  # a flat channel: min-max gives 0, not NaN
    centers = np.vstack([centers, [[1.5, 2.0], [255.0, 128.3], [-30.0, 40.0], [250.7, 300.0], [128.0, 128.0]]])
    expected = crop_cells(image, centers, normalization="minmax" if normalize else None)
    got = gpu_plate.crop_cells_torch(torch.from_numpy(image), torch.from_numpy(centers), normalize=normalize)
    assert got.shape == expected.shape == (11, 128, 128, 5)
    assert float(np.abs(got.numpy() - expected).max()) <= 1e-5
    assert np.any(expected[7] == 0) and np.all(np.isfinite(got.numpy()))


def test_cpu_smoke_run_reports_every_field(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--sites", "2", "--size", "256", "--cells-per-site", "4",
         "--workers", "1", "--threads", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_plate.json").read_text())
    assert report == json.loads(done.stdout)
    assert report["feature_size"] == 672 and report["tf32"] is False
    assert report["plate"]["cells"] == 8 and report["plate"]["format"] in ("tiff", "npy")
    assert report["crop_check"]["max_abs_diff_vs_cpcnn_crops"] <= 1e-5
    fp32 = report["modes"]["fp32"]
    for name in ("cells_per_s", "wall_s", "decode_s", "decode_wait_s", "transfer_s", "crop_s", "network_s",
                 "network_only_cells_per_s", "projected_450k_cells_s", "max_abs_error", "max_rel_error"):
        assert isinstance(fp32[name], float | int), name
    assert fp32["cells"] == 8 and fp32["cells_per_s"] > 0 and fp32["max_abs_error"] == 0 and fp32["finite"]
    assert fp32["projected_450k_cells_s"] == pytest.approx(450_000 * fp32["wall_s"] / 8, rel=1e-3)
