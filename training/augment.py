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
    n, channels, side, _ = crops.shape
    # Draw everything first, so the stream of random numbers does not depend on which branches run.
    do_crop = torch.rand(n, generator=generator) < spec.crop_p
    crop_frac = torch.rand(n, generator=generator)
    crop_pos = torch.rand(n, 2, generator=generator)
    do_flip = torch.rand(n, generator=generator) < spec.flip_p
    turns = torch.randint(0, 4, (n,), generator=generator)
    shift = (torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * spec.brightness
    low, high = spec.contrast
    factor = low + torch.rand(n, channels, 1, 1, generator=generator) * (high - low)

    out = crops.clone()
    if do_crop.any():
        index = torch.nonzero(do_crop).squeeze(1)
        min_side = max(1, int(round(spec.crop_min * side)))
        # Integer crop sides in [min_side, side] and integer offsets, as a pixel-grid crop would have.
        sides = min_side + torch.floor(crop_frac[index] * (side - min_side + 1)).clamp(max=side - min_side)
        offsets = torch.floor(crop_pos[index] * (side - sides + 1)[:, None]).clamp(min=0)
        offsets = torch.minimum(offsets, (side - sides)[:, None])
        out[index] = resized_crops(out[index], offsets, sides)
    if do_flip.any():
        out[do_flip] = out[do_flip].flip(-1)
    if spec.rotate90:
        for k in (1, 2, 3):
            mask = turns == k
            if mask.any():
                out[mask] = torch.rot90(out[mask], k, dims=(-2, -1))
    out += shift.to(out.dtype)
    mean = out.mean(dim=(-2, -1), keepdim=True)
    return (out - mean) * factor.to(out.dtype) + mean


def resized_crops(crops: torch.Tensor, offsets: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) + top-left (N, 2) (x, y) + side (N,) in pixels -> each square resized back to S x S.

    Output pixel j samples input ``offset + (j + 0.5) * side / S - 0.5`` bilinearly, clamped to the crop
    (half-pixel centres and edge clamping: ``F.interpolate(align_corners=False)`` on the cut-out square,
    like TensorFlow 2's ``tf.image.resize`` after ``tf.image.random_crop``).
    """
    n, _, size, _ = crops.shape
    steps = (torch.arange(size, dtype=crops.dtype) + 0.5) / size  # (S,)
    sides = sides.to(crops.dtype)[:, None]
    low = offsets.to(crops.dtype)  # (N, 2)

    def axis(k: int) -> torch.Tensor:
        pixel = low[:, k : k + 1] + steps[None, :] * sides - 0.5
        pixel = torch.minimum(torch.maximum(pixel, low[:, k : k + 1]), low[:, k : k + 1] + sides - 1)
        return (2 * pixel + 1) / size - 1  # grid_sample's normalized coordinate (align_corners=False)

    xs, ys = axis(0), axis(1)
    grid = torch.stack((xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)), dim=-1)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)
