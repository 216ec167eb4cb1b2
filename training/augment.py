"""The paper's training augmentations, vectorized over a batch and driven by one torch.Generator.

Per crop, in this order: with probability 0.5 a random square crop of 80-100% of the side, resized
back bilinearly (half-pixel centres, like TensorFlow's ``resize``); a horizontal flip with probability
0.5; a rotation by a random multiple of 90 degrees; then per channel a brightness shift in [-0.1, 0.1]
and a contrast factor in [0.8, 1.2] around the channel's mean (``tf.image.adjust_contrast``). Values
are not clipped. Every random number is drawn from ``generator`` in a fixed order whose count depends
only on the batch shape, so a seed reproduces a batch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of each augmentation; zero probability or a degenerate range switches one off."""

    crop_p: float = 0.5
    crop_min: float = 0.8  # smallest crop side, as a fraction of the input side
    flip_p: float = 0.5
    rotate90: bool = True
    brightness: float = 0.1  # shift drawn from [-brightness, brightness]
    contrast: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        if not (0 <= self.crop_p <= 1 and 0 <= self.flip_p <= 1):
            raise ValueError("probabilities must lie in [0, 1]")
        if not 0 < self.crop_min <= 1:
            raise ValueError(f"crop_min must lie in (0, 1], got {self.crop_min}")
        if self.brightness < 0 or not 0 <= self.contrast[0] <= self.contrast[1]:
            raise ValueError("brightness must be >= 0 and contrast a range (low, high) with 0 <= low <= high")


#: The paper's settings.
PAPER = Augmentation()


def augment_batch(
    crops: torch.Tensor, *, generator: torch.Generator, spec: Augmentation = PAPER
) -> torch.Tensor:
    """(N, C, S, S) float32 crops -> a new (N, C, S, S) float32 tensor, each crop augmented independently."""
    if crops.ndim != 4 or crops.shape[-1] != crops.shape[-2]:
        raise ValueError(f"expected square crops (N, C, S, S), got shape {tuple(crops.shape)}")
    return _augment(crops.detach().float().contiguous(), 1.0, generator=generator, spec=spec)


def augment_stored(
    stored: np.ndarray, *, scale: float, generator: torch.Generator, spec: Augmentation = PAPER
) -> torch.Tensor:
    """Cached (N, S, S, C) crops (uint8 or float16, value = stored x ``scale``) -> augmented (N, C, S, S)
    float32: ``augment_batch`` of the converted crops (the same random draws), but turned while still
    8-bit and converted, scaled and shifted in one pass."""
    if stored.ndim != 4 or stored.shape[1] != stored.shape[2]:
        raise ValueError(f"expected square crops (N, S, S, C), got shape {stored.shape}")
    planes = torch.from_numpy(np.ascontiguousarray(stored.transpose(0, 3, 1, 2)))
    return _augment(planes, scale, generator=generator, spec=spec)


