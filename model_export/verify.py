"""ONNX Runtime vs torch parity for an exported feature extractor.

Rule: for every batch, ``max|ort - torch| <= rtol * max(1, max|torch|)`` with ``rtol = 1e-5``, where
torch runs the network in float64. The bound scales with the features because random or imported
weights can give features in the hundreds, where an absolute 1e-5 is below float32 resolution; the
``max(1, .)`` keeps it meaningful for tiny features. float64 makes the bound ONNX Runtime's own error:
against float32 torch it would also carry torch's, which on an ill-conditioned network (BatchNorm
statistics far from the data) reaches 2.4e-5 and refused a correct export.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from cpcnn.training.net import FeatureExtractor

from cpcnn.errors import ModelImportError

RTOL = 1e-5


@dataclass(frozen=True)
class ParityResult:
    """Measured agreement on one batch of seeded random crops."""

    batch_size: int
    max_abs_diff: float
    feature_scale: float  # max |torch feature|
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def cpu_session(onnx_path: Path, *, threads: int = 2) -> ort.InferenceSession:
    """A CPU ORT session with full graph optimization, as inference uses it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def verify_onnx(
    onnx_path: Path,
    extractor: FeatureExtractor,
    *,
    batch_sizes: Sequence[int] = (1, 7),
    seed: int = 0,
    rtol: float = RTOL,
) -> list[ParityResult]:
    """Run both on seeded uniform [0, 1) crops; raise ModelImportError with the numbers if any batch fails."""
    session = cpu_session(onnx_path)
    (model_input,) = session.get_inputs()
    _, height, width, channels = model_input.shape
    rng = np.random.default_rng(seed)
    exact = copy.deepcopy(extractor).double().eval()
    results: list[ParityResult] = []
    for batch_size in batch_sizes:
        crops = rng.random((batch_size, height, width, channels), dtype=np.float32)
        with torch.no_grad():
            expected = exact(torch.from_numpy(crops.astype(np.float64))).numpy()
        (actual,) = session.run(None, {model_input.name: crops})
        if actual.shape != expected.shape:
            raise ModelImportError(
                f"ONNX output shape {actual.shape} != torch {expected.shape} (batch {batch_size})"
            )
        scale = float(np.abs(expected).max())
        results.append(
            ParityResult(
                batch_size=batch_size,
                max_abs_diff=float(np.abs(actual - expected).max()),
                feature_scale=scale,
                tolerance=rtol * max(1.0, scale),
            )
        )
    failed = [r for r in results if not r.ok]
    if failed:
        detail = ", ".join(
            f"batch {r.batch_size}: max|diff| {r.max_abs_diff:.3g} > {r.tolerance:.3g} (scale {r.feature_scale:.3g})"
            for r in failed
        )
        raise ModelImportError(f"ONNX export disagrees with torch: {detail}")
    return results
