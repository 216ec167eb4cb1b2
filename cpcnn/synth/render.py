"""Render one five-channel Cell Painting field of view from a phenotype and a plate's conditions.

Cells: each nucleus is a soft ellipse; its cell body a soft blob around it whose radius varies with
angle (low harmonics) and whose centre is offset from the nucleus. Cells are placed by dart throwing
with a minimum distance (shrunk only when a dense site cannot be filled), so nuclei never overlap and
cell bodies overlap little. Per cell, maps are stamped into full-size planes over a window around the
cell (vectorized numpy per cell; nothing loops over pixels):

- DNA: nucleus x (1 + chromatin x granular texture); brightness varies per cell (cell cycle).
- RNA: dim cytoplasm and nucleoplasm plus 1-4 bright nucleoli inside the nucleus.
- ER: cytoplasm decaying with distance from the nuclear edge (``er_spread``) x reticular texture.
- AGP: cortex ring at the cell edge, stress fibres (parallel ridges at a per-cell angle), dim cytoplasm.
- Mito: cytoplasm decaying from the nucleus (``mito_spread``) x texture that mixes filaments (zero
  crossings of band-pass noise) and puncta (peaks of finer noise) by ``mito_fragmentation``.

The optics follow: per-plate intensity scale, autofluorescence background, Gaussian blur (the plate's
focus), camera offset, multiplication by the plate's illumination function, shot and read noise,
rounding to uint16. Textures are band-pass noise made in the Fourier domain (one inverse FFT each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cpcnn._types import CHANNELS, F32Array, F64Array
from cpcnn.synth.treatments import Phenotype

#: Mean nucleus radius (px) of an untreated cell at full size, as in 20x JUMP images (1080 px sites).
NUCLEUS_RADIUS = 13.0
#: Cell body radius / nucleus radius of an untreated cell.
CELL_TO_NUCLEUS = 2.6
#: Signal counts at a relative intensity of 1, before the plate's intensity scale.
FULL_SCALE = {"DNA": 14000.0, "RNA": 9000.0, "ER": 11000.0, "AGP": 9000.0, "Mito": 12000.0}
BACKGROUND = 250.0  # autofluorescence counts, multiplied by the illumination like the signal
#: Camera offset (counts). Folded into the illuminated background so that dividing by the plate's
#: illumination function flattens a site exactly (in expectation), as a function estimated from the
#: raw images (CellProfiler's CorrectIlluminationCalculate) would.
CAMERA_OFFSET = 100.0
READ_NOISE = 4.0  # counts, standard deviation
#: Fewest pixels per cell a site may have (spacing of about 22 px).
MIN_AREA_PER_CELL = 500


@dataclass(frozen=True)
class PlateConditions:
    """The confounders of one plate: what differs between plates whatever the treatment."""

    intensity: dict[str, float]  # multiplier per channel
    focus_sigma: float  # Gaussian blur in pixels
    illumination: dict[str, F32Array]  # (size, size) float32 per channel, mean 1


def draw_plate_conditions(rng: np.random.Generator, size: int) -> PlateConditions:
    """A plate's intensity scale (common factor x channel jitter), focus blur and illumination."""
    common = rng.lognormal(0.0, 0.15)
    intensity = {ch: float(common * rng.lognormal(0.0, 0.08)) for ch in CHANNELS}
    focus = float(rng.uniform(0.6, 1.2))
    illumination = {ch: illumination_function(rng, size) for ch in CHANNELS}
    return PlateConditions(intensity, focus, illumination)


