"""End-to-end service benchmark over HTTP; prints one JSON document.

    python bench/service.py [--model b0|tiny|NAME] [--fovs 16] [--clients 4] [--modes embedded,redis]

Measures, on the same fields of view (the real sample site when ``../shared`` or ``examples/`` has it,
else synthetic 1080x1080 sites):
  - in-process ``Embedder.embed_site`` cells/s (images already decoded) and with decoding;
  - cells/s at saturation through ``cpcnn serve`` (embedded worker) and ``cpcnn serve --redis-url`` with
    one ``cpcnn worker``, driven by concurrent SDK clients;
  - p50/p99 latency of one field of view (submit + wait + Parquet result) on an idle server;
  - bytes through Redis per job (network in+out from Redis INFO, and the queued job's stored hash).
``--model b0`` (default) exports a randomly initialised EfficientNet-B0 (the CNN-1 architecture and
cost) with the 'train' extra; ``tiny`` is a trivial model that measures pure service overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIRS = (
    REPO.parent / "shared/data/images/pcatlas-BR00143976-C03-s3",
    REPO / "examples/data/pcatlas-BR00143976-C03-s3",
)
SAMPLE_FILES = {"DNA": "ch5", "RNA": "ch6", "ER": "ch2", "AGP": "ch3", "Mito": "ch4"}


def load_site() -> tuple[dict[str, bytes], np.ndarray, str]:
    """(channel -> TIFF bytes, (N, 2) centres, description): the real sample site, else synthetic."""
    from cpcnn.locations import read_locations

    for folder in SAMPLE_DIRS:
        if (folder / "r03c03f03p01-Nuclei.csv").is_file():
            files = {
                c: (folder / f"r03c03f03p01-{ch}sk1fk1fl1.tiff").read_bytes()
                for c, ch in SAMPLE_FILES.items()
            }
            return files, read_locations(folder / "r03c03f03p01-Nuclei.csv"), f"real sample {folder.name}"
    sys.path.insert(0, str(REPO / "tests"))
    from _tiny_model import synthetic_site, tiff_bytes

    planes, centers = synthetic_site(size=1080, n_cells=41, seed=0)
    return {c: tiff_bytes(p, compression="lzw") for c, p in planes.items()}, centers, "synthetic 1080x1080"


def build_model(kind: str, home: Path) -> str:
    """Put the benchmark model into ``home/models``; returns its name."""
    from cpcnn.model_store import ModelStore

    store = ModelStore(home / "models")
    if kind == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from _tiny_model import save_tiny_model

        save_tiny_model(store.root, "bench")
        return "bench"
    if kind == "b0":
        import torch
        from cpcnn.model_export.importer import import_weights
        from cpcnn.training.checkpoint import save_checkpoint
        from cpcnn.training.net import EfficientNetB0

        torch.manual_seed(0)
        checkpoint = home / "b0.pt"
        save_checkpoint(checkpoint, EfficientNetB0(in_chans=5))
        import_weights(checkpoint, name="bench", store=store)
        return "bench"
    source = ModelStore().get(kind)  # a model already in the user's store
    store.save(source.onnx_path, source.manifest.model_copy(update={"name": "bench"}))
    return "bench"


def in_process(
    model_dir: Path, files: dict[str, bytes], centers: np.ndarray, n_fovs: int
) -> dict[str, float]:
    from cpcnn.embedding import Embedder
    from cpcnn.io.images import read_site
    from cpcnn.model_store import ModelStore

    embedder = Embedder(ModelStore(model_dir).get("bench"), device="cpu")
    image = read_site(files)
    embedder.warmup()
    embedder.embed_site(image, centers)
    began = time.perf_counter()
    for _ in range(n_fovs):
        embedder.embed_site(image, centers)
    embed_only = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(n_fovs):
        embedder.embed_site(read_site(files), centers)
    with_decode = time.perf_counter() - began
    cells = n_fovs * centers.shape[0]
    return {
        "cells_per_s": cells / embed_only,
        "cells_per_s_with_decode": cells / with_decode,
        "threads": embedder.info.threads,
        "batch_size": embedder.info.batch_size,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cpcnn.cli.main", *args],
        env={**os.environ, **env},
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        cwd=REPO,  # noqa: SIM115
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def drive(
    url: str,
    files: dict[str, bytes],
    centers: np.ndarray,
    *,
    n_fovs: int,
    clients: int,
    latency_runs: int,
    tag: str,
) -> dict[str, Any]:
    """Saturation with ``clients`` concurrent SDK clients, then sequential single-FOV latency."""
    from cpcnn.client import Client

    def one(client: Client, site: str) -> int:
        table = client.embed(files, centers, metadata={"plate": tag, "site": site})
        return len(table)

    with Client(url, timeout=600) as warm:
        one(warm, "warmup")
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        handles = [Client(url, timeout=600) for _ in range(clients)]
        futures = [pool.submit(one, handles[i % clients], f"sat-{i}") for i in range(n_fovs)]
        cells = sum(f.result() for f in futures)
        for handle in handles:
            handle.close()
    seconds = time.perf_counter() - began
    latencies = []
    with Client(url, timeout=600) as client:
        for i in range(latency_runs):
            start = time.perf_counter()
            one(client, f"lat-{i}")
            latencies.append((time.perf_counter() - start) * 1000)
    return {
        "cells_per_s": cells / seconds,
        "fovs_per_s": n_fovs / seconds,
        "clients": clients,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "runs": latency_runs,
        },
    }


def run_embedded(
    home: Path, files: dict[str, bytes], centers: np.ndarray, opts: argparse.Namespace
) -> dict[str, Any]:
    port = _free_port()
    env = {"CPCNN_HOME": str(home), "CPCNN_DATA_DIR": str(home / "data-embedded"), "CPCNN_ENV": "dev"}
    serve = _start(
        ["serve", "--port", str(port), "--model", "bench", "--device", "cpu", "--slots", "4"],
        env,
        home / "serve-embedded.log",
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}")
        return drive(
            f"http://127.0.0.1:{port}",
            files,
            centers,
            n_fovs=opts.fovs,
            clients=opts.clients,
            latency_runs=opts.latency_runs,
            tag="embedded",
        )
    finally:
        _stop(serve)


def run_redis(
    home: Path, files: dict[str, bytes], centers: np.ndarray, opts: argparse.Namespace
) -> dict[str, Any]:
    import redis

    redis_port, port = _free_port(), _free_port()
    redis_dir = home / "redis"
    redis_dir.mkdir()
    redis_server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        "CPCNN_HOME": str(home),
        "CPCNN_DATA_DIR": str(home / "data-redis"),
        "CPCNN_ENV": "dev",
        "CPCNN_REDIS_URL": url,
    }
    processes = []
    try:
        connection = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                connection.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        processes.append(
            _start(["serve", "--port", str(port), "--model", "bench"], env, home / "serve-redis.log")
        )
        api = f"http://127.0.0.1:{port}"
        stored = _queued_job_bytes(api, connection, files, centers)
        processes.append(
            _start(
                ["worker", "--model", "bench", "--device", "cpu", "--slots", "4"], env, home / "worker.log"
            )
        )
        _wait_ready(api)
        before = _net_bytes(connection)
        result = drive(
            api,
            files,
            centers,
            n_fovs=opts.fovs,
            clients=opts.clients,
            latency_runs=opts.latency_runs,
            tag="redis",
        )
        jobs = opts.fovs + opts.latency_runs + 1
        result["redis_bytes_per_job"] = {
            "network_in_out": (_net_bytes(connection) - before) / jobs,
            "stored_while_queued": stored,
        }
        return result
    finally:
        for process in reversed(processes):
            _stop(process)
        redis_server.terminate()
        redis_server.wait(timeout=10)


def _net_bytes(connection: Any) -> int:
    stats = connection.info("stats")
    return int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])


def _queued_job_bytes(api: str, connection: Any, files: dict[str, bytes], centers: np.ndarray) -> int:
    """Submit one job before any worker runs and measure what Redis holds for it."""
    import httpx

    from cpcnn.client import Client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{api}/healthz", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    with Client(api) as client:
        job = client.submit(files, centers, metadata={"plate": "size-probe"})
    return int(connection.memory_usage(f"rq:job:{job.id}") or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="b0", help="b0 (random EfficientNet-B0), tiny, or a store name")
    parser.add_argument("--fovs", type=int, default=16, help="fields of view per saturation run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent SDK clients")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--modes", default="embedded,redis")
    opts = parser.parse_args()

    import onnxruntime

    import cpcnn

    home = Path(tempfile.mkdtemp(prefix="cpcnn-bench-"))
    try:
        files, centers, source = load_site()
        build_model(opts.model, home)
        report: dict[str, Any] = {
            "benchmark": "service",
            "model": opts.model,
            "site": source,
            "cells_per_fov": int(centers.shape[0]),
            "fovs": opts.fovs,
            "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
            "versions": {
                "cpcnn": cpcnn.__version__,
                "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version(),
            },
        }
        report["in_process"] = in_process(home / "models", files, centers, opts.fovs)
        modes = {"embedded": run_embedded, "redis": run_redis}
        for mode in opts.modes.split(","):
            report[mode] = modes[mode](home, files, centers, opts)
            report[mode]["ratio_vs_in_process"] = (
                report[mode]["cells_per_s"] / report["in_process"]["cells_per_s"]
            )
            # `cpcnn embed` decodes its files too: the like-for-like comparison for a service.
            report[mode]["ratio_vs_in_process_with_decode"] = (
                report[mode]["cells_per_s"] / report["in_process"]["cells_per_s_with_decode"]
            )
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
