"""Prometheus metrics: request counts in the API, histograms from the workers.

Workers may run in other processes or machines, so each keeps cumulative ``WorkerStats`` and publishes
a snapshot with its heartbeat (a few hundred bytes per heartbeat, nothing per job). The API sums the
snapshots of live workers at scrape time; a worker that goes away takes its counts with it, which
Prometheus treats like a counter reset.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

HISTOGRAMS: dict[str, tuple[tuple[float, ...], str]] = {
    "queue_wait_seconds": (
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        "time a job waited in the queue before a worker started it",
    ),
    "inference_seconds": (
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        "time of one ONNX Runtime call",
    ),
    "batch_size": ((1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), "cells per ONNX Runtime call"),
    "job_seconds": (
        (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        "time from a worker starting a job to its result being written",
    ),
}
COUNTERS: dict[str, str] = {
    "cells_embedded": "cells whose features were computed",
    "jobs_succeeded": "jobs finished with a result",
    "jobs_failed": "jobs finished with an error",
}


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class WorkerStats:
    """Cumulative, thread-safe counters and histograms of one worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hist = {name: _Histogram(bounds) for name, (bounds, _) in HISTOGRAMS.items()}
        self._counters = dict.fromkeys(COUNTERS, 0.0)

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self._hist[name].observe(value)

    def inc(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counters[name] += amount

    def snapshot(self) -> dict[str, Any]:
        """JSON-able copy: ``{"hist": {name: {"counts": [...], "sum": s}}, "counters": {...}}``."""
        with self._lock:
            return {
                "hist": {n: {"counts": list(h.counts), "sum": h.total} for n, h in self._hist.items()},
                "counters": dict(self._counters),
            }


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum worker snapshots; unknown names or bucket layouts from other versions are skipped."""
    merged = WorkerStats().snapshot()
    for snap in snapshots:
        for name, hist in snap.get("hist", {}).items():
            target = merged["hist"].get(name)
            if target is None or len(hist.get("counts", [])) != len(target["counts"]):
                continue
            target["counts"] = [a + b for a, b in zip(target["counts"], hist["counts"], strict=True)]
            target["sum"] += float(hist.get("sum", 0.0))
        for name, value in snap.get("counters", {}).items():
            if name in merged["counters"]:
                merged["counters"][name] += float(value)
    return merged


@dataclass(frozen=True)
class QueueSnapshot:
    """What the queue backend reports at scrape time."""

    depth: int | None
    workers: int
    stats: dict[str, Any]


class _QueueCollector(Collector):
    def __init__(self, probe: Callable[[], QueueSnapshot]) -> None:
        self._probe = probe

    def collect(self) -> Iterator[Metric]:
        snap = self._probe()
        up = GaugeMetricFamily("cpcnn_queue_up", "1 when the queue backend answered this scrape")
        up.add_metric([], 0.0 if snap.depth is None else 1.0)
        yield up
        depth = GaugeMetricFamily("cpcnn_queue_depth", "jobs waiting for a worker")
        depth.add_metric([], float(snap.depth or 0))
        yield depth
        workers = GaugeMetricFamily("cpcnn_workers", "live workers with a model loaded")
        workers.add_metric([], float(snap.workers))
        yield workers
        for name, (bounds, doc) in HISTOGRAMS.items():
            hist = snap.stats["hist"][name]
            running, buckets = 0, []
            for bound, count in zip((*bounds, float("inf")), hist["counts"], strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
            family = HistogramMetricFamily(f"cpcnn_{name}", doc)
            family.add_metric([], buckets, hist["sum"])
            yield family
        for name, doc in COUNTERS.items():
            counter = CounterMetricFamily(f"cpcnn_{name}", doc)
            counter.add_metric([], snap.stats["counters"][name])
            yield counter


class ApiMetrics:
    """One registry per app (tests build many apps; the global registry would collide)."""

    def __init__(self, probe: Callable[[], QueueSnapshot]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cpcnn_http_requests", "HTTP requests by method, route and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.registry.register(_QueueCollector(probe))

    def render(self) -> bytes:
        return generate_latest(self.registry)
