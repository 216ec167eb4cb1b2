"""Embedding throughput on this machine: model-only, crop-only, end-to-end, and DeepProfiler 0.5.1.

Workload: N synthetic 1080x1080 five-channel 16-bit fields of view with ~300 cells each, written as
TIFF files. The model is CNN-1 with seeded random weights in the published file format (made in the
DeepProfiler venv, so both sides run the same checkpoint), or ``--model NAME`` from the store.

    python bench/embed.py [--fields 8] [--batch-sizes 32,64,128] [--no-deepprofiler]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._fields import make_fields  # noqa: E402
from cpcnn.crops import crop_cells  # noqa: E402
from cpcnn.embedding import Embedder, SiteCrops  # noqa: E402
from cpcnn.io.images import read_site  # noqa: E402
from cpcnn.locations import read_locations  # noqa: E402
from cpcnn.model_store import ModelStore, StoredModel  # noqa: E402


def deepprofiler_python() -> Path | None:
    configured = os.environ.get("CPCNN_DEEPPROFILER_PYTHON")
    candidate = Path(configured) if configured else REPO / ".venv-deepprofiler" / "bin" / "python"
    return candidate if candidate.is_file() else None


def reference_checkpoint(work: Path, dp_python: Path | None) -> Path | None:
    if dp_python is None:
        return None
    path = work / "cnn1_random_weights.hdf5"
    subprocess.run([str(dp_python), str(REPO / "scripts/deepprofiler/make_checkpoint.py"), str(path)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def build_model(work: Path, checkpoint: Path | None, name: str | None) -> StoredModel:
    if name:
        return ModelStore().resolve(name)
    from cpcnn.model_export.importer import import_weights

    store = ModelStore(work / "models")
    if checkpoint is None:  # no DeepProfiler venv: a torch checkpoint with seeded random weights
        import torch
        from cpcnn.training.checkpoint import save_checkpoint
        from cpcnn.training.net import EfficientNetB0

        torch.manual_seed(0)
        checkpoint = save_checkpoint(work / "random.pt", EfficientNetB0())
    return import_weights(checkpoint, name="bench", store=store)


def load_fields(index_path: Path) -> list[tuple[str, dict[str, Path], Path]]:
    index = json.loads(index_path.read_text())
    root = index_path.parent
    return [(s["id"], {k: root / v for k, v in s["channels"].items()}, root / s["locations"]) for s in index["sites"]]


def load_site(files: dict[str, Path], locations: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_site(files), read_locations(locations)


def rate(cells: int, seconds: float) -> float:
    return round(cells / seconds, 1)


def bench_end_to_end(model: StoredModel, fields: list, batch_size: int | None) -> dict:
    """Files on disk -> features (decode + crop + infer), run first so its peak RSS is its own."""
    embedder = Embedder(model, device="cpu", batch_size=batch_size)
    embedder.warmup()
    started = time.perf_counter()
    loaders = ((key, partial(load_site, files, locs)) for key, files, locs in fields)
    embedded = sum(features.shape[0] for _, features in embedder.embed_sites(loaders))
    seconds = time.perf_counter() - started
    return {
        "end_to_end_cells_per_s": rate(embedded, seconds),
        "end_to_end_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "onnxruntime_provider": embedder.info.provider,
        "threads": embedder.info.threads,
        "batch_size": embedder.info.batch_size,
    }


def bench_parts(model: StoredModel, fields: list, batch_sizes: list[int]) -> dict:
    """Model-only (pre-cropped, per batch size) and crop-only (decoded images, reused buffer)."""
    decoded = [(key, read_site(files), read_locations(locs)) for key, files, locs in fields]
    n_cells = sum(len(c) for _, _, c in decoded)
    results: dict = {"cells": n_cells, "fields": len(fields)}
    all_crops = np.concatenate([crop_cells(image, centers) for _, image, centers in decoded])
    # Crop-only as the pipeline crops: the site checked once, then chunks into a reused buffer.
    started = time.perf_counter()
    for _, image, centers in decoded:
        for _rows in SiteCrops.check(image, centers).chunks():
            pass
    results["crop_only_cells_per_s"] = rate(n_cells, time.perf_counter() - started)

    per_batch = {}
    for batch in batch_sizes:
        embedder = Embedder(model, device="cpu", batch_size=batch)
        embedder.warmup()
        embedder.embed_crops(all_crops[: 2 * batch])
        started = time.perf_counter()
        embedder.embed_crops(all_crops)
        per_batch[batch] = rate(n_cells, time.perf_counter() - started)
    results["model_only_cells_per_s_by_batch"] = per_batch
    results["model_only_cells_per_s"] = max(per_batch.values())
    return results


def bench_deepprofiler(dp_python: Path, index_path: Path, checkpoint: Path, work: Path) -> dict:
    """Run ``deepprofiler profile`` on the same fields; per-image times come from its own log lines."""
    started = time.perf_counter()
    subprocess.run(
        [str(dp_python), str(REPO / "scripts/deepprofiler/run_reference.py"), "--inputs", str(index_path.parent),
         "--checkpoint", str(checkpoint), "--out", str(work / "dp")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    wall = time.perf_counter() - started
    log = "\n".join(p.read_text(errors="replace") for p in (work / "dp" / "dp").rglob("profile.log"))
    timings = [(int(n), float(s)) for n, s in re.findall(r"\((\d+) cells\) : ([0-9.]+) secs", log)]
    cells = sum(n for n, _ in timings)
    return {
        "deepprofiler_cells_per_s": rate(cells, sum(s for _, s in timings)) if timings else None,
        "deepprofiler_note": "per-image times from DeepProfiler's log (crop + inference, image decode excluded)",
        "deepprofiler_wall_s_including_startup": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--batch-sizes", default="16,32,64", help="model-only batch sizes to try")
    parser.add_argument("--batch-size", type=int, help="end-to-end batch size (default: the embedder's)")
    parser.add_argument("--compression", choices=("none", "lzw", "zlib"), default="none")
    parser.add_argument("--model", help="a model in the store instead of the seeded random CNN-1 checkpoint")
    parser.add_argument("--no-deepprofiler", action="store_true")
    args = parser.parse_args()

    dp_python = None if args.no_deepprofiler else deepprofiler_python()
    with tempfile.TemporaryDirectory(prefix="cpcnn-bench-") as tmp:
        work = Path(tmp)
        index_path = make_fields(work / "inputs", n_fields=args.fields, cells=args.cells,
                                 compression=None if args.compression == "none" else args.compression)
        checkpoint = reference_checkpoint(work, dp_python) if not args.model else None
        model = build_model(work, checkpoint, args.model)
        results = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "workload": f"{args.fields} fields 1080x1080x5 uint16 ({args.compression}), {args.cells} cells each",
        }
        fields = load_fields(index_path)
        results.update(bench_end_to_end(model, fields, args.batch_size))
        results.update(bench_parts(model, fields, [int(b) for b in args.batch_sizes.split(",")]))
        results["end_to_end_vs_model_only"] = round(
            results["end_to_end_cells_per_s"] / results["model_only_cells_per_s"], 3)
        if dp_python is not None and checkpoint is not None:
            results.update(bench_deepprofiler(dp_python, index_path, checkpoint, work))
            if results.get("deepprofiler_cells_per_s"):
                results["end_to_end_vs_deepprofiler"] = round(
                    results["end_to_end_cells_per_s"] / results["deepprofiler_cells_per_s"], 2)
        else:
            results["deepprofiler_cells_per_s"] = None
            results["deepprofiler_note"] = "DeepProfiler venv not found (scripts/deepprofiler/setup_env.sh)"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
