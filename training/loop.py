"""Weakly supervised training of CNN-1: classify each cell's treatment; the embedding is a by-product.

One call of :func:`train` runs epochs until ``config.epochs`` (or ``max_steps`` optimizer steps in
total) and leaves in ``out``: ``checkpoint_{epoch:04d}.pt`` after every epoch, ``last.pt`` (also written
when ``max_steps`` stops mid-epoch), ``last.state.pt`` (optimizer momentum, for an exact resume),
``metrics.jsonl`` (one line per epoch or stop), ``config.json`` and ``classes.json``. Checkpoints are
cpcnn checkpoints, so ``cpcnn models import out/last.pt`` turns any of them into an ONNX model.

Determinism: the epoch's cell draw is a function of (seed, epoch) and every step's augmentation and
drop-connect noise of (seed, step), so a run stopped and resumed from ``last.pt`` reproduces the
uninterrupted run on the same machine and thread count.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from cpcnn.training.checkpoint import load_checkpoint, save_checkpoint
from cpcnn.training.config import TrainConfig, write_config
from cpcnn.training.curves import plot_curves
from cpcnn.training.data import TrainingData
from cpcnn.training.loader import (
    CellBatches,
    Schedule,
    TrainBatches,
    default_workers,
    device_batch,
    make_loader,
    step_seed,
)
from cpcnn.training.net import EfficientNetB0
from cpcnn.training.runfile import copy_run_file
from cpcnn.training.scores import scores
from cpcnn.training.sources import write_class_table
from cpcnn.training.stem import load_imagenet
from torch import nn
from tqdm import tqdm

from cpcnn._types import I64Array
from cpcnn.errors import ConflictError, InputError

logger = logging.getLogger(__name__)

LAST = "last.pt"
METRICS = "metrics.jsonl"
STATE_FORMAT = "cpcnn-train-state/1"
SKIPPED_CSV = "skipped_sites.csv"
Precision = Literal["auto", "fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Progress:
    """Where training stands: epochs completed, steps into the next one, optimizer steps in total."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0


@dataclass(frozen=True)
class RunResult:
    """What one call of :func:`train` did."""

    progress: Progress
    checkpoint: Path | None  # last.pt, or None when there was nothing to do and none existed
    metrics: list[dict[str, Any]]


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_{epoch:04d}.pt"


def state_path(checkpoint: Path) -> Path:
    """Optimizer state beside a checkpoint: ``last.pt`` -> ``last.state.pt``."""
    return checkpoint.with_name(f"{checkpoint.stem}.state.pt")


