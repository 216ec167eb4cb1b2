"""The model side of a worker: ONNX Runtime sessions loaded once per process, cells batched across jobs.

Jobs run concurrently in a few threads (load, detect, crop) and hand their crops to one ``Batcher`` per
model. The batcher's thread concatenates crops from every waiting job into ONNX Runtime calls of up to
``max_batch`` cells, waiting at most ``max_wait_ms`` for more, and only while another job is still
preparing crops, so a lone request never waits for company.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from cpcnn.service.config import WorkerTuning
from cpcnn.service.prometheus import WorkerStats

from cpcnn._types import F32Array
from cpcnn.embedding import Embedder, crop_buffer
from cpcnn.errors import CpcnnError
from cpcnn.model_store import ModelStore

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    crops: F32Array
    future: Future[F32Array]


class Batcher:
    """One model, one thread calling ONNX Runtime; callers block in ``embed`` for their rows."""

    def __init__(self, embedder: Embedder, *, max_batch: int, max_wait_s: float, stats: WorkerStats) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._stats = stats
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._preparing = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"cpcnn-batcher-{embedder.manifest.name}", daemon=True)
        self._thread.start()

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Mark a job as about to submit crops, so the batcher waits for it (up to max_wait)."""
        with self._lock:
            self._preparing += 1
        try:
            yield
        finally:
            with self._lock:
                self._preparing -= 1

    def embed(self, crops: F32Array) -> F32Array:
        """(N, S, S, C) normalized crops -> (N, D) float32 features, computed with other jobs' cells."""
        if crops.shape[0] == 0:
            return np.zeros((0, self.embedder.feature_size), np.float32)
        future: Future[F32Array] = Future()
        self._requests.put(_Request(crops, future))
        return future.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            n_cells = first.crops.shape[0]
            deadline = time.monotonic() + self.max_wait_s
            while n_cells < self.max_batch:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    with self._lock:
                        others_preparing = self._preparing > 0
                    if remaining <= 0 or not others_preparing:
                        break
                    try:
                        item = self._requests.get(timeout=min(remaining, 0.005))
                    except queue.Empty:
                        continue
                if item is None:
                    self._requests.put(None)
                    break
                batch.append(item)
                n_cells += item.crops.shape[0]
            self._run_batch(batch)

    def _merge(self, parts: list[F32Array]) -> F32Array:
        """Concatenate jobs' crops into the batcher thread's reused crop buffer (fresh arrays cost page faults)."""
        n_cells = sum(part.shape[0] for part in parts)
        _, side, _, n_channels = parts[0].shape
        merged = crop_buffer(n_cells, side, n_channels, at_least=self.max_batch)
        np.concatenate(parts, out=merged)
        return merged

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            crops = batch[0].crops if len(batch) == 1 else self._merge([r.crops for r in batch])
            features = np.empty((crops.shape[0], self.embedder.feature_size), np.float32)
            for start in range(0, crops.shape[0], self.max_batch):
                chunk = crops[start : start + self.max_batch]
                began = time.perf_counter()
                features[start : start + chunk.shape[0]] = self.embedder.embed_crops(chunk)
                self._stats.observe("inference_seconds", time.perf_counter() - began)
                self._stats.observe("batch_size", chunk.shape[0])
            self._stats.inc("cells_embedded", crops.shape[0])
        except BaseException as exc:  # hand any failure to every waiting job
            for request in batch:
                request.future.set_exception(exc)
            return
        offset = 0
        for request in batch:
            size = request.crops.shape[0]
            request.future.set_result(features[offset : offset + size])
            offset += size


@dataclass(frozen=True)
class ModelInfo:
    name: str
    provider: str
    batch_size: int
    warmed: bool


class Runtime:
    """Every model this process serves, each loaded once (no fork afterwards: CUDA does not survive it)."""

    def __init__(self, store: ModelStore, tuning: WorkerTuning, stats: WorkerStats | None = None) -> None:
        self.store = store
        self.tuning = tuning
        self.stats = stats or WorkerStats()
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()

    def batcher(self, model: str) -> Batcher:
        """The model's batcher, loading and warming the model on first use."""
        with self._lock:
            found = self._batchers.get(model)
            if found is not None:
                return found
            stored = self.store.get(model)
            began = time.perf_counter()
            try:
                embedder = Embedder(
                    stored, device=self.tuning.device, threads=self.tuning.threads, batch_size=self.tuning.max_batch
                )
                max_batch = embedder.info.batch_size
                embedder.warmup(sorted({max_batch, 1}))
            except CpcnnError:
                raise
            except Exception as exc:  # onnxruntime raises its own types for a broken file
                raise CpcnnError(f"model {model} could not be loaded: {type(exc).__name__}: {exc}") from exc
            logger.info(
                "model %s loaded on %s (batch %d, %d threads) and warmed in %.2f s",
                model, embedder.info.provider, max_batch, embedder.info.threads, time.perf_counter() - began,
            )
            batcher = Batcher(embedder, max_batch=max_batch, max_wait_s=self.tuning.max_wait_ms / 1000,
                              stats=self.stats)
            self._batchers[model] = batcher
            return batcher

    def models(self) -> list[ModelInfo]:
        with self._lock:
            return [
                ModelInfo(name, b.embedder.info.provider, b.max_batch, warmed=True)
                for name, b in self._batchers.items()
            ]

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()
