"""Sphering (ZCA whitening) of profiles against negative controls, as in the paper.

``zca``: mu = mean(controls); C = (X - mu)^T (X - mu) / n; C = V diag(s) V^T;
W = V diag(1 / sqrt(s + lambda)) V^T; x' = (x - mu) W. lambda is absolute (added to eigenvalues),
unlike pycytominer's ``Spherize`` which adds epsilon to singular values and divides by n - 1.
``zca-cor``: the same on the correlation matrix: controls are first standardized by their own std
(ddof 0), x' = ((x - mu) / std) W.

Eigenvalues below zero by round-off are clipped to 0 before lambda is added. With fewer controls than
features the covariance is rank-deficient: the null-space directions are scaled by 1/sqrt(lambda)
alone, so lambda dominates the result; this is logged and recorded on the fitted transform.
A fitted ``Sphering`` is a durable artifact: saved as one ``.npz`` of plain arrays (no pickle),
applied only to tables with the same feature names, and never refit at inference.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cpcnn._types import F32Array, F64Array
from cpcnn.errors import InputError
from cpcnn.profiles.tables import (
    PathLike,
    check_finite,
    check_same_features,
    feature_columns,
    feature_matrix,
    unselected_features,
)

logger = logging.getLogger(__name__)

Method = Literal["zca", "zca-cor"]
METHODS: tuple[str, ...] = ("zca", "zca-cor")
_FORMAT = "cpcnn-sphering/1"


@dataclass(frozen=True)
class ControlSelector:
    """Rows whose ``column`` equals ``value`` (compared as text, so ``Metadata_dose=0`` matches 0)."""

    column: str
    value: str

    @classmethod
    def parse(cls, text: str | ControlSelector) -> ControlSelector:
        """``"COLUMN=VALUE"`` -> selector; the value may itself contain ``=``."""
        if isinstance(text, ControlSelector):
            return text
        column, sep, value = text.partition("=")
        if not sep or not column.strip():
            raise InputError(
                f"control selector {text!r} must look like COLUMN=VALUE, e.g. Metadata_broad_sample=DMSO"
            )
        return cls(column.strip(), value.strip())

    def __str__(self) -> str:
        return f"{self.column}={self.value}"

    def mask(self, table: pd.DataFrame) -> np.ndarray:
        """(N,) bool of matching rows; InputError naming the column and a few existing values if none match."""
        if self.column not in table.columns:
            raise InputError(f"control column {self.column!r} not in the table")
        text = table[self.column].astype(str)
        hits = np.asarray(text == self.value, dtype=bool)
        if not hits.any():
            seen = ", ".join(repr(v) for v in text.drop_duplicates().head(5))
            raise InputError(f"no control rows with {self.column} == {self.value!r} (values include {seen})")
        return hits


def zca_matrix(
    controls: F64Array, *, lam: float, method: Method = "zca"
) -> tuple[F64Array, F64Array | None, F64Array, F64Array]:
    """(n, D) controls -> mean (D,), std (D,) or None, W (D, D), eigenvalues (D,), all float64; lambda > 0.

    Rank-deficient controls (n <= D) are allowed: lambda regularizes the zero eigenvalues.
    """
    mean, std, eigvals, eigvecs = control_spectrum(controls, method=method)
    return mean, std, whitening_matrix(eigvals, eigvecs, lam=lam), eigvals


def control_spectrum(
    controls: F64Array, *, method: Method = "zca"
) -> tuple[F64Array, F64Array | None, F64Array, F64Array]:
    """(n, D) controls -> mean (D,), std (D,) or None, eigenvalues (D,) >= 0, eigenvectors (D, D); float64."""
    if method not in METHODS:
        raise InputError(f"unknown sphering method {method!r}: use one of {', '.join(METHODS)}")
    x = np.asarray(controls, dtype=np.float64)
    mean = x.mean(axis=0)
    centered = x - mean
    std = None
    if method == "zca-cor":
        std = centered.std(axis=0)
        if np.any(std == 0):
            raise InputError(
                f"{int(np.sum(std == 0))} features are constant across the controls; zca-cor needs std > 0"
            )
        centered = centered / std
    cov = centered.T @ centered / len(x)
    eigvals, eigvecs = np.linalg.eigh(cov)
    return mean, std, np.clip(eigvals, 0.0, None), eigvecs


def whitening_matrix(eigvals: F64Array, eigvecs: F64Array, *, lam: float) -> F64Array:
    """(D,) eigenvalues, (D, D) eigenvectors -> (D, D) float64 W = V diag(1/sqrt(s + lambda)) V^T; lambda > 0."""
    check_lambda(lam)
    return (eigvecs * (1.0 / np.sqrt(eigvals + lam))) @ eigvecs.T


#: The smallest lambda: below the smallest normal float64, 1/sqrt(lambda) loses precision and the
#: whitened values overflow.
MIN_LAMBDA = float(np.finfo(np.float64).tiny)


def check_lambda(lam: float) -> None:
    """InputError unless lambda is a finite, positive normal float (it regularizes zero eigenvalues)."""
    if not np.isfinite(lam) or lam < MIN_LAMBDA:
        raise InputError(f"lambda must be a positive number (finite, at least {MIN_LAMBDA:.4g}), got {lam}")


@dataclass(frozen=True, eq=False, kw_only=True)
class SpheringInfo:
    """What a stored transform is, without its (D, D) matrix: enough to list and describe it."""

    method: str
    lam: float
    features: tuple[str, ...]
    n_controls: int
    rank: int
    provenance: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def rank_deficient(self) -> bool:
        """True when the control covariance has fewer non-zero eigenvalues than features."""
        return self.rank < len(self.features)


@dataclass(frozen=True, eq=False, kw_only=True)
class Sphering(SpheringInfo):
    """A fitted sphering transform: x' = ((x - mean) [/ std]) @ matrix, for tables with ``features``."""

    mean: F64Array
    std: F64Array | None
    matrix: F64Array | F32Array

    def transform(self, values: np.ndarray) -> F32Array:
        """(N, D) float -> (N, D) float32 sphered; rows with NaN give NaN rows. Deterministic.

        Raises InputError for infinite inputs, and when a finite row would leave float32's range
        (a lambda far too small for the data): a table of infinities is never returned.
        """
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise InputError(f"expected (rows, {len(self.features)}) features, got shape {x.shape}")
        check_finite(x, self.features, what="profiles to sphere")
        missing = np.isnan(x).any(axis=1)
        x = x - self.mean
        if self.std is not None:
            x = x / self.std
        with np.errstate(over="ignore", invalid="ignore"):
            out = (x @ np.asarray(self.matrix, dtype=np.float64)).astype(np.float32)
        overflow = ~np.isfinite(out) & ~missing[:, None]
        if overflow.any():
            columns = np.flatnonzero(overflow.any(axis=0))
            raise InputError(
                f"sphering gives values that are not finite in float32 in {len(columns)} features "
                f"(e.g. {', '.join(self.features[i] for i in columns[:3])}): lambda={self.lam:g} is too small "
                "for this table; fit with a larger lambda"
            )
        return out

    def apply(self, table: pd.DataFrame, *, features: Sequence[str] | None = None) -> pd.DataFrame:
        """Table whose features (``feature_columns(table, features)``) are this transform's -> copy with
        sphered float32 features last. Metadata columns are kept; numeric columns left out of the
        selection are dropped, so the result's features are exactly the sphered ones."""
        names = feature_columns(table, features)
        check_same_features(names, self.features, what="the sphering transform")
        out = table.drop(columns=[*names, *unselected_features(table, names)])
        sphered = pd.DataFrame(
            self.transform(feature_matrix(table, self.features)), columns=list(self.features)
        )
        return pd.concat([out.reset_index(drop=True), sphered], axis=1).set_axis(table.index)

    def save(self, path: PathLike) -> Path:
        """Write one ``.npz`` of plain arrays (no pickle); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": _FORMAT,
            "method": self.method,
            "lambda": self.lam,
            "n_controls": self.n_controls,
            "rank": self.rank,
            "provenance": dict(self.provenance),
            "warnings": list(self.warnings),
        }
        arrays: dict[str, Any] = {
            "header": np.array(json.dumps(header)),
            "features": np.array(self.features, dtype=str),
            "mean": self.mean,
            "matrix": self.matrix,
        }
        if self.std is not None:
            arrays["std"] = self.std
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: PathLike) -> Sphering:
        """Read a transform written by ``save``; InputError if the file is not one."""
        return cls(**_read_fields(path, arrays=True))


def _header(archive: Any, path: Path) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(str(archive["header"]))
    if header.get("format") != _FORMAT:
        raise InputError(f"{path}: not a cpcnn sphering file (format {header.get('format')!r})")
    return header


def read_sphering_info(path: PathLike) -> SpheringInfo:
    """A sphering file's header and feature names; the mean and matrix members are never read.

    An ``.npz`` is a zip: members are read on access, so this costs O(D) however large the matrix.
    """
    return SpheringInfo(**_read_fields(path, arrays=False))


def _read_fields(path: PathLike, *, arrays: bool) -> dict[str, Any]:
    """The fields of a file written by ``Sphering.save``: the header's, plus mean/std/matrix if ``arrays``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such sphering file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = _header(archive, path)
            fields: dict[str, Any] = {
                "method": header["method"],
                "lam": float(header["lambda"]),
                "features": tuple(str(f) for f in archive["features"]),
                "n_controls": int(header["n_controls"]),
                "rank": int(header["rank"]),
                "provenance": header.get("provenance", {}),
                "warnings": tuple(header.get("warnings", ())),
            }
            if arrays:
                fields["mean"] = archive["mean"]
                fields["std"] = archive["std"] if "std" in archive.files else None
                fields["matrix"] = archive["matrix"]
            return fields
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: unreadable sphering file ({exc})") from exc