def initial_network(num_classes: int, config: TrainConfig) -> EfficientNetB0:
    """Random init from ``config.seed`` (Keras initializers), then ImageNet backbone weights if configured."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = EfficientNetB0(in_chans=len(config.channels), num_classes=num_classes)
    if config.imagenet_weights:
        load_imagenet(net, Path(config.imagenet_weights), rescale=config.stem_rescale)
    else:
        logger.info("no ImageNet weights given: every layer starts from random init (seed %d)", config.seed)
    return net


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD as Keras runs it: Keras' Nesterov update equals torch's at a constant learning rate, and
    ``l2(c)`` on a kernel is weight decay ``2c`` on that kernel only (dense and non-depthwise convs)."""
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            is_kernel = name == "weight" and (
                isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
            )
            (decayed if is_kernel else plain).append(param)
    groups = [{"params": decayed, "weight_decay": 2 * config.l2}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def evaluate(
    net: EfficientNetB0,
    data: TrainingData,
    cells: I64Array,
    *,
    batch_size: int,
    workers: int = 0,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    on_device: bool = False,
) -> tuple[float, npt.NDArray[np.int64]]:
    """Mean cross-entropy and confusion matrix of ``cells`` without augmentation, in eval mode."""
    n_classes = len(data.classes)
    if cells.size == 0:
        return math.nan, np.zeros((n_classes, n_classes), np.int64)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    matrix = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=device)
    loader = make_loader(
        CellBatches(data, cells, batch_size=batch_size, stored=on_device),
        None,
        workers=workers,
        pin=device.type == "cuda",
    )
    with torch.no_grad():
        for crops, targets in loader:
            if on_device:
                crops = device_batch(crops, device, scale=data.cache.scale, generator=None)
            crops, targets = _to_device(crops, targets, device, channels_last=channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = net(crops)
            loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").double()
            matrix += torch.bincount(targets * n_classes + logits.argmax(dim=1), minlength=n_classes**2)
    net.train(was_training)
    return float(loss_sum) / cells.size, matrix.cpu().numpy().reshape(n_classes, n_classes)


def _to_device(
    crops: torch.Tensor, targets: torch.Tensor, device: torch.device, *, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    crops = crops.to(device, non_blocking=True)
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    return crops, targets.to(device, non_blocking=True)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """ "auto": bf16 on a GPU that has it, else fp16 on CUDA; fp32 (None: no autocast) on the CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def train(
    data: TrainingData,
    config: TrainConfig,
    out: Path,
    *,
    resume: Path | None = None,
    max_steps: int | None = None,
    threads: int | None = None,
    log_every: int = 50,
    device: str = "auto",
    precision: Precision = "auto",
    channels_last: bool | None = None,
    workers: int | None = None,
    progress_bar: bool = False,
    device_augment: bool | None = None,
    run_file: Path | None = None,
) -> RunResult:
    """Train (or resume) until ``config.epochs`` epochs or ``max_steps`` steps in total; see module doc.

    ``device``: "cpu", "cuda" (or "cuda:N"), or "auto" (CUDA when torch sees a GPU). Crops are read and
    augmented on the CPU (in ``workers`` processes; default: several on CUDA, none on the CPU), then
    moved; checkpoints are always written with CPU tensors. ``precision`` "auto" trains in mixed
    precision on CUDA and in fp32 on the CPU; ``channels_last`` (default: on CUDA) changes memory layout
    only. ``progress_bar`` draws a tqdm bar on stderr. ``device_augment`` (default: on CUDA) has the
    workers ship 8-bit crops and converts and augments them on the device. ``run_file`` (the TOML/YAML
    the run was described by) is copied into ``out`` once the run is known not to clash with another.
    """
    out = Path(out)
    if resume is None and (out / LAST).exists():
        raise ConflictError(
            f"{out} already holds a run; resume it with --resume {out / LAST} or pick another --out"
        )
    before_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        target = pick_device(device)
        speed = Speed(
            amp=autocast_dtype(precision, target),
            channels_last=target.type == "cuda" if channels_last is None else channels_last,
            workers=default_workers(target) if workers is None else workers,
            progress_bar=progress_bar,
            on_device=target.type == "cuda" if device_augment is None else device_augment,
        )
        if run_file is not None:
            copy_run_file(run_file, out)
        return _run(
            data,
            config,
            out,
            resume=resume,
            max_steps=max_steps,
            log_every=log_every,
            device=target,
            speed=speed,
        )
    finally:
        torch.set_num_threads(before_threads)


@dataclass(frozen=True)
class Speed:
    """How a run computes fast without changing what it computes (beyond mixed-precision rounding)."""

    amp: torch.dtype | None = None
    channels_last: bool = False
    workers: int = 0
    progress_bar: bool = False
    #: Workers ship the stored 8-bit crops; conversion and augmentation run on the device (CUDA).
    on_device: bool = False


def pick_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; an explicit CUDA request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: torch sees no CUDA device")
    return torch.device(device)


def _resume(
    path: Path, data: TrainingData, config: TrainConfig
) -> tuple[EfficientNetB0, dict[str, Any] | None, Progress]:
    checkpoint = load_checkpoint(path)
    saved = checkpoint.config
    if tuple(saved.get("classes", ())) != data.classes:
        raise InputError(f"{path.name} was trained on other classes than this index's {config.label} column")
    if tuple(checkpoint.channels) != tuple(config.channels):
        raise InputError(f"{path.name} expects channels {', '.join(checkpoint.channels)}")
    progress = Progress(**saved.get("progress", {}))
    state = None
    if state_path(path).is_file():
        payload = torch.load(state_path(path), map_location="cpu", weights_only=True)
        if payload.get("format") == STATE_FORMAT and payload.get("step") == progress.step:
            state = payload["optimizer"]
    if state is None:
        logger.warning(
            "no optimizer state for %s at step %d: momentum restarts from zero", path.name, progress.step
        )
    logger.info("resuming %s at epoch %d, step %d", path, progress.epoch + 1, progress.step)
    return checkpoint.build().train(), state, progress


def _run(
    data: TrainingData,
    config: TrainConfig,
    out: Path,
    *,
    resume: Path | None,
    max_steps: int | None,
    log_every: int,
    device: torch.device,
    speed: Speed,
) -> RunResult:
    if resume is not None:
        net, optimizer_state, progress = _resume(Path(resume), data, config)
    else:
        net, optimizer_state, progress = initial_network(len(data.classes), config).train(), None, Progress()
    net = net.to(device)
    if speed.channels_last:
        net = net.to(memory_format=torch.channels_last)
    logger.info(
        "training on %s (%s, %s, %d loader workers)",
        device,
        "fp32" if speed.amp is None else f"autocast {str(speed.amp).removeprefix('torch.')}",
        "channels_last" if speed.channels_last else "contiguous",
        speed.workers,
    )
    optimizer = make_optimizer(net, config)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group, decay in zip(optimizer.param_groups, (2 * config.l2, 0.0), strict=True):
            group.update(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay)
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp == torch.float16)
    write_config(config, out)
    _write_run_tables(data, out)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    metrics: list[dict[str, Any]] = []
    last = out / LAST
    step = progress.step
    n_classes = len(data.classes)
    schedule = Schedule()
    batches = TrainBatches(
        data, batch_size=config.batch_size, seed=config.seed, augment=config.augment, stored=speed.on_device
    )
    loader = make_loader(batches, schedule, workers=speed.workers, pin=device.type == "cuda")
    for epoch in range(progress.epoch, config.epochs):
        n_batches = math.ceil(batches.cells(epoch).size / config.batch_size)
        first = progress.epoch_step if epoch == progress.epoch else 0
        if max_steps is not None and step >= max_steps:
            break
        last_index = n_batches if max_steps is None else min(n_batches, first + max_steps - step)
        schedule.keys = [(epoch, i, step + i - first) for i in range(first, last_index)]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        matrix = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=device)
        seen, busy, done = 0, 0.0, first
        bar = tqdm(
            total=n_batches,
            initial=first,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not speed.progress_bar,
            leave=False,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        for crops, targets in loader:
            if speed.on_device:
                generator = (
                    torch.Generator().manual_seed(step_seed(config.seed, step)) if config.augment else None
                )
                crops = device_batch(crops, device, scale=data.cache.scale, generator=generator)
            crops, targets = _to_device(crops, targets, device, channels_last=speed.channels_last)
            loss, predictions = _step(
                net, optimizer, scaler, criterion, crops, targets, seed=config.seed, step=step, amp=speed.amp
            )
            step, done = step + 1, done + 1
            loss_sum += loss.double() * targets.numel()
            matrix += torch.bincount(targets * n_classes + predictions, minlength=n_classes**2)
            seen += int(targets.numel())
            busy = time.perf_counter() - started
            bar.update(1)
            if speed.progress_bar and (step % 10 == 0 or done in (first + 1, last_index)):
                bar.set_postfix_str(f"loss {float(loss):.3f}, {seen / busy:.0f} crops/s", refresh=False)
            if log_every and step % log_every == 0:
                logger.info(
                    "epoch %d/%d batch %d/%d step %d: loss %.4f (%.1f crops/s)",
                    epoch + 1,
                    config.epochs,
                    done,
                    n_batches,
                    step,
                    float(loss_sum) / seen,
                    seen / busy,
                )
        bar.close()
        complete = done == n_batches
        progress = (
            Progress(epoch=epoch + 1, epoch_step=0, step=step) if complete else Progress(epoch, done, step)
        )
        row = _finish_epoch(net, optimizer, data, config, out, progress, complete=complete, speed=speed)
        train_scores = scores(matrix.cpu().numpy().reshape(n_classes, n_classes), data.classes)
        row.update(
            train_loss=float(loss_sum) / seen if seen else None,
            train_accuracy=train_scores["accuracy"],
            train_macro_f1=train_scores["macro_f1"],
            train_per_class=train_scores["per_class"],
            train_crops=seen,
            crops_per_s=round(seen / busy, 2) if busy else None,
        )
        with (out / METRICS).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        metrics.append(row)
        if not complete:
            break
    if metrics and (out / METRICS).is_file():
        plot_curves(out / METRICS, out)
    return RunResult(progress=progress, checkpoint=last if last.exists() else None, metrics=metrics)


def _write_run_tables(data: TrainingData, out: Path) -> None:
    """classes.json (head order), classes.csv (every class found) and the sites left out, if any."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(list(data.classes), indent=1) + "\n")
    if data.table:
        write_class_table(data.table, out)
    if data.skipped:
        with (out / SKIPPED_CSV).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "reason"])
            writer.writerows([s.source, s.plate, s.well, s.site, reason] for s, reason in data.skipped)


