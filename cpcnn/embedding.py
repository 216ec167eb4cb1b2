"""Run a stored ONNX model over single-cell crops with ONNX Runtime.

The session is created once and reused; ONNX Runtime (and its CUDA provider, when installed and a GPU
is visible) is imported lazily so that ``import cpcnn`` stays light.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np

from cpcnn._types import F32Array, F64Array, Normalization
from cpcnn.crops import check_boxes_overlap, crop_cells
from cpcnn.errors import CpcnnError, InputError
from cpcnn.locations import validate_centers
from cpcnn.manifest import ModelManifest
from cpcnn.store import StoredModel

logger = logging.getLogger(__name__)

Key = TypeVar("Key")
#: Loads one field of view when called: (H, W, C) float32 image and (N, 2) float64 centres.
SiteLoader = Callable[[], tuple[F32Array, F64Array]]

#: Cells per ONNX Runtime call; measured fastest on CPU (bench/embed.py), GPUs like bigger batches.
DEFAULT_CPU_BATCH = 16
DEFAULT_GPU_BATCH = 256
#: What ``batch_size="auto"`` tries, on the CPU (False) and on a GPU (True).
BATCH_CANDIDATES = {False: (8, 16, 32, 64), True: (64, 128, 256, 512)}


def _timed(function: Callable[[F32Array], object], argument: F32Array) -> float:
    started = time.perf_counter()
    function(argument)
    return time.perf_counter() - started


def physical_cores() -> int:
    """Cores this process may use (affinity-aware), which is what ORT's thread pool should match."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeInfo:
    """Which provider actually runs the model, for logs, /readyz and benchmarks."""

    provider: str
    threads: int
    batch_size: int


