"""Benchmarks of the profiles workflow; prints one JSON object.

- match: library 100,000 x 672, 1,000 queries, top-10 (target < 1 s), in memory and memory-mapped
- sphering fit: 20,000 x 672 controls (target < 2 s)
- aggregation: 1,000,000 cells x 672 written to Parquet in chunks, then median per site and mean per
  well streamed in a child process whose wall time and peak RSS are measured (target < 30 s, < 2 GB)

Usage: python bench/profiles.py [--cells 1000000] [--skip-aggregate] [--partitioned] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cpcnn.profiles import Library, fit_sphering, normalize_rows
from cpcnn.profiles.tables import ROW_GROUP_ROWS

D = 672
NAMES = [f"efficientnet_{i}" for i in range(D)]


def best_of(fn: Callable[[], Any], repeats: int = 5) -> tuple[float, list[float]]:
    """Minimum and all wall times of ``repeats`` calls (other load on a shared machine inflates single runs)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def bench_match(rng: np.random.Generator, workdir: Path) -> dict[str, Any]:
    n, q = 100_000, 1_000
    library = Library(
        ids=np.array([f"T{i}" for i in range(n)], dtype=object),
        annotations=pd.DataFrame({"Metadata_moa": rng.choice(["a", "b", "c"], n)}),
        features=normalize_rows(rng.standard_normal((n, D), dtype=np.float32)),
        feature_names=NAMES,
        id_column="Metadata_id",
    )
    queries = pd.DataFrame(rng.standard_normal((q, D), dtype=np.float32), columns=NAMES)
    queries.insert(0, "Metadata_id", [f"T{i}" for i in range(q)])
    raw = queries[NAMES].to_numpy()
    search_s, search_all = best_of(lambda: library.search(raw, k=10))
    match_s, _ = best_of(lambda: library.match(queries, k=10))
    loo_s, _ = best_of(lambda: library.match(queries, k=10, leave_one_out=True))
    mapped = Library.load(library.save(workdir / "library"))
    mapped.search(raw, k=10)  # first touch pages the file in
    mmap_s, _ = best_of(lambda: mapped.match(queries, k=10))
    return {
        "library": [n, D],
        "queries": q,
        "k": 10,
        "search_s": round(search_s, 3),
        "search_runs_s": [round(t, 3) for t in search_all],
        "match_table_s": round(match_s, 3),
        "match_leave_one_out_s": round(loo_s, 3),
        "match_mmap_s": round(mmap_s, 3),
        "target_s": 1.0,
    }


def bench_sphering(rng: np.random.Generator) -> dict[str, Any]:
    n = 20_000
    mix = rng.standard_normal((D, D), dtype=np.float32) / np.sqrt(D)
    table = pd.DataFrame(rng.standard_normal((n, D), dtype=np.float32) @ mix, columns=NAMES)
    table.insert(0, "Metadata_broad_sample", "DMSO")
    fit_s, runs = best_of(lambda: fit_sphering(table, controls="Metadata_broad_sample=DMSO", lam=1e-2))
    return {
        "controls": [n, D],
        "fit_s": round(fit_s, 3),
        "fit_runs_s": [round(t, 3) for t in runs],
        "target_s": 2.0,
    }


def write_cells(
    path: Path, n_cells: int, rng: np.random.Generator, chunk: int = ROW_GROUP_ROWS
) -> dict[str, Any]:
    """384 wells x 9 sites, cells written site by site, with the Parquet settings of ``write_profiles``."""
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    sites = np.repeat(np.arange(len(wells) * 9), n_cells // (len(wells) * 9) + 1)[:n_cells]
    start = time.perf_counter()
    meta = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    with pq.ParquetWriter(path, _schema(), use_dictionary=meta) as writer:
        for lo in range(0, n_cells, chunk):
            ids = sites[lo : lo + chunk]
            values = rng.standard_normal((len(ids), D), dtype=np.float32)
            columns = {
                "Metadata_Plate": pa.array(np.full(len(ids), "BENCH", dtype=object)),
                "Metadata_Well": pa.array(np.asarray(wells, dtype=object)[ids // 9]),
                "Metadata_Site": pa.array((ids % 9 + 1).astype(np.int64)),
                **{name: values[:, j] for j, name in enumerate(NAMES)},
            }
            writer.write_table(pa.table(columns, schema=_schema()))
    return {"write_s": round(time.perf_counter() - start, 1), "file_gb": round(path.stat().st_size / 1e9, 2)}


def _schema() -> pa.Schema:
    meta = [("Metadata_Plate", pa.string()), ("Metadata_Well", pa.string()), ("Metadata_Site", pa.int64())]
    return pa.schema(meta + [(name, pa.float32()) for name in NAMES])


# Peak RSS of the child's own image: VmHWM from /proc (ru_maxrss of a forked child can report the
# parent's size at fork time on Linux); ru_maxrss elsewhere.
_CHILD = """
import json, resource, sys, time
from cpcnn.profiles import cells_to_wells
start = time.perf_counter()
result = cells_to_wells(sys.argv[1], strategy=sys.argv[2], workdir=sys.argv[3])
elapsed = time.perf_counter() - start
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    peak_mb = int(hwm.split()[1]) / 1024
except OSError:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak_mb, "wells": len(result.profiles),
                  "cells": int(result.profiles["Metadata_Count_Cells"].sum()), "strategy": result.strategy}))
"""


def bench_aggregate(
    rng: np.random.Generator, workdir: Path, n_cells: int, partitioned: bool
) -> dict[str, Any]:
    path = workdir / "cells.parquet"
    out: dict[str, Any] = {"cells": [n_cells, D], **write_cells(path, n_cells, rng)}
    for strategy in ["auto", "partitioned"] if partitioned else ["auto"]:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), strategy, str(workdir)],
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        out[strategy] = {k: round(v, 1) if isinstance(v, float) else v for k, v in child.items()}
    out["target_s"], out["target_peak_rss_mb"] = 30.0, 2048
    path.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--skip-aggregate", action="store_true")
    parser.add_argument("--partitioned", action="store_true", help="also time the on-disk partitioned median")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (needs ~3 GB per 1M cells)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "pyarrow": pa.__version__,
        }
    }
    with tempfile.TemporaryDirectory(prefix="cpcnn-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if not args.skip_aggregate:
            report["aggregate"] = bench_aggregate(rng, work, args.cells, args.partitioned)
        report["match"] = bench_match(rng, work)
        report["sphering"] = bench_sphering(rng)
    report["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
