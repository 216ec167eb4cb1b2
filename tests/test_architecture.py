"""Boundaries the layout promises: a light domain package, short modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("fastapi", "redis", "rq", "torch", "onnxruntime", "onnx", "h5py", "uvicorn")


def imported_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


def test_domain_package_imports_no_service_or_training_stack() -> None:
    loaded = imported_modules(
        "import cpcnn, cpcnn.crops, cpcnn.locations, cpcnn.io.images, cpcnn.embedding, cpcnn.model_store, "
        "cpcnn.profiles, cpcnn.metrics"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_sdk_imports_only_httpx_and_numpy() -> None:
    loaded = imported_modules("import cpcnn.client")
    assert not loaded & {*HEAVY, "pandas", "pyarrow", "scipy", "tifffile"}


def test_modules_stay_short() -> None:
    long = []
    for folder in ("cpcnn", "service", "training", "model_export"):
        for path in (REPO / folder).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > 600:
                long.append(f"{path.relative_to(REPO)}: {lines}")
    assert not long, long