def _step(
    net: EfficientNetB0,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    crops: torch.Tensor,
    targets: torch.Tensor,
    *,
    seed: int,
    step: int,
    amp: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step -> (mean loss, predicted classes), on the device, not synchronized.

    Drop-connect noise is seeded by the step (the crops were augmented with the same step's seed).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(seed, step))  # drop-connect draws from the global generator
        with torch.autocast(crops.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = net(crops)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach().argmax(dim=1)


def _finish_epoch(
    net: EfficientNetB0,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    config: TrainConfig,
    out: Path,
    progress: Progress,
    *,
    complete: bool,
    speed: Speed,
) -> dict[str, Any]:
    """Validate, write the epoch checkpoint (when complete), ``last.pt`` and its optimizer state."""
    started = time.perf_counter()
    val_loss, val_matrix = evaluate(
        net,
        data,
        data.val,
        batch_size=config.batch_size,
        workers=speed.workers,
        amp=speed.amp,
        channels_last=speed.channels_last,
        on_device=speed.on_device,
    )
    val_scores = scores(val_matrix, data.classes)
    val_accuracy = math.nan if val_scores["accuracy"] is None else val_scores["accuracy"]
    extra = {
        "train": config.model_dump(mode="json"),
        "classes": list(data.classes),
        "progress": asdict(progress),
        "cells": {"train": int(data.train.size), "val": int(data.val.size)},
    }
    tmp = out / f".{LAST}.tmp"
    save_checkpoint(tmp, net, channels=config.channels, normalization=config.normalization, config=extra)
    state_tmp = out / ".last.state.tmp"
    torch.save(
        {"format": STATE_FORMAT, "step": progress.step, "optimizer": optimizer.state_dict()}, state_tmp
    )
    written = LAST
    if complete:
        written = checkpoint_name(progress.epoch)
        (out / written).write_bytes(tmp.read_bytes())
    tmp.replace(out / LAST)
    state_tmp.replace(state_path(out / LAST))
    logger.info(
        "epoch %d%s: validation loss %.4f accuracy %.3f on %d cells; wrote %s (%.1f s)",
        progress.epoch if complete else progress.epoch + 1,
        "" if complete else " (stopped early)",
        val_loss,
        val_accuracy,
        data.val.size,
        written,
        time.perf_counter() - started,
    )
    return {
        "epoch": progress.epoch if complete else progress.epoch + 1,
        "complete": complete,
        "step": progress.step,
        "val_loss": None if math.isnan(val_loss) else val_loss,
        "val_accuracy": val_scores["accuracy"],
        "val_macro_f1": val_scores["macro_f1"],
        "val_per_class": val_scores["per_class"],
        "val_cells": int(data.val.size),
        "checkpoint": written,
    }
