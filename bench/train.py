"""Training throughput: the CPU data pipeline (crop cache -> augmented batch) and GPU training steps.

CPU section, on ``--cores`` cores (default 2): random uint8 crops written as a crop cache, then crops/s
of reading random batches (``read``), reading and augmenting them the way training does
(``pipeline``: ``CropCache.augmented``), converting first and augmenting the float batch
(``convert_then_augment``: ``augment_batch(CropCache.batch)``), all on one thread; then the DataLoader
with one worker per core, shipping augmented float crops (``loader_augmented``) or, as a CUDA run does,
the stored 8-bit crops that the GPU converts and augments (``loader_8bit``). GPU section (only when torch sees CUDA, else ``"gpu": null``):
optimizer steps/s and crops/s of CNN-1 (EfficientNet-B0, 5 channels, 128 px) at each batch size, fp32
vs autocast (bf16 when the GPU has it, else fp16 with a GradScaler) in channels_last, on synthetic
random crops already on the GPU. The GPU section needs only torch, numpy and this repository.

    python bench/train.py [--cells 2048] [--seconds 5] [--batch-sizes 32,256] [--no-cpu]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
try:
    import cpcnn.training  # noqa: F401  installed: the real package
except ModuleNotFoundError:  # a bare checkout: map cpcnn.training onto training/ as the wheel does
    import cpcnn

    package = types.ModuleType("cpcnn.training")
    package.__path__ = [str(REPO / "training")]
    sys.modules["cpcnn.training"] = package
    cpcnn.training = package  # type: ignore[attr-defined]

from cpcnn.training.net import EfficientNetB0  # noqa: E402

CROP = 128
CHANNELS = 5


def rate(work: Callable[[int], int], seconds: float, *, warmup: int = 2) -> float:
    """Items per second of ``work(i)`` (returns items done) over at least ``seconds``, after warm-up."""
    for i in range(warmup):
        work(-1 - i)
    done, calls, started = 0, 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        done += work(calls)
        calls += 1
    return done / (time.perf_counter() - started)


def cpu_section(cells: int, batch_sizes: list[int], seconds: float, cores: int) -> dict[str, object]:
    """Crops/s of the data pipeline: in this process on one thread, and the DataLoader on ``cores`` workers."""
    from cpcnn.training.augment import augment_batch
    from cpcnn.training.data import TrainingData
    from cpcnn.training.loader import Schedule, TrainBatches, make_loader

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    torch.set_num_threads(1)  # as in a loader worker; cores are used by worker processes
    results: dict[str, object] = {"cores": cores, "cells": cells}
    with tempfile.TemporaryDirectory(prefix="cpcnn-bench-train-") as tmp:
        cache = _random_cache(Path(tmp), cells)
        data = TrainingData(
            cache=cache,
            classes=tuple(f"c{i}" for i in range(8)),
            labels=np.arange(cells, dtype=np.int64) % 8,
            train=np.arange(cells),
            val=np.arange(0),
        )
        for batch_size in batch_sizes:
            draws = [
                np.random.default_rng([batch_size, i]).choice(cells, batch_size, replace=False)
                for i in range(64)
            ]

            def read(i: int, draws: list[np.ndarray] = draws) -> int:
                return len(cache.batch(draws[i % 64]))

            def pipeline(i: int, draws: list[np.ndarray] = draws) -> int:
                return len(cache.augmented(draws[i % 64], generator=torch.Generator().manual_seed(i)))

            def convert_then_augment(i: int, draws: list[np.ndarray] = draws) -> int:
                return len(
                    augment_batch(cache.batch(draws[i % 64]), generator=torch.Generator().manual_seed(i))
                )

            loaders = {}
            for stored in (False, True):
                schedule = Schedule()
                loader = make_loader(
                    TrainBatches(data, batch_size=batch_size, seed=0, augment=True, stored=stored),
                    schedule,
                    workers=cores,
                    pin=False,
                )
                loaders[stored] = _EpochRunner(schedule, loader, cells // batch_size)

            results[f"batch_{batch_size}"] = {
                "read_1_thread": round(rate(read, seconds)),
                "pipeline_1_thread": round(rate(pipeline, seconds)),
                "convert_then_augment_1_thread": round(rate(convert_then_augment, seconds)),
                f"loader_{cores}_workers_augmented": round(rate(loaders[False], seconds, warmup=1)),
                f"loader_{cores}_workers_8bit": round(rate(loaders[True], seconds, warmup=1)),
            }
            del loaders
    return results


class _EpochRunner:
    """One epoch through a persistent-worker loader per call -> crops delivered."""

    def __init__(self, schedule: object, loader: object, steps: int) -> None:
        self.schedule, self.loader, self.steps, self.epoch = schedule, loader, steps, 0

    def __call__(self, _: int) -> int:
        self.epoch += 1
        self.schedule.keys = [(self.epoch, i, self.epoch * self.steps + i) for i in range(self.steps)]  # type: ignore[attr-defined]
        return sum(int(targets.numel()) for _, targets in self.loader)  # type: ignore[attr-defined]


def _random_cache(folder: Path, cells: int):  # type: ignore[no-untyped-def]
    """A crop cache of random uint8 crops, as ``cpcnn train run`` leaves in ``crops/``."""
    from cpcnn.training.data import CropCache

    crops = np.lib.format.open_memmap(
        folder / "crops.npy", mode="w+", dtype=np.uint8, shape=(cells, CROP, CROP, CHANNELS)
    )
    rng = np.random.default_rng(0)
    for start in range(0, cells, 256):
        stop = min(cells, start + 256)
        crops[start:stop] = rng.integers(0, 256, (stop - start, CROP, CROP, CHANNELS), dtype=np.uint8)
    crops.flush()
    del crops
    stored = np.load(folder / "crops.npy", mmap_mode="r")
    return CropCache(stored, np.zeros(cells, np.int32), np.arange(cells, dtype=np.int32), folder)


class _Steps:
    """Optimizer steps of CNN-1 on one synthetic GPU batch, fp32 or autocast in channels_last."""

    def __init__(self, batch_size: int, *, amp: torch.dtype | None, device: str = "cuda") -> None:
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.net = EfficientNetB0(in_chans=CHANNELS, num_classes=490).to(self.device).train()
        self.crops = torch.rand(batch_size, CHANNELS, CROP, CROP, device=self.device)
        if amp is not None:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.crops = self.crops.contiguous(memory_format=torch.channels_last)
        self.targets = torch.randint(0, 490, (batch_size,), device=self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.005, momentum=0.9, nesterov=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
        self.amp = amp

    def __call__(self, _: int) -> int:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.net(self.crops)
        loss = torch.nn.functional.cross_entropy(logits.float(), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return 1


def gpu_section(batch_sizes: list[int], seconds: float) -> dict[str, object] | None:
    """Training steps on synthetic crops on the GPU, fp32 vs autocast; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    results: dict[str, object] = {
        "name": torch.cuda.get_device_name(0),
        "autocast_dtype": str(amp).removeprefix("torch."),
    }
    for batch_size in batch_sizes:
        for mode, dtype in (("fp32", None), ("amp", amp)):
            step = _Steps(batch_size, amp=dtype)
            for _ in range(5):
                step(0)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            steps, started = 0, time.perf_counter()
            while steps < 10 or time.perf_counter() - started < seconds:
                steps += step(steps)
                if steps % 10 == 0:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            per_s = steps / (time.perf_counter() - started)
            results[f"batch_{batch_size}_{mode}"] = {
                "steps_per_s": round(per_s, 2),
                "crops_per_s": round(per_s * batch_size),
                "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
            del step
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2048, help="crops in the synthetic cache")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores for the data pipeline")
    parser.add_argument("--no-cpu", action="store_true", help="only the GPU section")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "torch": torch.__version__,
        "cpu": None if args.no_cpu else cpu_section(args.cells, batch_sizes, args.seconds, args.cores),
        "gpu": gpu_section(batch_sizes, args.seconds),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
