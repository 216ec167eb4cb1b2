"""Training and validation batches as a torch DataLoader over the memory-mapped crop cache.

An item is a whole batch, keyed by (epoch, batch in the epoch, optimizer step): the cells come from the
epoch's balanced draw and the augmentation from the step's seed, so a batch is the same whether a worker
process or the main process makes it. On CUDA, worker processes read and augment ahead of the GPU into
pinned memory; on the CPU the main process does it in step (``workers=0``), as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from cpcnn.training.augment import augment_on_device
from cpcnn.training.data import TrainingData
from torch.utils.data import DataLoader, Dataset, Sampler

from cpcnn._types import I64Array

StepKey = tuple[int, int, int]  # epoch, batch index in the epoch, global optimizer step


def step_seed(seed: int, step: int) -> int:
    """Seed of one step's random numbers, independent of how the run was split into invocations."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class TrainBatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(epoch, index, step) -> augmented (B, C, S, S) float32 crops and their (B,) class codes.

    ``stored=True`` returns the cached (B, S, S, C) values instead (uint8: a quarter of the bytes to
    ship from a worker); the caller then converts and augments on its device (:func:`device_batch`).
    """

    def __init__(
        self, data: TrainingData, *, batch_size: int, seed: int, augment: bool, stored: bool = False
    ) -> None:
        self.data, self.batch_size, self.seed, self.augment = data, batch_size, seed, augment
        self.stored = stored
        self._epoch: tuple[int, I64Array] | None = None

    def cells(self, epoch: int) -> I64Array:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.data.epoch_cells(epoch, seed=self.seed))
        return self._epoch[1]

    def __getitem__(self, key: StepKey) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index, step = key
        batch = self.cells(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        if self.stored:
            return self.data.cache.stored(batch), torch.from_numpy(self.data.labels[batch])
        if self.augment:
            generator = torch.Generator().manual_seed(step_seed(self.seed, step))
            crops = self.data.cache.augmented(batch, generator=generator)
        else:
            crops = self.data.cache.batch(batch)
        return crops, torch.from_numpy(self.data.labels[batch])


class CellBatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Start position -> the next ``batch_size`` of ``cells`` unaugmented, with class codes."""

    def __init__(self, data: TrainingData, cells: I64Array, *, batch_size: int, stored: bool = False) -> None:
        self.data, self.cells, self.batch_size, self.stored = data, cells, batch_size, stored

    def __len__(self) -> int:
        return -(-self.cells.size // self.batch_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.cells[index * self.batch_size : (index + 1) * self.batch_size]
        crops = self.data.cache.stored(batch) if self.stored else self.data.cache.batch(batch)
        return crops, torch.from_numpy(self.data.labels[batch])


def device_batch(
    stored: torch.Tensor, device: torch.device, *, scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Cached (B, S, S, C) values -> (B, C, S, S) float32 on ``device`` (channels_last), augmented there
    when a generator is given (its draws are those :func:`augment_batch` would make on the CPU)."""
    planes = stored.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if generator is None:
        return planes.float() * scale
    return augment_on_device(planes, scale=scale, generator=generator)


class Schedule(Sampler[StepKey]):
    """The keys of the batches still to run in this epoch; reset before each epoch (workers persist)."""

    def __init__(self) -> None:
        self.keys: Sequence[StepKey] = ()

    def __iter__(self) -> Iterator[StepKey]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def default_workers(device: torch.device) -> int:
    """CPU training reads in step; on a GPU, worker processes keep it fed (one core left for the loop)."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2) - 1))


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers run side by side: one thread each


def make_loader(
    dataset: Dataset[Any], sampler: Sampler[Any] | None, *, workers: int, pin: bool
) -> DataLoader[Any]:
    """Batches come whole from the dataset (``batch_size=None``); workers persist and read ahead."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 4, "worker_init_fn": _one_thread}
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers, pin_memory=pin, **extra)
