"""A whole plate through ``cpcnn profile`` and through DeepProfiler 0.5.1 ``profile``; prints one JSON object.

Workload: ``cpcnn synth plate`` (default 6 wells x 4 sites = 24 fields of 1080x1080, ~300 cells each).
The model is CNN-1 with seeded random weights in the published Keras file format, made in the
DeepProfiler venv, so both sides run the same checkpoint (``.venv-deepprofiler``, made by
scripts/deepprofiler/setup_env.sh; without it only cpcnn runs, on a random torch export).

Measured, each as one separate process: whole-process wall time and peak RSS of ``cpcnn profile``
(from the LoadData CSV and nuclei table to cells/, sites.parquet, wells.parquet), the same for
DeepProfiler (project laid out by scripts/deepprofiler/run_reference.py; its wall time includes
TensorFlow's start-up, which is part of running it), peak RSS of ``cpcnn profile`` on half the sites
(memory must not grow with the plate), and ``cpcnn profile --server`` against ``cpcnn serve`` plus 1
and 2 ``cpcnn worker`` processes on Redis (cells/s, and time split between the client and the workers).

    python bench/plate.py [--wells 6] [--sites 4] [--cells 300] [--no-deepprofiler] [--no-service]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.embed import build_model, deepprofiler_python, reference_checkpoint  # noqa: E402
from bench.service import _free_port, _start, _stop, _wait_ready  # noqa: E402
from cpcnn._types import CHANNELS  # noqa: E402


def measured(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one process to its end: wall seconds, exit code, and peak RSS in MiB of the process with all its
    descendants (summed, sampled every 0.1 s: ``ru_maxrss`` would count the pages a fork copied from here)."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = 0
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        while process.poll() is None:
            peak = max(peak, _tree_rss_kib(process.pid))
            time.sleep(0.1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(time.perf_counter() - started, 2), "cpu_s": round(cpu, 1),
            "peak_rss_mib": round(peak / 1024, 1), "exit_code": process.returncode}


def _tree_rss_kib(root: int) -> int:
    """Resident KiB of ``root`` and every process below it, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grown = {root}, True
    while grown:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grown = bool(below)
    total = 0
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return total


def cpcnn_profile(screen: Any, out: Path, home: Path, log: Path, *extra: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "cpcnn.cli.main", "profile", "--load-data", str(screen.load_data),
               "--locations", str(screen.nuclei), "--model", "bench", "--out", str(out), "--quiet",
               "--platemap", str(screen.platemap), *extra]
    result = measured(command, {"CPCNN_HOME": str(home)}, log)
    if result["exit_code"] != 0:
        raise RuntimeError(f"cpcnn profile failed ({result['exit_code']}): {log.read_text()[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    result.update(cells=run["cells"], sites=run["sites_embedded"], embed_s=run["timings"]["embed_s"],
                  setup_s=run["timings"]["setup_s"], summaries_s=run["timings"]["summaries_s"],
                  pipeline_cells_per_s=run["cells_per_s"],
                  whole_process_cells_per_s=round(run["cells"] / result["wall_s"], 1))
    return result


def deepprofiler_inputs(screen: Any, folder: Path) -> Path:
    """The screen in ``scripts/deepprofiler/make_inputs.py``'s index layout (per-site locations CSVs)."""
    from cpcnn.plates.load_data import read_load_data

    centers: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    with open(screen.nuclei, newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Site"])
            centers.setdefault(key, []).append((row["Location_Center_X"], row["Location_Center_Y"]))
    sites = []
    for site in read_load_data(screen.load_data):
        locations = folder / f"{site.name}.csv"
        locations.parent.mkdir(parents=True, exist_ok=True)
        rows = centers.get(site.key, [])
        locations.write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n" +
                             "".join(f"{x},{y}\n" for x, y in rows))
        sites.append({"id": site.name, "plate": site.plate, "well": site.well, "site": site.site,
                      "height": 1080, "width": 1080, "dtype": "uint16", "n_cells": len(rows),
                      "channels": {c: os.path.relpath(site.images[c], folder) for c in CHANNELS},
                      "locations": locations.name})
    index = folder / "index.json"
    index.write_text(json.dumps({"channels": list(CHANNELS), "box_size": 128, "sites": sites}, indent=1))
    return index


