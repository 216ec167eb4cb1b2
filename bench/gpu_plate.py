"""Whole-plate embedding throughput on one GPU: decode, crop on the GPU, EfficientNet-B0 to block6a.

Runs from a copy of the repository without installing it. Needs numpy and torch; tifffile is optional
(without it sites are stored and decoded as raw ``.npy``); pandas, pyarrow, onnxruntime are not used.
It puts the repository first on ``sys.path`` and maps ``cpcnn.training`` onto ``training/``, so
``cpcnn.crops``, ``cpcnn.synth`` and ``training/net.py`` import with numpy and torch alone.

1. Generates a plate with the synthetic screen generator (``cpcnn.synth``; sites in parallel processes).
2. For each precision mode, fp32 (TF32 off, for fidelity), fp16 autocast and bf16 autocast, runs the
   whole plate: a thread pool decodes the next sites while the device works on the current one; each
   site goes host -> pinned buffer -> device (non-blocking), is cropped on the device with exactly the
   sampling of ``cpcnn.crops.crop_cells`` (DeepProfiler's crop_and_resize boxes and bilinear arithmetic,
   zero outside, per-crop per-channel min-max), and embedded by the torch EfficientNet-B0 of
   ``training/net.py`` up to ``block6a_activation`` (672-d, spatial mean). Random weights (batch-norm
   statistics calibrated on the plate's crops so activations have realistic scale) unless
   ``--checkpoint`` names a cpcnn torch checkpoint (.pt) or a Keras CNN-1 file (.h5, needs h5py).
3. Reports cells/s per mode, the time split (decode in threads, decode not hidden, transfer, crop,
   network; device stages timed with CUDA events), the projected time for a 450,000-cell plate, the
   fp16/bf16 feature error against fp32 and the device crops' largest difference from ``cpcnn.crops``.

Prints one JSON object and writes it to ``$OUT/gpu_plate.json`` when OUT is set.

    python bench/gpu_plate.py [--sites 24] [--size 1080] [--cells-per-site 300] [--checkpoint PATH]
    python bench/gpu_plate.py --device cpu --sites 2 --size 256 --cells-per-site 8     # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cpcnn._types import CHANNELS, CROP_SIZE  # noqa: E402
from cpcnn.crops import MINMAX_EPSILON, crop_cells  # noqa: E402
from cpcnn.synth.plate import conditions_for_plate, site_rng  # noqa: E402
from cpcnn.synth.render import render_site  # noqa: E402
from cpcnn.synth.treatments import design_layout  # noqa: E402

#: Cells of the plate the projection is for (a JUMP plate: 384 wells x 9 sites x ~130 cells).
PROJECTED_CELLS = 450_000
MODES = ("fp32", "fp16", "bf16")
FEATURE_SIZE = 672


def training_module(name: str) -> Any:
    """``cpcnn.training.<name>`` from this repository's ``training/`` folder, installed or not."""
    if "cpcnn.training" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "cpcnn.training", REPO / "training" / "__init__.py", submodule_search_locations=[str(REPO / "training")]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["cpcnn.training"] = package
        spec.loader.exec_module(package)
        sys.modules["cpcnn"].training = package  # type: ignore[attr-defined]
    return importlib.import_module(f"cpcnn.training.{name}")


# --- the plate --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteFiles:
    name: str
    paths: tuple[Path, ...]  # one file per channel, CHANNELS order
    centers: np.ndarray  # (N, 2) float64, x = column


def _has_tifffile() -> bool:
    return importlib.util.find_spec("tifffile") is not None


def site_placement(index: int) -> tuple[int, int]:
    """Site ``index`` of the plate -> (well index, 1-based site): wells first, then further sites."""
    return index % 384, index // 384 + 1


@lru_cache(maxsize=2)
def _conditions(seed: int, size: int) -> Any:
    return conditions_for_plate(seed, 0, size)


