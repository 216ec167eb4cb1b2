"""A running cpcnn service as the plate pipeline's embedder: sites go through the jobs API (SDK).

Each site is decoded here (illumination applied here too), uploaded as float32 planes with its exact
centres, and embedded by whichever worker takes the job, so any number of workers share one plate
and the cells are the same numbers local mode computes. ``max_in_flight`` sites are in the service
at once; results come back in site order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cpcnn._types import F32Array, F64Array, Normalization
from cpcnn.manifest import ModelManifest

if TYPE_CHECKING:
    from cpcnn.client import Client

Key = TypeVar("Key")


class ServiceEmbedder:
    """``embed_sites`` of :class:`cpcnn.embedding.Embedder`, run by the service at ``client.url``."""

    def __init__(self, client: Client, model: str, *, max_in_flight: int = 4) -> None:
        self.client = client
        self.model = model
        public = client.model(model)
        self.manifest = ModelManifest.model_validate(public.model_dump())
        self.max_in_flight = max(1, max_in_flight)

    def embed_sites(
        self,
        sites: Iterable[tuple[Key, Callable[[], tuple[F32Array, F64Array]]]],
        *,
        normalization: Normalization | None = None,
    ) -> Iterator[tuple[Key, F32Array]]:
        """(key, loader) stream -> (key, features) stream in order, ``max_in_flight`` sites at a time."""
        pending: deque[tuple[Key, Future[F32Array]]] = deque()
        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="cpcnn-upload") as pool:
            try:
                for key, loader in sites:
                    pending.append((key, pool.submit(self._embed, loader, normalization)))
                    while len(pending) > self.max_in_flight:
                        key_done, future = pending.popleft()
                        yield key_done, future.result()
                while pending:
                    key_done, future = pending.popleft()
                    yield key_done, future.result()
            finally:
                for _, future in pending:
                    future.cancel()

    def _embed(self, loader: Callable[[], tuple[F32Array, F64Array]], normalization: str | None) -> F32Array:
        image, centers = loader()
        if len(centers) == 0:  # nothing to embed (or a site the loader already reported as skipped)
            return np.zeros((0, self.manifest.feature_size), np.float32)
        planes: dict[str, Any] = {c: image[:, :, i] for i, c in enumerate(self.manifest.channels)}
        job = self.client.submit(planes, centers, model=self.model, normalization=normalization)
        if not job.status.finished:
            job = self.client.wait(job.id)
        else:
            self.client.check_finished(job)
        features: F32Array = np.asarray(self.client.result(job.id, format="numpy"), np.float32)
        self.client.delete(job.id)
        return features