def control_matrix(
    table: pd.DataFrame, controls: str | ControlSelector, features: Sequence[str] | None = None
) -> tuple[F64Array, list[str], ControlSelector]:
    """Select control rows -> (n, D) float64 without NaN rows, feature names, selector; checks all-NaN columns."""
    selector = ControlSelector.parse(controls)
    names = feature_columns(table, features)
    values = feature_matrix(table.loc[selector.mask(table)], names).astype(np.float64)
    check_finite(values, names, what=f"control rows {selector}")
    empty = np.asarray(np.isnan(values).all(axis=0), dtype=bool).tolist()
    all_nan = [n for n, col in zip(names, empty, strict=True) if col]
    if all_nan:
        shown = ", ".join(all_nan[:5]) + (f" (+{len(all_nan) - 5} more)" if len(all_nan) > 5 else "")
        raise InputError(f"feature columns with only NaN in the controls: {shown}; drop them first")
    bad = np.isnan(values).any(axis=1)
    if bad.any():
        logger.warning("dropped %d control rows with NaN features", int(bad.sum()))
        values = values[~bad]
    if len(values) < 2:
        raise InputError(f"need at least 2 control rows without NaN for {selector}, found {len(values)}")
    return values, names, selector


@dataclass(frozen=True, eq=False, kw_only=True)
class ControlSpectrum:
    """The eigendecomposition of one set of control rows, made once and turned into a ``Sphering`` per
    lambda (a lambda sweep decomposes the controls once, not once per lambda)."""

    method: str
    features: tuple[str, ...]
    selector: ControlSelector
    n_controls: int
    mean: F64Array  # (D,)
    std: F64Array | None  # (D,), zca-cor only
    eigvals: F64Array  # (D,) >= 0
    eigvecs: F64Array  # (D, D)
    rank: int  # eigenvalues above round-off
    source: str = ""

    @classmethod
    def fit(
        cls,
        table: pd.DataFrame,
        *,
        controls: str | ControlSelector,
        method: Method = "zca",
        features: Sequence[str] | None = None,
        source: str = "",
    ) -> ControlSpectrum:
        """Control rows of a (N, D) profile table -> their mean, std and covariance spectrum (float64)."""
        values, names, selector = control_matrix(table, controls, features)
        mean, std, eigvals, eigvecs = control_spectrum(values, method=method)
        tol = eigvals.max(initial=0.0) * len(names) * np.finfo(np.float64).eps
        return cls(
            method=method,
            features=tuple(names),
            selector=selector,
            n_controls=len(values),
            mean=mean,
            std=std,
            eigvals=eigvals,
            eigvecs=eigvecs,
            rank=int(np.sum(eigvals > tol)),
            source=source,
        )

    def rank_note(self, lam: float) -> str | None:
        """Why lambda dominates some directions, when the controls cannot span every feature; else None."""
        n_features = len(self.features)
        if self.n_controls >= n_features and self.rank >= n_features:
            return None
        return (
            f"{self.n_controls} controls for {n_features} features: "
            f"covariance rank {self.rank} < {n_features}, "
            f"so lambda={lam:g} dominates the sphering of the remaining directions"
        )

    def sphering(
        self, lam: float, *, dtype: type[np.floating[Any]] = np.float64, log: bool = True
    ) -> Sphering:
        """The transform for ``lam`` (W stored as ``dtype``); a rank note is logged when ``log``.

        Raises InputError when W is not finite in ``dtype`` (lambda far too small).
        """
        note = self.rank_note(lam)
        if note is not None and log:
            logger.warning("%s", note)
        with np.errstate(over="ignore"):
            matrix = whitening_matrix(self.eigvals, self.eigvecs, lam=lam).astype(dtype)
        if not np.isfinite(matrix).all():
            raise InputError(
                f"lambda={lam:g} gives a whitening matrix that is not finite in {np.dtype(dtype).name}; "
                "fit with a larger lambda"
            )
        return Sphering(
            method=self.method,
            mean=self.mean,
            std=self.std,
            matrix=matrix,
            lam=float(lam),
            features=self.features,
            n_controls=self.n_controls,
            rank=self.rank,
            provenance={
                "source": self.source,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "controls": str(self.selector),
            },
            warnings=() if note is None else (note,),
        )