def illumination_function(rng: np.random.Generator, size: int) -> F32Array:
    """Vignetting around an off-centre optical axis plus a linear tilt, normalized to mean 1 (min ~0.5)."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    cx, cy = rng.uniform(-0.3, 0.3, 2).astype(np.float32)
    vignetting = np.float32(rng.uniform(0.15, 0.3))
    tx, ty = rng.uniform(-0.12, 0.12, 2).astype(np.float32)
    r2 = (axis[None, :] - cx) ** 2 + (axis[:, None] - cy) ** 2
    function = (1.0 - vignetting * r2) * (1.0 + tx * axis[None, :] + ty * axis[:, None])
    return (function / function.mean(dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class Cells:
    """Per-cell geometry of one site: (N,) arrays except ``centers`` (N, 2) float64 (x, y)."""

    centers: F64Array
    nucleus_a: F64Array
    nucleus_b: F64Array
    angle: F64Array
    cell_radius: F64Array
    body_offset: F64Array  # (N, 2)
    harmonics: F64Array  # (N, 3, 2): amplitude, phase of harmonics 2..4
    brightness: F64Array  # (N, 5) per channel
    fibre_angle: F64Array
    fibre_phase: F64Array


def render_site(
    rng: np.random.Generator, phenotype: Phenotype, conditions: PlateConditions, *, size: int, n_cells: int
) -> tuple[dict[str, np.ndarray], F64Array]:
    """One site -> ({channel: (size, size) uint16}, nucleus centres (N, 2) float64 as x, y)."""
    cells = draw_cells(rng, phenotype, size=size, n_cells=n_cells)
    planes = _cell_planes(rng, cells, phenotype, size)
    signal = _compose_channels(rng, planes, phenotype, size)
    images = _acquire(rng, signal, conditions)
    return images, cells.centers


def draw_cells(rng: np.random.Generator, phenotype: Phenotype, *, size: int, n_cells: int) -> Cells:
    spacing = size / np.sqrt(max(n_cells, 1))
    # Dense sites shrink every cell so that neighbours do not pile up.
    radius = min(NUCLEUS_RADIUS * CELL_TO_NUCLEUS * phenotype.cell_size, 0.6 * spacing)
    nucleus = min(NUCLEUS_RADIUS * phenotype.nucleus_size, 0.65 * radius, 0.3 * spacing)
    cell_radius = radius * rng.lognormal(0.0, 0.1, n_cells)
    nucleus_radius = np.minimum(nucleus * rng.lognormal(0.0, 0.1, n_cells), 0.6 * cell_radius)
    elongation = 1.0 + np.abs(rng.normal(0.0, 0.18 * phenotype.nucleus_elongation, n_cells))
    centers = _place(rng, n_cells, size, min_distance=min(0.75 * spacing, 2.0 * radius), margin=nucleus)
    return Cells(
        centers=centers,
        nucleus_a=nucleus_radius * np.sqrt(elongation),
        nucleus_b=nucleus_radius / np.sqrt(elongation),
        angle=rng.uniform(0.0, np.pi, n_cells),
        cell_radius=cell_radius,
        body_offset=rng.normal(0.0, 0.12, (n_cells, 2)) * cell_radius[:, None],
        harmonics=np.stack(
            [rng.uniform(0.0, 0.12, (n_cells, 3)), rng.uniform(0.0, 2 * np.pi, (n_cells, 3))], axis=-1
        ),
        brightness=rng.lognormal(0.0, 0.15, (n_cells, len(CHANNELS))),
        fibre_angle=rng.uniform(0.0, np.pi, n_cells),
        fibre_phase=rng.uniform(0.0, 2 * np.pi, n_cells),
    )


def _place(rng: np.random.Generator, n_cells: int, size: int, *, min_distance: float, margin: float) -> F64Array:
    """Dart throwing: (N, 2) centres at least ``min_distance`` apart, shrinking it when darts keep missing."""
    placed = np.empty((n_cells, 2))
    count, misses = 0, 0
    low, high = margin, size - margin
    while count < n_cells:
        candidates = rng.uniform(low, high, (64, 2))
        for candidate in candidates:
            if count == n_cells:
                break
            if count and np.min(np.sum((placed[:count] - candidate) ** 2, axis=1)) < min_distance**2:
                misses += 1
                if misses > 20 * n_cells:
                    min_distance *= 0.9
                    misses = 0
                continue
            placed[count] = candidate
            count += 1
    return placed


def _cell_planes(rng: np.random.Generator, cells: Cells, phenotype: Phenotype, size: int) -> dict[str, F32Array]:
    """Stamp every cell's maps into full-size planes (maximum where cells overlap)."""
    names = ("nucleus", "dna", "cell", "cortex", "fibres", "er", "mito", "nucleoli")
    planes = {name: np.zeros((size, size), np.float32) for name in names}
    n_nucleoli = rng.integers(1, 5, len(cells.centers))
    for i in range(len(cells.centers)):
        cx, cy = cells.centers[i]
        reach = cells.cell_radius[i] * 1.45 + np.hypot(*cells.body_offset[i])
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
        cos, sin = np.float32(np.cos(cells.angle[i])), np.float32(np.sin(cells.angle[i]))
        u, v = dx * cos + dy * sin, dy * cos - dx * sin
        a, b = np.float32(cells.nucleus_a[i]), np.float32(cells.nucleus_b[i])
        rn = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        nucleus = _soft_step((1.0 - rn) * np.float32(np.sqrt(a * b)) / np.float32(1.2))
        # Cell body: radius varies with angle around the body centre.
        bx, by = dx - np.float32(cells.body_offset[i, 0]), dy - np.float32(cells.body_offset[i, 1])
        r = np.sqrt(bx**2 + by**2)
        phi = np.arctan2(by, bx)
        boundary = np.ones_like(phi)
        for k, (amplitude, phase) in enumerate(cells.harmonics[i], start=2):
            boundary += np.float32(amplitude) * np.cos(k * phi + np.float32(phase))
        boundary *= np.float32(cells.cell_radius[i])
        body = np.maximum(_soft_step((boundary - r) / np.float32(2.0)), nucleus)
        # Distance (px) outside the nuclear edge, for perinuclear gradients.
        outside = np.maximum(rn - 1.0, 0.0) * np.float32(np.sqrt(a * b))
        cytoplasm = body * (1.0 - nucleus)
        scale = np.float32(cells.cell_radius[i])
        er = cytoplasm * np.exp(-outside / (np.float32(0.25 * phenotype.er_spread) * scale))
        mito = cytoplasm * np.exp(-outside / (np.float32(0.35 * phenotype.mito_spread) * scale))
        cortex = 4.0 * body * (1.0 - body)
        period = np.float32(max(4.0, 0.18 * cells.cell_radius[i]))
        along = dx * np.float32(np.cos(cells.fibre_angle[i])) + dy * np.float32(np.sin(cells.fibre_angle[i]))
        fibres = cytoplasm * ((1.0 + np.cos(along * np.float32(2 * np.pi) / period + np.float32(cells.fibre_phase[i]))) / 2) ** 6
        nucleoli = _nucleoli(rng, u, v, a, b, n_nucleoli[i], phenotype.nucleoli) * nucleus
        bright = cells.brightness[i].astype(np.float32)
        window = (slice(y0, y1), slice(x0, x1))
        for name, stamp in (
            ("nucleus", nucleus), ("dna", nucleus * bright[0]), ("cell", body), ("cortex", cortex * bright[3]),
            ("fibres", fibres * bright[3]), ("er", er * bright[2]), ("mito", mito * bright[4]),
            ("nucleoli", nucleoli * bright[1]),
        ):
            np.maximum(planes[name][window], stamp, out=planes[name][window])
    return planes