def deepprofiler_profile(dp_python: Path, index: Path, checkpoint: Path, work: Path) -> dict[str, Any]:
    log = work / "deepprofiler.log"
    command = [str(dp_python), str(REPO / "scripts/deepprofiler/run_reference.py"), "--inputs", str(index.parent),
               "--checkpoint", str(checkpoint), "--out", str(work / "dp"), "--extra-sites", ""]
    result = measured(command, {"TF_CPP_MIN_LOG_LEVEL": "2"}, log)
    text = log.read_text(errors="replace")
    if result["exit_code"] != 0:
        raise RuntimeError(f"DeepProfiler failed: {text[-2000:]}")
    inner = re.search(r"deepprofiler \S+ \d+x\d+: (\d+) sites in ([0-9.]+)s", text)
    profile_log = "\n".join(p.read_text(errors="replace") for p in (work / "dp").rglob("profile.log"))
    per_image = [(int(n), float(s)) for n, s in re.findall(r"\((\d+) cells\) : ([0-9.]+) secs", profile_log)]
    cells = sum(n for n, _ in per_image)
    result.update(
        cells=cells,
        deepprofiler_process_s=float(inner.group(2)) if inner else None,
        crop_and_inference_s=round(sum(s for _, s in per_image), 2),
        whole_process_cells_per_s=round(cells / result["wall_s"], 1) if cells else None,
    )
    return result


def service_run(screen: Any, home: Path, workers: int, log_dir: Path) -> dict[str, Any]:
    """``cpcnn serve`` + ``workers`` x ``cpcnn worker`` on a private Redis; the plate through ``--server``."""
    redis_port, port = _free_port(), _free_port()
    redis_dir = log_dir / f"redis-{workers}"
    redis_dir.mkdir(parents=True)
    redis_server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir",
                                     str(redis_dir), "--save", ""], stdout=subprocess.DEVNULL)
    env = {"CPCNN_HOME": str(home), "CPCNN_DATA_DIR": str(home / f"data-{workers}"), "CPCNN_ENV": "dev",
           "CPCNN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    processes = []
    try:
        processes.append(_start(["serve", "--port", str(port), "--model", "bench"], env, log_dir / "serve.log"))
        threads = max(1, (os.cpu_count() or 1) // workers)
        for _ in range(workers):
            processes.append(_start(["worker", "--model", "bench", "--device", "cpu", "--threads", str(threads)],
                                    env, log_dir / f"worker-{workers}.log"))
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        time.sleep(2)  # workers load and warm the model
        workers_cpu = _cpu_seconds([p.pid for p in processes[1:]])
        out = log_dir / f"service-{workers}"
        result = cpcnn_profile(screen, out, home, log_dir / f"client-{workers}.log", "--server", url,
                               "--max-in-flight", str(2 * workers + 2))
        result["workers_cpu_s"] = round(_cpu_seconds([p.pid for p in processes[1:]]) - workers_cpu, 1)
        result["server_cpu_s"] = round(_cpu_seconds([processes[0].pid]), 1)
        result["threads_per_worker"] = threads
        return result
    finally:
        for process in reversed(processes):
            _stop(process)
        redis_server.terminate()
        redis_server.wait(timeout=10)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of running processes (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / ticks  # its own and its reaped children's (RQ job forks)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=6)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--no-deepprofiler", action="store_true")
    parser.add_argument("--no-service", action="store_true")
    args = parser.parse_args()

    from cpcnn.synth.plate import write_screen

    dp_python = None if args.no_deepprofiler else deepprofiler_python()
    with tempfile.TemporaryDirectory(prefix="cpcnn-bench-plate-") as tmp:
        work = Path(tmp)
        screen = write_screen(work / "screen", wells=args.wells, sites=args.sites, cells_per_site=args.cells,
                              size=1080, seed=0)
        home = work / "home"
        checkpoint = reference_checkpoint(work, dp_python)
        build_model(home, checkpoint, None)  # imported into home/models as "bench"
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version(), "load_average": os.getloadavg()},
            "workload": f"{args.wells * args.sites} fields 1080x1080x5 uint16 (cpcnn synth plate), "
                        f"~{args.cells} cells each",
        }
        results["cpcnn_profile"] = cpcnn_profile(screen, work / "out", home, work / "cpcnn.log")
        with open(screen.load_data, newline="") as handle:
            wells = sorted({row["Metadata_Well"] for row in csv.DictReader(handle)})
        half = ",".join(f"*/{w}/*" for w in wells[: max(1, len(wells) // 2)])
        results["cpcnn_profile_half_plate"] = cpcnn_profile(screen, work / "out-half", home, work / "half.log",
                                                            "--sites", half)
        if dp_python is not None and checkpoint is not None:
            index = deepprofiler_inputs(screen, work / "dp-inputs")
            results["deepprofiler"] = deepprofiler_profile(dp_python, index, checkpoint, work)
            results["speedup_whole_process"] = round(
                results["deepprofiler"]["wall_s"] / results["cpcnn_profile"]["wall_s"], 2)
        else:
            results["deepprofiler"] = "not run (no .venv-deepprofiler: scripts/deepprofiler/setup_env.sh)"
        if not args.no_service:
            results["service"] = {f"{n}_worker{'s' if n > 1 else ''}": service_run(screen, home, n, work / "svc")
                                  for n in (1, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