def fit_sphering(
    table: pd.DataFrame,
    *,
    controls: str | ControlSelector,
    lam: float,
    method: Method = "zca",
    features: Sequence[str] | None = None,
    dtype: type[np.floating[Any]] = np.float64,
    source: str = "",
) -> Sphering:
    """Fit on the control rows of a (N, D) profile table -> ``Sphering`` (W stored as ``dtype``).

    Raises InputError for lambda <= 0, no matching controls, unknown method or all-NaN feature columns.
    """
    check_lambda(lam)
    spectrum = ControlSpectrum.fit(table, controls=controls, method=method, features=features, source=source)
    return spectrum.sphering(lam, dtype=dtype)


def fit_sphering_path(
    table: pd.DataFrame,
    *,
    controls: str | ControlSelector,
    lambdas: Sequence[float],
    method: Method = "zca",
    features: Sequence[str] | None = None,
    source: str = "",
) -> list[Sphering]:
    """One ``Sphering`` per lambda from a single eigendecomposition of the controls (for sweeps)."""
    for lam in lambdas:
        check_lambda(lam)
    spectrum = ControlSpectrum.fit(table, controls=controls, method=method, features=features, source=source)
    return [spectrum.sphering(lam, log=i == 0) for i, lam in enumerate(lambdas)]
