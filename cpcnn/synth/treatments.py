"""Treatments of a synthetic screen: mechanisms of action as directions in a space of cell phenotypes.

A :class:`Phenotype` holds the parameters the renderer (:mod:`cpcnn.synth.render`) draws cells from.
Each mechanism of action (MoA) changes some of them by log2 fold changes at full strength; a treatment
of that MoA applies the MoA's changes scaled by its own strength (0.7 to 1.0) plus small side effects
on two other parameters, so treatments of one MoA move the same way by different amounts and are
similar, not identical. Every change alters shape, size, spread or texture, not only brightness,
because a per-crop min-max normalization removes a pure intensity change.

Layout rule (:func:`design_layout`) for W wells: ``max(1, W // 8)`` control wells (DMSO); the other
wells hold replicates of treatments, 2 per treatment below 48 treated wells and 3 from there on
(wells left over become controls); MoAs in use = ``clamp(ceil(treatments / 4), min(3, treatments), 6)``,
treatments dealt to MoAs in turn. 16 wells: 2 controls, 7 treatments x 2 in 3 MoAs; 64 wells: 10
controls, 18 treatments x 3 in 5 MoAs; 384 wells: 48 controls, 112 treatments x 3 in 6 MoAs. Wells
are shuffled with the seed, the same layout on every plate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

CONTROL_TREATMENT = "DMSO"
CONTROL_MOA = "control"


@dataclass(frozen=True)
class Phenotype:
    """What a cell looks like on average under one treatment (multipliers are 1 for untreated cells)."""

    nucleus_size: float = 1.0  # nucleus radius multiplier
    nucleus_elongation: float = 1.0  # spread of nucleus aspect ratios
    chromatin: float = 1.0  # DNA texture contrast (condensed chromatin is granular and bright)
    cell_size: float = 1.0  # cell body radius multiplier
    nucleoli: float = 1.0  # size of the RNA-bright nucleoli
    rna_cytoplasm: float = 1.0  # cytoplasmic RNA relative to nucleoli
    er_spread: float = 1.0  # ER decay length away from the nucleus (1: perinuclear, larger: fills the cell)
    er_texture: float = 1.0  # ER reticular texture contrast
    mito_fragmentation: float = 0.15  # fraction of punctate (vs filamentous) mitochondrial texture, <= 1
    mito_spread: float = 1.0  # mitochondrial decay length away from the nucleus
    actin_fibres: float = 0.15  # strength of AGP stress fibres relative to the cortex
    cortex: float = 1.0  # AGP membrane/cortex ring brightness


PHENOTYPE_PARAMETERS: tuple[str, ...] = tuple(f.name for f in fields(Phenotype))

#: Parameters kept in [0, 1] after fold changes.
_FRACTIONS = {"mito_fragmentation"}


def apply_fold_changes(base: Phenotype, log2_changes: dict[str, float]) -> Phenotype:
    """``base`` with each named parameter multiplied by 2**change (fractions clipped to 1)."""
    values = {}
    for name, change in log2_changes.items():
        value = getattr(base, name) * 2.0**change
        values[name] = min(value, 1.0) if name in _FRACTIONS else value
    return replace(base, **values)


@dataclass(frozen=True)
class MechanismOfAction:
    name: str
    prefix: str  # treatment names are prefix-01, prefix-02, ...
    log2_changes: dict[str, float]
    description: str


#: The MoA library, in the order MoAs are taken into use.
MOAS: tuple[MechanismOfAction, ...] = (
    MechanismOfAction(
        "tubulin_destabilizer", "TUB",
        {"nucleus_size": 0.55, "chromatin": 1.3, "nucleus_elongation": -1.0, "cell_size": -0.45, "actin_fibres": -1.0},
        "mitotic arrest: large round nuclei with condensed granular chromatin in small rounded cells, few fibres",
    ),
    MechanismOfAction(
        "er_stress", "ERS",
        {"er_spread": 1.8, "er_texture": 1.5, "nucleoli": -0.3},
        "ER stress: swollen reticular ER spreading from the nucleus through the whole cytoplasm",
    ),
    MechanismOfAction(
        "mito_disruptor", "MIT",
        {"mito_fragmentation": 2.5, "mito_spread": -0.8},
        "mitochondrial uncoupling: fragmented punctate mitochondria clustered around the nucleus",
    ),
    MechanismOfAction(
        "actin_stabilizer", "ACT",
        {"actin_fibres": 2.0, "cell_size": 0.35, "cortex": -0.5},
        "actin stabilization: thick AGP stress fibres across larger, flatter cells",
    ),
    MechanismOfAction(
        "transcription_inhibitor", "TXN",
        {"nucleoli": -1.5, "rna_cytoplasm": -1.0, "nucleus_size": -0.25},
        "transcription inhibition: nucleoli shrink and cytoplasmic RNA fades, nuclei slightly smaller",
    ),
    MechanismOfAction(
        "dna_damage", "DDR",
        {"nucleus_size": 0.4, "cell_size": 0.6, "nucleoli": 0.8, "mito_spread": 0.5},
        "DNA damage / senescence: enlarged flat cells with large nuclei, big nucleoli, spread mitochondria",
    ),
)

#: Multiplies every MoA's log2 changes: large enough that a well of a few dozen cells differs from
#: controls by more than plates of controls differ from each other.
EFFECT_GAIN = 1.6
#: Log2 standard deviation of a treatment's side effects, on two parameters its MoA leaves alone.
SIDE_EFFECT_SD = 0.2


@dataclass(frozen=True)
class Treatment:
    name: str
    moa: str
    strength: float  # 0 for controls
    phenotype: Phenotype
    effect: str  # human-readable: MoA description and the parameter changes

    @property
    def is_control(self) -> bool:
        return self.moa == CONTROL_MOA


CONTROL = Treatment(CONTROL_TREATMENT, CONTROL_MOA, 0.0, Phenotype(), "negative control: untreated phenotype")


@dataclass(frozen=True)
class Layout:
    """Treatments of a screen and the treatment of each well (same on every plate)."""

    treatments: tuple[Treatment, ...]  # controls first
    wells: tuple[tuple[str, Treatment], ...]  # (well name, treatment) in well order


def well_names(count: int) -> list[str]:
    """The first ``count`` wells of a 384-well plate, row-major: A01 .. A24, B01 .. P24."""
    return [f"{chr(ord('A') + i // 24)}{i % 24 + 1:02d}" for i in range(count)]


def design_layout(wells: int, seed: int, *, effect_scale: float = 1.0) -> Layout:
    """Treatments for ``wells`` wells (1..384) following the rule in the module docstring; every MoA
    change is multiplied by ``effect_scale`` (side effects are not)."""
    n_controls = max(1, wells // 8)
    treated = wells - n_controls
    replicates = 2 if treated < 48 else 3
    n_treatments = treated // replicates if treated >= replicates else treated
    replicates = replicates if treated >= replicates else 1
    n_moas = _moas_in_use(n_treatments)
    rng = np.random.default_rng([seed, 0x7EA7])
    counts = [0] * n_moas
    treatments = [CONTROL]
    for index in range(n_treatments):
        moa_index = index % n_moas
        counts[moa_index] += 1
        treatments.append(_make_treatment(MOAS[moa_index], counts[moa_index], rng, effect_scale))
    assigned = [t for t in treatments[1:] for _ in range(replicates)]
    assigned += [CONTROL] * (wells - len(assigned))
    order = rng.permutation(wells)
    names = well_names(wells)
    return Layout(tuple(treatments), tuple((names[i], assigned[order[i]]) for i in range(wells)))


def _moas_in_use(n_treatments: int) -> int:
    if n_treatments == 0:
        return 0
    return max(min(3, n_treatments), min(math.ceil(n_treatments / 4), len(MOAS)))


def _make_treatment(moa: MechanismOfAction, number: int, rng: np.random.Generator, effect_scale: float) -> Treatment:
    strength = float(np.round(rng.uniform(0.7, 1.0), 2))
    gain = EFFECT_GAIN * effect_scale
    changes = {name: change * strength * gain for name, change in moa.log2_changes.items()}
    others = [name for name in PHENOTYPE_PARAMETERS if name not in moa.log2_changes]
    for name in rng.choice(others, size=2, replace=False):
        changes[str(name)] = float(np.round(rng.normal(0.0, SIDE_EFFECT_SD), 2))
    phenotype = apply_fold_changes(Phenotype(), changes)
    base = Phenotype()
    listed = "; ".join(
        f"{name} x{getattr(phenotype, name) / getattr(base, name):.2f}" for name in sorted(changes)
    )
    return Treatment(f"{moa.prefix}-{number:02d}", moa.name, strength, phenotype, f"{moa.description} ({listed})")