def _render_to_disk(task: tuple[Path, int, int, int, int, int, str]) -> tuple[str, tuple[Path, ...], np.ndarray]:
    """One site rendered by the synthetic generator and written as TIFF (or .npy) files."""
    folder, index, n_sites, size, cells, seed, fmt = task
    well_index, site = site_placement(index)
    layout = design_layout(min(n_sites, 384), seed)
    well, treatment = layout.wells[well_index]
    images, centers = render_site(
        site_rng(seed, 0, well_index, site), treatment.phenotype, _conditions(seed, size), size=size, n_cells=cells
    )
    paths = []
    for ch in CHANNELS:
        path = folder / f"{well}_s{site}_{ch}.{fmt}"
        if fmt == "tiff":
            import tifffile

            tifffile.imwrite(path, images[ch], photometric="minisblack")
        else:
            np.save(path, images[ch])
        paths.append(path)
    return f"{well}_s{site}", tuple(paths), centers


def generate_plate(folder: Path, *, sites: int, size: int, cells: int, seed: int, workers: int) -> list[SiteFiles]:
    """``sites`` synthetic sites under ``folder`` (one plate; wells A01... then further sites per well)."""
    folder.mkdir(parents=True, exist_ok=True)
    fmt = "tiff" if _has_tifffile() else "npy"
    tasks = [(folder, i, sites, size, cells, seed, fmt) for i in range(sites)]
    if workers > 1 and sites > 1:
        # Before any CUDA call, so forking is safe; each process renders whole sites.
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            done = list(pool.map(_render_to_disk, tasks))
    else:
        done = [_render_to_disk(task) for task in tasks]
    return [SiteFiles(name, paths, centers) for name, paths, centers in done]


def decode_site(site: SiteFiles) -> tuple[np.ndarray, float]:
    """(C, H, W) uint16 planes of one site and the seconds decoding took (run in a decode thread)."""
    started = time.perf_counter()
    planes = []
    for path in site.paths:
        if path.suffix == ".npy":
            planes.append(np.load(path))
        else:
            import tifffile

            planes.append(tifffile.imread(path))
    return np.stack(planes), time.perf_counter() - started


# --- crops on the device, DeepProfiler's sampling as cpcnn.crops --------------------------------------


@dataclass(frozen=True)
class AxisSamplesTorch:
    floor: torch.Tensor  # (N, B) int64
    weight: torch.Tensor  # (N, B) float32
    valid: torch.Tensor  # (N, B) bool


def axis_samples_torch(centers: torch.Tensor, size_px: int, crop_size: int = CROP_SIZE) -> AxisSamplesTorch:
    """(N,) float64 centres -> sample positions, the float32 operations of ``cpcnn.crops.axis_samples``.

    Each operation is its own kernel (no fused multiply-add), so results are bit-identical to numpy's.
    """
    half = crop_size / 2
    size32 = torch.tensor(size_px, dtype=torch.float32, device=centers.device)
    last = torch.tensor(size_px - 1, dtype=torch.float32, device=centers.device)
    lo = (centers - half).to(torch.float32) / size32
    hi = (centers + half).to(torch.float32) / size32
    scale = (hi - lo) * last / torch.tensor(crop_size - 1, dtype=torch.float32, device=centers.device)
    steps = torch.arange(crop_size, dtype=torch.float32, device=centers.device)
    positions = lo[:, None] * last + steps[None, :] * scale[:, None]
    valid = (positions >= 0) & (positions <= last)
    floor = torch.floor(positions)
    return AxisSamplesTorch(floor.to(torch.int64), positions - floor, valid)