def _nucleoli(
    rng: np.random.Generator, u: F32Array, v: F32Array, a: np.float32, b: np.float32, count: int, size: float
) -> F32Array:
    """Sum of ``count`` Gaussian spots at random points inside the nucleus ellipse."""
    radius = np.sqrt(rng.uniform(0.0, 0.5, count))
    theta = rng.uniform(0.0, 2 * np.pi, count)
    sigma = np.float32(max(0.6, 0.13 * np.sqrt(a * b) * size))
    spots = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for rr, tt in zip(radius, theta, strict=True):
        su, sv = np.float32(rr * a * np.cos(tt)), np.float32(rr * b * np.sin(tt))
        spots += np.exp(-((u - su) ** 2 + (v - sv) ** 2) / (2 * sigma**2))
    return np.minimum(spots, 1.0)


def _soft_step(x: F32Array) -> F32Array:
    """Logistic edge: 0 far below 0, 1 far above, 0.5 at 0."""
    return (0.5 + 0.5 * np.tanh(x)).astype(np.float32, copy=False)


def _compose_channels(
    rng: np.random.Generator, planes: dict[str, F32Array], phenotype: Phenotype, size: int
) -> dict[str, F32Array]:
    """Relative intensities (about 0..1.5) per channel from the stamped planes and texture fields."""
    chromatin = _band_noise(rng, size, 0.8, 2.5)
    cyto = _band_noise(rng, size, 3.0, 10.0)
    reticulum = _band_noise(rng, size, 1.0, 3.0)
    filaments = np.exp(-(_band_noise(rng, size, 1.5, 4.0) / np.float32(0.35)) ** 2)
    puncta = np.maximum(_band_noise(rng, size, 0.8, 1.6) - np.float32(0.8), 0.0) * np.float32(1.5)
    fragmentation = np.float32(phenotype.mito_fragmentation)
    mito_texture = (1 - fragmentation) * filaments + fragmentation * np.minimum(puncta, 1.5)
    nucleus, cell = planes["nucleus"], planes["cell"]
    return {
        "DNA": planes["dna"] * np.clip(1.0 + np.float32(0.12 * phenotype.chromatin) * chromatin, 0.2, None),
        "RNA": np.float32(0.18 * phenotype.rna_cytoplasm) * cell * (1.0 + np.float32(0.25) * cyto)
        + np.float32(0.2) * nucleus + np.float32(0.9) * planes["nucleoli"],
        "ER": planes["er"] * np.clip(0.8 + np.float32(0.25 * phenotype.er_texture) * reticulum, 0.1, None)
        + np.float32(0.04) * cell,
        "AGP": np.float32(0.12) * cell * (1.0 + np.float32(0.2) * cyto)
        + np.float32(0.3 * phenotype.cortex) * planes["cortex"]
        + np.float32(phenotype.actin_fibres) * planes["fibres"],
        "Mito": planes["mito"] * (np.float32(0.15) + mito_texture) + np.float32(0.03) * cell,
    }