class Embedder:
    """One ONNX Runtime session for one model: crops in, features out."""

    def __init__(
        self,
        model: StoredModel,
        *,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int | Literal["auto"] | None = None,
    ) -> None:
        """``batch_size``: cells per ONNX Runtime call; None = the device default, "auto" = measure
        :data:`BATCH_CANDIDATES` now (a second or two) and keep the fastest."""
        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"unknown device {device!r}; expected auto, cpu or cuda")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CpcnnError(
                "embedding needs ONNX Runtime: pip install 'cpcnn[serve]' (or 'cpcnn[gpu]' on a GPU machine)"
            ) from exc
        self.manifest: ModelManifest = model.manifest
        available = ort.get_available_providers()
        providers: list[str] = []
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.append("CUDAExecutionProvider")
        elif device == "cuda":
            raise CpcnnError(f"CUDA requested but ONNX Runtime offers only {', '.join(available)}")
        providers.append("CPUExecutionProvider")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(model.onnx_path), sess_options=options, providers=providers)
        active = self._session.get_providers()[0]
        on_gpu = active == "CUDAExecutionProvider"
        if providers[0] == "CUDAExecutionProvider" and not on_gpu:
            logger.warning(
                "CUDA provider failed to load (driver/CUDA/cuDNN?); running %s on the CPU", self.manifest.name
            )
        elif device == "auto" and not on_gpu:
            logger.info("no CUDA provider in this ONNX Runtime; running %s on the CPU", self.manifest.name)
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()
        default = DEFAULT_GPU_BATCH if on_gpu else DEFAULT_CPU_BATCH
        self.info = RuntimeInfo(
            provider=active,
            threads=options.intra_op_num_threads,
            batch_size=default if batch_size in (None, "auto") else int(batch_size),  # type: ignore[arg-type]
        )
        if batch_size == "auto":
            self.info = replace(self.info, batch_size=self.fastest_batch_size(BATCH_CANDIDATES[on_gpu]))
        elif self.info.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.info.batch_size}")

    @property
    def feature_size(self) -> int:
        return self.manifest.feature_size

    def fastest_batch_size(self, candidates: Sequence[int], *, repeats: int = 3) -> int:
        """Time each batch size on zero crops (best of ``repeats``) and return the most cells/s."""
        side, n_channels = self.manifest.crop_size, len(self.manifest.channels)
        rates = {}
        for size in candidates:
            crops = np.zeros((size, side, side, n_channels), np.float32)
            self._run(crops)
            best = min(_timed(self._run, crops) for _ in range(repeats))
            rates[size] = size / best
        fastest = max(rates, key=lambda size: rates[size])
        logger.info(
            "batch size %d is fastest on %s (%s cells/s by size)",
            fastest,
            self.info.provider,
            {size: round(rate) for size, rate in rates.items()},
        )
        return fastest

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Run each batch shape once so the first real request does not pay for allocation/tuning."""
        side, n_channels = self.manifest.crop_size, len(self.manifest.channels)
        for size in batch_sizes or (self.info.batch_size,):
            self.embed_crops(np.zeros((size, side, side, n_channels), np.float32))

    def embed_crops(self, crops: F32Array) -> F32Array:
        """(N, B, B, C) float32 normalized crops -> (N, D) float32 features, in batches."""
        side, n_channels = self.manifest.crop_size, len(self.manifest.channels)
        if crops.ndim != 4 or crops.shape[1:] != (side, side, n_channels):
            raise InputError(f"crops must be (N, {side}, {side}, {n_channels}), got {crops.shape}")
        out = np.empty((crops.shape[0], self.feature_size), np.float32)
        step = self.info.batch_size
        for start in range(0, crops.shape[0], step):
            batch = np.ascontiguousarray(crops[start : start + step], dtype=np.float32)
            out[start : start + step] = self._run(batch)
        return out

    def crop(
        self, image: F32Array, centers: F64Array, *, normalization: Normalization | None = None
    ) -> F32Array:
        """(H, W, C) image + (N, 2) centres -> normalized crops as this model expects them."""
        self._check_site(image, centers)
        return crop_cells(
            image,
            centers,
            crop_size=self.manifest.crop_size,
            normalization=normalization or self.manifest.normalization,
        )

    def embed_site(
        self, image: F32Array, centers: F64Array, *, normalization: Normalization | None = None
    ) -> F32Array:
        """One field of view: (H, W, C) + (N, 2) centres -> (N, D) float32 features, rows in input order."""
        [(_, features)] = self.embed_sites([(None, lambda: (image, centers))], normalization=normalization)
        return features

    def embed_sites(
        self,
        sites: Iterable[tuple[Key, SiteLoader]],
        *,
        normalization: Normalization | None = None,
        prefetch: int = 3,
    ) -> Iterator[tuple[Key, F32Array]]:
        """(key, loader) stream -> (key, features) stream, in order; a loader returns (image, centres).

        A helper thread loads (decodes) each site and crops it one inference batch at a time into a
        few reused buffers, ``prefetch`` batches ahead, while ONNX Runtime embeds the previous batch:
        both release the GIL, so they overlap, and memory stays bounded however many cells a site has.
        """
        method = normalization or self.manifest.normalization
        side, n_channels, step = self.manifest.crop_size, len(self.manifest.channels), self.info.batch_size
        free: queue.Queue[F32Array] = queue.Queue()
        for _ in range(prefetch + 1):
            free.put(np.empty((step, side, side, n_channels), np.float32))
        ready: queue.Queue[tuple[Any, ...]] = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for key, loader in sites:
                    image, centers = loader()
                    centers = validate_centers(centers)
                    self._check_site(image, centers)
                    ready.put(("site", key, centers.shape[0]))
                    for start in range(0, centers.shape[0], step):
                        buffer = free.get()
                        if stop.is_set():
                            return
                        chunk = centers[start : start + step]
                        crop_cells(
                            image, chunk, crop_size=side, normalization=method, out=buffer[: len(chunk)]
                        )
                        ready.put(("crops", buffer, len(chunk)))
                ready.put(("end",))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                ready.put(("error", exc))

        producer = threading.Thread(target=produce, name="cpcnn-crop", daemon=True)
        producer.start()
        try:
            while True:
                item = ready.get()
                if item[0] == "end":
                    return
                if item[0] == "error":
                    raise item[1]
                _, key, n_cells = item
                features = np.empty((n_cells, self.feature_size), np.float32)
                for start in range(0, n_cells, step):
                    item = ready.get()
                    if item[0] == "error":
                        raise item[1]
                    _, buffer, count = item
                    features[start : start + count] = self._run(buffer[:count])
                    free.put(buffer)
                yield key, features
        finally:
            stop.set()
            free.put(np.empty((0, side, side, n_channels), np.float32))  # unblock a waiting producer
            producer.join()

    def _run(self, batch: F32Array) -> F32Array:
        with self._lock:
            result: F32Array = self._session.run(None, {self._input: batch})[0]
        return result

    def _check_site(self, image: F32Array, centers: F64Array) -> None:
        """Channel count and box placement for the whole site, so errors name the site's own rows."""
        if image.ndim != 3 or image.shape[2] != len(self.manifest.channels):
            raise InputError(
                f"model {self.manifest.name} expects {len(self.manifest.channels)} channels "
                f"({', '.join(self.manifest.channels)}), image has shape {image.shape}"
            )
        check_boxes_overlap(
            validate_centers(centers), image.shape[0], image.shape[1], crop_size=self.manifest.crop_size
        )
