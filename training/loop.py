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

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cpcnn.training.augment import augment_batch
from cpcnn.training.checkpoint import load_checkpoint, save_checkpoint
from cpcnn.training.config import TrainConfig, write_config
from cpcnn.training.data import TrainingData
from cpcnn.training.net import EfficientNetB0
from cpcnn.training.stem import load_imagenet
from torch import nn

from cpcnn._types import I64Array
from cpcnn.errors import ConflictError, InputError

logger = logging.getLogger(__name__)

LAST = "last.pt"
METRICS = "metrics.jsonl"
STATE_FORMAT = "cpcnn-train-state/1"


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


def step_seed(seed: int, step: int) -> int:
    """Seed of one step's random numbers, independent of how the run was split into invocations."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


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
    net: EfficientNetB0, data: TrainingData, cells: I64Array, *, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``cells`` without augmentation, in eval mode (NaN if none)."""
    if cells.size == 0:
        return math.nan, math.nan
    was_training = net.training
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, cells.size, batch_size):
            batch = cells[start : start + batch_size]
            device = next(net.parameters()).device
            targets = torch.from_numpy(data.labels[batch]).to(device)
            logits = net(data.cache.batch(batch).to(device))
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(dim=1) == targets).sum())
    net.train(was_training)
    return loss_sum / cells.size, correct / cells.size


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
) -> RunResult:
    """Train (or resume) until ``config.epochs`` epochs or ``max_steps`` steps in total; see module doc.

    ``device``: "cpu", "cuda" (or "cuda:N"), or "auto" (CUDA when torch sees a GPU). Crops are read and
    augmented on the CPU, then moved; checkpoints are always written with CPU tensors.
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
        return _run(
            data, config, out, resume=resume, max_steps=max_steps, log_every=log_every, device=pick_device(device)
        )
    finally:
        torch.set_num_threads(before_threads)


def pick_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; an explicit CUDA request without a GPU is an error."""
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
) -> RunResult:
    if resume is not None:
        net, optimizer_state, progress = _resume(Path(resume), data, config)
    else:
        net, optimizer_state, progress = initial_network(len(data.classes), config).train(), None, Progress()
    net = net.to(device)
    logger.info("training on %s", device)
    optimizer = make_optimizer(net, config)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group, decay in zip(optimizer.param_groups, (2 * config.l2, 0.0), strict=True):
            group.update(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay)
    write_config(config, out)
    (out / "classes.json").write_text(json.dumps(list(data.classes), indent=1) + "\n")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    metrics: list[dict[str, Any]] = []
    last = out / LAST
    step = progress.step
    for epoch in range(progress.epoch, config.epochs):
        cells = data.epoch_cells(epoch, seed=config.seed)
        n_batches = math.ceil(cells.size / config.batch_size)
        first = progress.epoch_step if epoch == progress.epoch else 0
        if max_steps is not None and step >= max_steps:
            break
        loss_sum, correct, seen, busy = 0.0, 0, 0, 0.0
        done = first
        for index in range(first, n_batches):
            if max_steps is not None and step >= max_steps:
                break
            batch = cells[index * config.batch_size : (index + 1) * config.batch_size]
            started = time.perf_counter()
            loss, hits = _step(net, optimizer, criterion, data, batch, config=config, step=step)
            busy += time.perf_counter() - started
            step, done = step + 1, index + 1
            loss_sum, correct, seen = loss_sum + loss * batch.size, correct + hits, seen + batch.size
            if log_every and step % log_every == 0:
                logger.info(
                    "epoch %d/%d batch %d/%d step %d: loss %.4f accuracy %.3f (%.1f crops/s)",
                    epoch + 1,
                    config.epochs,
                    done,
                    n_batches,
                    step,
                    loss_sum / seen,
                    correct / seen,
                    seen / busy,
                )
        complete = done == n_batches
        progress = (
            Progress(epoch=epoch + 1, epoch_step=0, step=step) if complete else Progress(epoch, done, step)
        )
        row = _finish_epoch(net, optimizer, data, config, out, progress, complete=complete)
        row.update(
            train_loss=loss_sum / seen if seen else None,
            train_accuracy=correct / seen if seen else None,
            train_crops=seen,
            crops_per_s=round(seen / busy, 2) if busy else None,
        )
        with (out / METRICS).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        metrics.append(row)
        if not complete:
            break
    return RunResult(progress=progress, checkpoint=last if last.exists() else None, metrics=metrics)


def _step(
    net: EfficientNetB0,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: TrainingData,
    batch: I64Array,
    *,
    config: TrainConfig,
    step: int,
) -> tuple[float, int]:
    """One SGD step on ``batch`` -> (mean loss, correct predictions); randomness seeded by the step."""
    device = next(net.parameters()).device
    crops = data.cache.batch(batch)
    targets = torch.from_numpy(data.labels[batch]).to(device)
    seed = step_seed(config.seed, step)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # drop-connect draws from the global generator
        if config.augment:
            crops = augment_batch(crops, generator=torch.Generator().manual_seed(seed))
        logits = net(crops.to(device, non_blocking=True))
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach()), int((logits.detach().argmax(dim=1) == targets).sum())


def _finish_epoch(
    net: EfficientNetB0,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    config: TrainConfig,
    out: Path,
    progress: Progress,
    *,
    complete: bool,
) -> dict[str, Any]:
    """Validate, write the epoch checkpoint (when complete), ``last.pt`` and its optimizer state."""
    started = time.perf_counter()
    val_loss, val_accuracy = evaluate(net, data, data.val, batch_size=config.batch_size)
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
        "val_accuracy": None if math.isnan(val_accuracy) else val_accuracy,
        "val_cells": int(data.val.size),
        "checkpoint": written,
    }