def _band_noise(rng: np.random.Generator, size: int, sigma_fine: float, sigma_coarse: float) -> F32Array:
    """(size, size) float32 noise of unit standard deviation with structure between the two scales (px)."""
    spectrum = rng.standard_normal((size, size // 2 + 1, 2), dtype=np.float32).view(np.complex64)[..., 0]
    f2 = _frequency_squared(size)
    two_pi2 = np.float32(2 * np.pi**2)
    spectrum *= np.exp(-two_pi2 * sigma_fine**2 * f2) - np.exp(-two_pi2 * sigma_coarse**2 * f2)
    field = np.fft.irfft2(spectrum, s=(size, size))
    field /= field.std(dtype=np.float64) + 1e-12
    return field.astype(np.float32, copy=False)


def _frequency_squared(size: int) -> F32Array:
    fy = np.fft.fftfreq(size).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(size).astype(np.float32)[None, :]
    return fy**2 + fx**2


def _acquire(rng: np.random.Generator, signal: dict[str, F32Array], conditions: PlateConditions) -> dict[str, np.ndarray]:
    """Relative signal -> uint16 camera images under the plate's intensity, focus and illumination."""
    size = next(iter(signal.values())).shape[0]
    stack = np.stack(
        [signal[ch] * np.float32(FULL_SCALE[ch] * conditions.intensity[ch]) + np.float32(BACKGROUND) for ch in CHANNELS]
    )
    blur = np.exp(np.float32(-2 * np.pi**2 * conditions.focus_sigma**2) * _frequency_squared(size))
    stack = np.fft.irfft2(np.fft.rfft2(stack) * blur, s=(size, size)).astype(np.float32, copy=False)
    images = {}
    for index, ch in enumerate(CHANNELS):
        expected = np.maximum((stack[index] + np.float32(CAMERA_OFFSET)) * conditions.illumination[ch], 0.0)
        noise = rng.standard_normal(expected.shape, dtype=np.float32)
        counts = expected + noise * np.sqrt(expected + np.float32(READ_NOISE**2))
        images[ch] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return images