def crop_cells_torch(
    image: torch.Tensor, centers: torch.Tensor, *, crop_size: int = CROP_SIZE, normalize: bool = True
) -> torch.Tensor:
    """image (H, W, C) float32 + centers (N, 2) float64 (x, y), same device -> (N, B, B, C) float32.

    ``cpcnn.crops.crop_cells`` on the device: columns interpolated first, then rows, samples outside
    the image zero, then DeepProfiler's min-max per crop and channel (0 for a flat channel).
    Boxes entirely outside the image are not checked here (the generator never makes them).
    """
    height, width, _ = image.shape
    ys = axis_samples_torch(centers[:, 1], height, crop_size)
    xs = axis_samples_torch(centers[:, 0], width, crop_size)

    def pixels(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # (N, B) row and column indices -> (N, B, B, C) pixels, 0 where an index leaves the image.
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        values = image[rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]]
        return values * inside[..., None]

    wx = xs.weight[:, None, :, None]
    top_left, top_right = pixels(ys.floor, xs.floor), pixels(ys.floor, xs.floor + 1)
    top = top_left + (top_right - top_left) * wx
    del top_left, top_right
    bottom_left, bottom_right = pixels(ys.floor + 1, xs.floor), pixels(ys.floor + 1, xs.floor + 1)
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    del bottom_left, bottom_right
    crops = top + (bottom - top) * ys.weight[:, :, None, None]
    crops *= (ys.valid[:, :, None] & xs.valid[:, None, :])[..., None]
    if not normalize:
        return crops
    low = crops.amin(dim=(1, 2), keepdim=True)
    high = crops.amax(dim=(1, 2), keepdim=True)
    denominator = high - (low - torch.tensor(float(MINMAX_EPSILON), dtype=torch.float32, device=crops.device))
    shifted = crops - low
    return torch.where(denominator > 0, shifted / denominator, torch.zeros((), device=crops.device))


# --- the network ------------------------------------------------------------------------------------


def build_network(checkpoint: Path | None) -> tuple[torch.nn.Module, str]:
    """EfficientNet-B0 (training/net.py) in eval mode on the CPU, and a description of its weights."""
    if checkpoint is None:
        torch.manual_seed(0)
        return training_module("net").EfficientNetB0(in_chans=len(CHANNELS), num_classes=0).eval(), "random"
    if checkpoint.suffix in (".h5", ".hdf5"):
        net = training_module("keras_h5").load_keras_h5(checkpoint, in_chans=len(CHANNELS))
    else:
        net = training_module("checkpoint").load_checkpoint(checkpoint).build()
    return net.eval(), str(checkpoint)


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Set every batch norm's running statistics to those of ``batches`` (random weights only).

    Untrained running statistics (mean 0, variance 1) let activations grow block after block; with
    statistics of real crops the scale of every layer is what a trained network sees, so the fp16 and
    bf16 errors measured are meaningful.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    net.train()
    for batch in batches:
        net.embed(batch)
    net.eval()


def embed(net: torch.nn.Module, crops: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, B, B, C) float32 crops -> (N, 672) float32 features under the mode's precision."""
    x = crops.permute(0, 3, 1, 2)  # NCHW view with channels-last strides, no copy
    if mode == "fp32":
        return net.embed(x)
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    with torch.autocast(device_type=crops.device.type, dtype=dtype):
        return net.embed(x).float()


# --- one pass over the plate -----------------------------------------------------------------------


@dataclass
class Upload:
    """Host -> device copies through a ring of pinned buffers, each reused only after its copy is done."""

    device: torch.device
    shape: tuple[int, ...]
    slots: int = 3
    _buffers: list[torch.Tensor] = field(default_factory=list)
    _events: list[Any] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        if self.device.type == "cuda":
            self._buffers = [torch.empty(self.shape, dtype=torch.int16, pin_memory=True) for _ in range(self.slots)]
            self._events = [None] * self.slots

    def __call__(self, planes: np.ndarray) -> torch.Tensor:
        """(C, H, W) uint16 -> (H, W, C) float32 on the device."""
        if self.device.type != "cuda":
            raw = torch.from_numpy(planes.view(np.int16))
        else:
            slot = self._next
            self._next = (slot + 1) % self.slots
            if self._events[slot] is not None:
                self._events[slot].synchronize()
            self._buffers[slot].numpy()[...] = planes.view(np.int16)
            raw = self._buffers[slot].to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._events[slot] = event
        # int16 on the wire (torch has few uint16 kernels); & 0xFFFF restores the unsigned value.
        values = (raw.to(torch.int32) & 0xFFFF).to(torch.float32)
        return values.permute(1, 2, 0).contiguous()


