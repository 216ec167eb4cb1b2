"""Run a stored ONNX model over single-cell crops with ONNX Runtime.

One session per model, shared by a few worker threads ("streams"). On the CPU each stream runs the
session single-threaded on its own batch, one stream per core: each stream also crops its own batch,
so no core idles while another crops, and there is no intra-op straggler when the OS preempts a
thread (a 2-thread session with a separate crop thread reached ~75% of its model-only speed end to
end; independent streams reach ~85%). On a GPU the session uses the device and two streams let one
crop while the other runs. ONNX Runtime is imported lazily so that ``import cpcnn`` stays light.
Cropping, chunking and the reused crop buffers are :mod:`cpcnn.batching`'s (re-exported here).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np

from cpcnn._types import F32Array, F64Array, Normalization
from cpcnn.batching import CROP_CHUNK as CROP_CHUNK  # re-exported: the crop loop lives in cpcnn.batching
from cpcnn.batching import SiteCrops as SiteCrops
from cpcnn.batching import crop_buffer as crop_buffer
from cpcnn.batching import release_crop_buffer as release_crop_buffer
from cpcnn.errors import CpcnnError, InputError
from cpcnn.manifest import ModelManifest
from cpcnn.model_store import StoredModel
from cpcnn.onnx_graph import GRAPH_REVISION, graph_revision, upgraded_model

logger = logging.getLogger(__name__)

Key = TypeVar("Key")
#: Loads one field of view when called: (H, W, C) float32 image and (N, 2) float64 centres.
SiteLoader = Callable[[], tuple[F32Array, F64Array]]

#: Cells per ONNX Runtime call; measured fastest on CPU (bench/embed.py), GPUs like bigger batches.
DEFAULT_CPU_BATCH = 16
DEFAULT_GPU_BATCH = 256
#: What ``batch_size="auto"`` tries, on the CPU (False) and on a GPU (True).
BATCH_CANDIDATES = {False: (8, 16, 32, 64), True: (64, 128, 256, 512)}
#: Sites decoded ahead of the one being embedded (bounds memory to a few images).
SITES_AHEAD = 2


def physical_cores() -> int:
    """Cores this process may use (affinity-aware): one CPU stream each."""
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
        """``threads``: parallel inference streams (default: one per core on the CPU, 2 on a GPU).
        ``batch_size``: cells per ONNX Runtime call; None = the device default, "auto" = measure
        :data:`BATCH_CANDIDATES` now (a second or two) and keep the fastest."""
        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"unknown device {device!r}; expected auto, cpu or cuda")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
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
        options.intra_op_num_threads = 1  # parallelism comes from concurrent streams (module doc)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = open_session(model, options, providers)
        active = self._session.get_providers()[0]
        on_gpu = active == "CUDAExecutionProvider"
        if providers[0] == "CUDAExecutionProvider" and not on_gpu:
            logger.warning(
                "CUDA provider failed to load (driver/CUDA/cuDNN?); running %s on the CPU", self.manifest.name
            )
        elif device == "auto" and not on_gpu:
            logger.info("no CUDA provider in this ONNX Runtime; running %s on the CPU", self.manifest.name)
        self._input = self._session.get_inputs()[0].name
        streams = threads or (2 if on_gpu else physical_cores())
        self._pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="cpcnn-embed")
        default = DEFAULT_GPU_BATCH if on_gpu else DEFAULT_CPU_BATCH
        self.info = RuntimeInfo(
            provider=active,
            threads=streams,
            batch_size=default if batch_size in (None, "auto") else int(batch_size),  # type: ignore[arg-type]
        )
        if batch_size == "auto":
            self.info = replace(self.info, batch_size=self.fastest_batch_size(BATCH_CANDIDATES[on_gpu]))
        elif self.info.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.info.batch_size}")

    @property
    def feature_size(self) -> int:
        return self.manifest.feature_size

    def close(self) -> None:
        """Stop the stream threads (they also end with the process)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def fastest_batch_size(self, candidates: Sequence[int], *, repeats: int = 3) -> int:
        """Time each batch size on zero crops, all streams busy (best of ``repeats``); most cells/s wins."""
        rates = {}
        for size in candidates:
            self.info = replace(self.info, batch_size=size)
            crops = self._zeros(size * self.info.threads * 2)
            self.embed_crops(crops)
            best = min(_timed(self.embed_crops, crops) for _ in range(repeats))
            rates[size] = len(crops) / best
        fastest = max(rates, key=lambda size: rates[size])
        logger.info(
            "batch size %d is fastest on %s (cells/s by size: %s)",
            fastest,
            self.info.provider,
            {size: round(rate) for size, rate in rates.items()},
        )
        return fastest

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Run each batch shape on every stream so the first real request pays no allocation."""
        for size in batch_sizes or (self.info.batch_size,):
            list(self._pool.map(self._run, [self._zeros(size)] * self.info.threads))

    def embed_crops(self, crops: F32Array) -> F32Array:
        """(N, B, B, C) float32 normalized crops -> (N, D) float32 features, batches run in parallel."""
        side, n_channels = self.manifest.crop_size, len(self.manifest.channels)
        if crops.ndim != 4 or crops.shape[1:] != (side, side, n_channels):
            raise InputError(f"crops must be (N, {side}, {side}, {n_channels}), got {crops.shape}")
        step = self._step(len(crops))
        batches = [
            np.ascontiguousarray(crops[s : s + step], dtype=np.float32) for s in range(0, len(crops), step)
        ]
        out = np.empty((crops.shape[0], self.feature_size), np.float32)
        for index, features in enumerate(self._pool.map(self._run, batches)):
            out[index * step : index * step + len(features)] = features
        return out

    def site_crops(
        self, image: F32Array, centers: F64Array, *, normalization: Normalization | None = None
    ) -> SiteCrops:
        """(H, W, C) image + (N, 2) centres, checked as a whole for this model -> crops made chunk by
        chunk, normalized as this model expects them (see :class:`cpcnn.batching.SiteCrops`)."""
        self._check_channels(image)
        return SiteCrops.check(
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
    ) -> Iterator[tuple[Key, F32Array]]:
        """(key, loader) stream -> (key, features) stream, in order; a loader returns (image, centres).

        Each site is one load task (decode, validate) and one task per inference batch (crop into the
        stream's reused buffer, run the model); streams take tasks in order, up to
        :data:`SITES_AHEAD` sites ahead, so decoding, cropping and inference overlap across cores.
        """
        method = normalization or self.manifest.normalization
        pending: deque[tuple[Key, Future[list[Future[F32Array]]]]] = deque()
        try:
            for key, loader in sites:
                pending.append((key, self._pool.submit(self._plan, loader, method)))
                while len(pending) > SITES_AHEAD:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:
            for _, planned in pending:
                if not planned.cancel() and planned.done() and planned.exception() is None:
                    for batch in planned.result():
                        batch.cancel()

    def _plan(self, loader: SiteLoader, method: Normalization) -> list[Future[F32Array]]:
        """Load and check one site, then queue one crop-and-embed task per inference batch."""
        image, centers = loader()
        site = self.site_crops(image, centers, normalization=method)
        return [self._pool.submit(self._embed_batch, site, rows) for rows in site.slices(self._step(len(site)))]

    def _collect(self, key: Key, planned: Future[list[Future[F32Array]]]) -> tuple[Key, F32Array]:
        batches = [batch.result() for batch in planned.result()]
        return key, np.concatenate(batches) if batches else np.zeros((0, self.feature_size), np.float32)

    def _embed_batch(self, site: SiteCrops, rows: slice) -> F32Array:
        """Crop ``rows`` into this stream's reused buffer (no page faults), then run the model."""
        return self._run(site.crop(rows))

    def _step(self, n_cells: int) -> int:
        """Batch size for ``n_cells``: at most batch_size, with a batch count that is a multiple of the
        streams, so every stream works equally long (41 cells on 2 streams: 4 x 11, not 16 + 16 + 9)."""
        streams = self.info.threads
        n_batches = -(-n_cells // self.info.batch_size)
        n_batches = -(-n_batches // streams) * streams
        return max(1, -(-n_cells // n_batches)) if n_batches else 1

    def _run(self, batch: F32Array) -> F32Array:
        result: F32Array = self._session.run(None, {self._input: batch})[0]
        return result

    def _zeros(self, n: int) -> F32Array:
        side = self.manifest.crop_size
        return np.zeros((n, side, side, len(self.manifest.channels)), np.float32)

    def _check_channels(self, image: F32Array) -> None:
        if image.ndim != 3 or image.shape[2] != len(self.manifest.channels):
            raise InputError(
                f"model {self.manifest.name} expects {len(self.manifest.channels)} channels "
                f"({', '.join(self.manifest.channels)}), image has shape {image.shape}"
            )

def open_session(model: StoredModel, options: Any, providers: list[str]) -> Any:
    """ONNX Runtime session for ``model``. An export older than :data:`GRAPH_REVISION` loses accuracy in
    ONNX Runtime's fast layout (:mod:`cpcnn.onnx_graph`): it is upgraded in memory, or, without the
    ``onnx`` package, run without that layout (as accurate, ~2.7x slower); either way a warning says
    how to re-import it once."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.onnx_path), sess_options=options, providers=providers)
    if graph_revision(session.get_modelmeta().custom_metadata_map) >= GRAPH_REVISION:
        return session
    name = model.manifest.name
    fix = f"cpcnn models import {model.manifest.source or 'WEIGHTS_FILE'} --name {name} --overwrite"
    try:
        upgraded = upgraded_model(model.onnx_path)
    except Exception as exc:  # onnx missing, or a graph the rewrite does not understand
        logger.warning(
            "model %s may be an older cpcnn export, whose pooling loses accuracy in ONNX Runtime's fast "
            "layout, and cannot be checked here (%s): running it without that layout (same accuracy, about "
            "2.7x slower). Re-import it once to get both: %s",
            name, exc, fix,
        )
        return ort.InferenceSession(
            str(model.onnx_path), sess_options=options, providers=providers, disabled_optimizers=["NchwcTransformer"]
        )
    if upgraded is None:  # nothing to split: not an older cpcnn export
        return session
    logger.warning(
        "model %s was exported by an older cpcnn whose pooling loses accuracy in ONNX Runtime's fast layout; "
        "upgraded in memory. Re-import it once to skip this: %s",
        name, fix,
    )
    return ort.InferenceSession(upgraded, sess_options=options, providers=providers)


def _timed(function: Callable[[F32Array], object], argument: F32Array) -> float:
    started = time.perf_counter()
    function(argument)
    return time.perf_counter() - started
