"""Treatment strength from well-level profiles, to train on the treatments with a visible phenotype.

The paper trained on the strongest treatments of each screen. Strength, per treatment: on each plate, the
median of the control wells is the reference; every well's distance to it is z-scored against the
control wells' own distances on that plate (mean and standard deviation, ddof=1), so plates with noisier
controls count for less; the strength is the mean z over the treatment's wells (replicates, any plate).
Distances are cosine (1 - cosine similarity; an all-zero well is at distance 1) or euclidean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cpcnn._types import CHANNELS, F64Array
from cpcnn.errors import InputError
from cpcnn.profiles.similarity import cosine_similarity
from cpcnn.profiles.sphering import ControlSelector
from cpcnn.profiles.tables import FeatureSelection, check_finite, feature_columns, feature_matrix

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")
PLATE_COLUMN = "Metadata_Plate"
#: Columns of the ranking besides the treatment column.
RANK_COLUMNS: tuple[str, ...] = ("strength_z", "n_replicates", "rank")


def distances_to(wells: np.ndarray, reference: np.ndarray, metric: Metric) -> F64Array:
    """(N, D) wells, (D,) reference -> (N,) float64 distances; cosine of a zero-norm row is distance 1."""
    if metric == "cosine":
        return 1.0 - cosine_similarity(wells, reference[None, :])[:, 0].astype(np.float64)
    if metric == "euclidean":
        return np.linalg.norm(np.asarray(wells, np.float64) - reference, axis=1)
    raise InputError(f"unknown distance metric {metric!r}; choose one of {', '.join(METRICS)}")


def well_z_scores(
    wells: pd.DataFrame,
    *,
    controls: str | ControlSelector,
    metric: Metric = "cosine",
    features: FeatureSelection = None,
) -> pd.Series:
    """Well table -> (rows,) float64 z of each well's distance to its plate's control median.

    Wells with NaN features get NaN. Every plate needs 2 or more control wells with spread distances.
    """
    if PLATE_COLUMN not in wells.columns:
        raise InputError(f"well profiles need a {PLATE_COLUMN} column to find each plate's controls")
    selector = ControlSelector.parse(controls)
    is_control = selector.mask(wells)
    names = feature_columns(wells, features)
    values = feature_matrix(wells, names).astype(np.float64)
    check_finite(values, names, what="well profiles")
    complete = ~np.isnan(values).any(axis=1)
    if not complete.all():
        logger.warning("%d wells have NaN features and are left out", int((~complete).sum()))
    z = np.full(len(wells), np.nan)
    plates = wells[PLATE_COLUMN].astype(str).to_numpy()
    for plate in pd.unique(plates):
        on_plate = (plates == plate) & complete
        control_rows = on_plate & is_control
        if control_rows.sum() < 2:
            raise InputError(
                f"plate {plate} has {int(control_rows.sum())} control wells ({selector}) with complete "
                "features; the strength needs at least 2 per plate"
            )
        reference = np.median(values[control_rows], axis=0)
        distance = distances_to(values[on_plate], reference, metric)
        control_distance = distances_to(values[control_rows], reference, metric)
        spread = control_distance.std(ddof=1)
        if not spread > 0:
            raise InputError(f"plate {plate}: the control wells are all at the same distance to their median")
        z[on_plate] = (distance - control_distance.mean()) / spread
    return pd.Series(z, index=wells.index, name="strength_z")


def rank_treatments(
    wells: pd.DataFrame,
    *,
    treatment: str,
    controls: str | ControlSelector,
    metric: Metric = "cosine",
    features: FeatureSelection = None,
) -> pd.DataFrame:
    """Well table -> one row per non-control treatment: ``treatment``, strength_z (mean well z),
    n_replicates (wells), rank (1 = strongest; ties by name), strongest first."""
    if treatment not in wells.columns:
        shown = ", ".join(c for c in wells.columns if c.startswith("Metadata_")) or "none"
        raise InputError(
            f"treatment column {treatment!r} not in the well profiles (metadata columns: {shown})"
        )
    selector = ControlSelector.parse(controls)
    z = well_z_scores(wells, controls=selector, metric=metric, features=features)
    keep = ~selector.mask(wells) & z.notna().to_numpy()
    if not keep.any():
        raise InputError("no treated wells with complete features: nothing to rank")
    table = pd.DataFrame({treatment: wells[treatment].astype(str).to_numpy()[keep], "z": z.to_numpy()[keep]})
    grouped = table.groupby(treatment, sort=True)["z"]
    ranked = pd.DataFrame({"strength_z": grouped.mean(), "n_replicates": grouped.size()}).reset_index()
    ranked = ranked.sort_values(["strength_z", treatment], ascending=[False, True], kind="stable")
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    return ranked.reset_index(drop=True)


def keep_in_index(
    index: Path,
    kept: pd.DataFrame,
    out: Path,
    *,
    treatment: str,
    controls: str | ControlSelector,
    path_columns: Sequence[str] = (*CHANNELS, "locations"),
) -> tuple[Path, int]:
    """A training index's rows of the kept treatments and of the controls -> ``out`` (CSV), with relative
    paths made absolute (they were relative to the index's folder); returns the path and the row count."""
    index = Path(index)
    try:
        table = (
            pd.read_parquet(index).astype(str)
            if index.read_bytes()[:4] == b"PAR1"
            else pd.read_csv(
                index, dtype=str, keep_default_na=False, sep="\t" if index.suffix == ".tsv" else ","
            )
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"index {index.name} is not a readable CSV or Parquet table ({exc})") from exc
    if treatment not in table.columns:
        raise InputError(f"index {index.name} has no treatment column {treatment!r}")
    selector = ControlSelector.parse(controls)
    wanted = set(kept[treatment].astype(str))
    rows = table[table[treatment].isin(wanted).to_numpy() | selector.mask(table)].copy()
    for column in (c for c in path_columns if c in rows.columns):
        rows[column] = [
            v if Path(v).is_absolute() else str((index.parent / v).resolve()) for v in rows[column]
        ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    return out, len(rows)


def write_ranking(ranked: pd.DataFrame, out: Path, *, top: int | None = None) -> list[Path]:
    """``out/ranked.csv`` and, with ``top``, ``out/kept.csv`` (the first ``top`` rows): the treatments a
    run keeps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "ranked.csv"]
    ranked.to_csv(paths[0], index=False)
    if top is not None:
        if top < 1:
            raise InputError(f"--top must be at least 1, got {top}")
        paths.append(out / "kept.csv")
        ranked.head(top).to_csv(paths[1], index=False)
    return paths