def _draws(
    n: int, channels: int, generator: torch.Generator, spec: Augmentation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every random number a batch's augmentation uses, drawn first and in one order on the CPU, so the
    stream does not depend on which branches run and the CPU and device paths augment alike:
    (do_crop, crop_frac, crop_pos, do_flip, turns, shift, factor)."""
    do_crop = torch.rand(n, generator=generator) < spec.crop_p
    crop_frac = torch.rand(n, generator=generator)
    crop_pos = torch.rand(n, 2, generator=generator)
    do_flip = torch.rand(n, generator=generator) < spec.flip_p
    turns = torch.randint(0, 4, (n,), generator=generator)
    shift = (torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * spec.brightness
    low, high = spec.contrast
    factor = low + torch.rand(n, channels, 1, 1, generator=generator) * (high - low)
    return do_crop, crop_frac, crop_pos, do_flip, turns, shift, factor


def augment_on_device(
    planes: torch.Tensor, *, scale: float, generator: torch.Generator, spec: Augmentation = PAPER
) -> torch.Tensor:
    """(N, C, S, S) stored crops of any dtype on any device (value = stored x ``scale``) -> augmented
    float32 on that device, vectorized over the batch: the GPU path, so loader workers only ship 8-bit
    crops. The random numbers are drawn on the CPU from ``generator`` exactly as :func:`augment_batch`
    draws them, so both give the same batch up to float rounding."""
    n, channels, side, _ = planes.shape
    do_crop, crop_frac, crop_pos, do_flip, turns, shift, factor = _draws(n, channels, generator, spec)

    device = planes.device
    out = planes.float() * scale
    if do_crop.any():
        index = torch.nonzero(do_crop).squeeze(1)
        min_side = max(1, int(round(spec.crop_min * side)))
        sides = min_side + torch.floor(crop_frac[index] * (side - min_side + 1)).clamp(max=side - min_side)
        offsets = torch.floor(crop_pos[index] * (side - sides + 1)[:, None]).clamp(min=0)
        offsets = torch.minimum(offsets, (side - sides)[:, None])
        on_device = index.to(device)
        out[on_device] = resized_crops(out[on_device], offsets, sides)
    flips = do_flip.to(device)
    out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    if spec.rotate90:
        turned = out
        for k in (1, 2, 3):
            mask = (turns == k).to(device)
            turned = torch.where(mask[:, None, None, None], torch.rot90(out, k, dims=(-2, -1)), turned)
        out = turned
    shift, factor = shift.to(device), factor.to(device)
    mean = out.mean(dim=(-2, -1), keepdim=True)
    return torch.addcmul(mean + shift - mean * factor, out, factor)


def _augment(batch: torch.Tensor, scale: float, *, generator: torch.Generator, spec: Augmentation) -> torch.Tensor:
    """Contiguous (N, C, S, S) crops of any dtype, value = stored x ``scale`` -> augmented float32."""
    n, channels, side, _ = batch.shape
    do_crop, crop_frac, crop_pos, do_flip, turns, shift, factor = _draws(n, channels, generator, spec)

    zoomed: dict[int, torch.Tensor] = {}
    if do_crop.any():
        cropped = torch.nonzero(do_crop).squeeze(1)
        min_side = max(1, int(round(spec.crop_min * side)))
        # Integer crop sides in [min_side, side] and integer offsets, as a pixel-grid crop would have.
        sides = min_side + torch.floor(crop_frac[cropped] * (side - min_side + 1)).clamp(max=side - min_side)
        offsets = torch.floor(crop_pos[cropped] * (side - sides + 1)[:, None]).clamp(min=0)
        offsets = torch.minimum(offsets, (side - sides)[:, None])
        picked = batch[cropped].float()
        if scale != 1.0:
            picked *= scale
        zoomed = dict(zip(cropped.tolist(), resized_crops(picked, offsets, sides), strict=True))
    flat = batch.numpy().reshape(n, channels, side * side)
    sums = flat.sum(axis=2, dtype=np.float64 if batch.is_floating_point() else np.uint32)  # exact for 8 bit
    means = torch.from_numpy((sums * (scale / (side * side))).astype(np.float32))[..., None, None]
    out = torch.empty((n, channels, side, side), dtype=torch.float32)
    flips, quarter_turns = do_flip.tolist(), turns.tolist() if spec.rotate90 else [0] * n
    turned = {batch.dtype: torch.empty_like(batch[0]), torch.float32: torch.empty_like(out[0])}
    for i in range(n):
        if i in zoomed:
            crop, crop_scale = zoomed[i], 1.0
            mean = crop.mean(dim=(1, 2), keepdim=True)
        else:
            crop, crop_scale, mean = batch[i], scale, means[i]
        if flips[i] or quarter_turns[i]:
            # One strided copy: numpy views may have negative strides (torch.flip and torch.rot90 copy).
            view = crop.numpy()[..., ::-1] if flips[i] else crop.numpy()
            target = turned[crop.dtype]
            target.numpy()[...] = np.rot90(view, quarter_turns[i], axes=(-2, -1))
            crop = target
        # Brightness then contrast around the shifted mean, (x + s - m') f + m' with m' = m + s, as
        # x f + (m + s - m f): one multiply-add from the stored values into the batch (x = stored x scale).
        torch.addcmul(mean + shift[i] - mean * factor[i], crop, factor[i] * crop_scale, out=out[i])
    return out


def resized_crops(crops: torch.Tensor, offsets: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) + top-left (N, 2) (x, y) + side (N,) in whole pixels -> each square resized back to S x S.

    Output pixel j samples input ``offset + (j + 0.5) * side / S - 0.5`` bilinearly, clamped to the crop
    (half-pixel centres and edge clamping: ``F.interpolate(align_corners=False)`` on the cut-out square,
    like TensorFlow 2's ``tf.image.resize`` after ``tf.image.random_crop``). One interpolate per crop:
    separable, so faster on the CPU than a batched ``grid_sample`` with the same result.
    """
    size = crops.shape[-1]
    out = torch.empty_like(crops)
    for i, ((x, y), side) in enumerate(zip(offsets.long().tolist(), sides.long().tolist(), strict=True)):
        square = crops[i : i + 1, :, y : y + side, x : x + side]
        out[i : i + 1] = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)
    return out