class StageClock:
    """Seconds per stage: CUDA events on a GPU (read once at the end), wall clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, list[tuple[Any, Any]]] = {}
        self.seconds: dict[str, float] = {}

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)

    def total(self, name: str) -> float:
        if self.cuda:
            return sum(start.elapsed_time(end) for start, end in self.marks.get(name, [])) / 1000
        return self.seconds.get(name, 0.0)


class _Stage:
    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        if self.clock.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        if self.clock.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.clock.marks.setdefault(self.name, []).append((self.start, end))
        else:
            seconds = time.perf_counter() - self.started
            self.clock.seconds[self.name] = self.clock.seconds.get(self.name, 0.0) + seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_plate(
    sites: Sequence[SiteFiles], net: torch.nn.Module, mode: str, device: torch.device, *,
    threads: int, prefetch: int, sites_per_batch: int = 1,
) -> tuple[dict[str, float], torch.Tensor]:
    """Decode (threads, ``prefetch`` sites ahead) -> upload -> crop -> embed (``sites_per_batch`` sites per
    network call) every site; timings and features in site order."""
    first = decode_site(sites[0])[0]
    upload = Upload(device, first.shape)
    clock = StageClock(device)
    features, batch, decode_seconds, waited = [], [], 0.0, 0.0
    synchronize(device)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[tuple[np.ndarray, float]]] = deque(
            pool.submit(decode_site, site) for site in sites[:prefetch]
        )
        for index, site in enumerate(sites):
            before = time.perf_counter()
            planes, seconds = pending.popleft().result()
            waited += time.perf_counter() - before
            decode_seconds += seconds
            if index + prefetch < len(sites):
                pending.append(pool.submit(decode_site, sites[index + prefetch]))
            with clock.stage("transfer"):
                image = upload(planes)
                centers = torch.from_numpy(site.centers).to(device, non_blocking=True)
            with clock.stage("crop"):
                crops = crop_cells_torch(image, centers)
            batch.append(crops)
            if len(batch) == sites_per_batch or index == len(sites) - 1:
                with clock.stage("network"):
                    features.append(embed(net, batch[0] if len(batch) == 1 else torch.cat(batch), mode))
                batch = []
    synchronize(device)
    wall = time.perf_counter() - started
    cells = sum(len(site.centers) for site in sites)
    timing = {
        "cells": cells,
        "wall_s": round(wall, 4),
        "cells_per_s": round(cells / wall, 1),
        "decode_s": round(decode_seconds, 4),  # in the decode threads, overlapped with device work
        "decode_wait_s": round(waited, 4),  # main thread waiting for a decoded site: decode not hidden
        "transfer_s": round(clock.total("transfer"), 4),
        "crop_s": round(clock.total("crop"), 4),
        "network_s": round(clock.total("network"), 4),
        "network_only_cells_per_s": round(cells / max(clock.total("network"), 1e-9), 1),
        "projected_450k_cells_s": round(PROJECTED_CELLS * wall / cells, 1),
    }
    return timing, torch.cat(features).cpu()


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=24)
    parser.add_argument("--size", type=int, default=1080)
    parser.add_argument("--cells-per-site", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--modes", help="comma-separated subset of fp32,fp16,bf16 (default: all on a GPU, fp32 on the CPU, where "
        "fp16/bf16 convolutions fall back to kernels ~50x slower than fp32)",
    )
    parser.add_argument("--checkpoint", type=Path, help="cpcnn checkpoint (.pt) or Keras CNN-1 (.h5); default random")
    parser.add_argument("--threads", type=int, default=8, help="decode threads")
    parser.add_argument("--prefetch", type=int, default=6, help="sites decoded ahead")
    parser.add_argument("--sites-per-batch", type=int, default=1, help="sites' cells per network call")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating the plate")
    parser.add_argument("--work-dir", type=Path, help="where to write the plate (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated plate")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device (use --device cpu)")
    default = ",".join(MODES) if args.device.startswith("cuda") else "fp32"
    args.modes = args.modes or default
    modes = tuple(m for m in args.modes.split(",") if m)
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes must be a subset of {','.join(MODES)}, got {args.modes!r}")
    for name in ("sites", "size", "cells_per_site", "threads", "prefetch", "workers", "sites_per_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.modes = ("fp32", *(m for m in modes if m != "fp32"))  # fp32 first: the reference for errors
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_plate_"))
    try:
        started = time.perf_counter()
        sites = generate_plate(work / "images", sites=args.sites, size=args.size, cells=args.cells_per_site,
                               seed=args.seed, workers=args.workers)
        generate_s = time.perf_counter() - started
        report = measure(sites, args, device)
        report["plate"].update(generate_s=round(generate_s, 2), folder=str(work) if args.keep else None)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "gpu_plate.json").write_text(text + "\n")
    return report


def measure(sites: Sequence[SiteFiles], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    net, weights = build_network(args.checkpoint)
    first_planes = decode_site(sites[0])[0]
    image = np.ascontiguousarray(first_planes.transpose(1, 2, 0), dtype=np.float32)
    reference_crops = crop_cells(image, sites[0].centers)
    if weights == "random":
        calibration = [torch.from_numpy(reference_crops).permute(0, 3, 1, 2)]
        calibrate_batchnorm(net, calibration)
        weights = "random (seed 0), batch-norm statistics calibrated on one site's crops"
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    with torch.no_grad():
        device_crops = crop_cells_torch(
            Upload(device, first_planes.shape)(first_planes), torch.from_numpy(sites[0].centers).to(device)
        )
    crop_difference = float(np.abs(device_crops.cpu().numpy() - reference_crops).max())
    modes: dict[str, dict[str, Any]] = {}
    reference: torch.Tensor | None = None
    for mode in args.modes:
        # Warm-up on the first site (cuDNN autotuning, allocator) outside the timed pass.
        with torch.no_grad():
            embed(net, torch.cat([device_crops] * args.sites_per_batch), mode)
        synchronize(device)
        with torch.no_grad():
            timing, features = run_plate(sites, net, mode, device, threads=args.threads, prefetch=args.prefetch,
                                         sites_per_batch=args.sites_per_batch)
        if reference is None:
            reference = features
        error = (features - reference).abs()
        scale = reference.abs().max().clamp_min(1e-12)
        timing.update(
            max_abs_error=float(error.max()),
            max_rel_error=float(error.max() / scale),  # relative to the largest fp32 feature
            finite=bool(torch.isfinite(features).all()),
        )
        modes[mode] = timing
    assert reference is not None and reference.shape[1] == FEATURE_SIZE
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32": False,
        "weights": weights,
        "plate": {
            "sites": len(sites), "size": args.size, "cells_per_site": args.cells_per_site,
            "cells": sum(len(s.centers) for s in sites), "format": sites[0].paths[0].suffix.lstrip("."),
            "bytes_per_site": sum(p.stat().st_size for p in sites[0].paths),
        },
        "feature_size": int(reference.shape[1]),
        "crop_check": {"max_abs_diff_vs_cpcnn_crops": crop_difference, "cells": len(sites[0].centers)},
        "settings": {"decode_threads": args.threads, "prefetch": args.prefetch, "sites_per_batch": args.sites_per_batch,
                     "cells_per_batch": args.sites_per_batch * args.cells_per_site},
        "peak_device_memory_mb": (
            round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
        ),
        "modes": modes,
    }


if __name__ == "__main__":
    main()
