"""Sphering lambda sweep: retrieval metrics per lambda (the paper's Figure 6B).

The controls are eigendecomposed once; each lambda only rebuilds W, spheres every row, averages rows
into treatments and evaluates retrieval. The unsphered table is evaluated too, as the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cpcnn._types import CONVENTIONS, Convention
from cpcnn.errors import InputError
from cpcnn.metrics.retrieval import RetrievalResult, evaluate_retrieval
from cpcnn.profiles.sphering import ControlSelector, Method, fit_sphering_path


@dataclass(frozen=True)
class SweepPoint:
    """Metrics at one lambda (``lam`` None: unsphered baseline)."""

    lam: float | None
    mean_average_precision: float
    mean_average_precision_interpolated: float
    folds_of_enrichment: float
    n_queries: int
    rank_deficient: bool = False
    n_queries_average_precision: int = 0

    @classmethod
    def of(cls, lam: float | None, result: RetrievalResult, rank_deficient: bool = False) -> SweepPoint:
        """The summary metrics of one evaluation."""
        return cls(
            lam=lam,
            mean_average_precision=result.mean_average_precision,
            mean_average_precision_interpolated=result.mean_average_precision_interpolated,
            folds_of_enrichment=result.folds_of_enrichment,
            n_queries=result.n_queries,
            rank_deficient=rank_deficient,
            n_queries_average_precision=result.n_queries_average_precision,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""

        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {
            "lambda": self.lam,
            "mean_average_precision": num(self.mean_average_precision),
            "mean_average_precision_interpolated": num(self.mean_average_precision_interpolated),
            "folds_of_enrichment": num(self.folds_of_enrichment),
            "n_queries": self.n_queries,
            "n_queries_average_precision": self.n_queries_average_precision,
            "rank_deficient": self.rank_deficient,
        }


@dataclass(frozen=True)
class SweepResult:
    """One ``SweepPoint`` per lambda (input order) plus the unsphered baseline."""

    points: tuple[SweepPoint, ...]
    baseline: SweepPoint
    settings: dict[str, Any] = field(default_factory=dict)
    convention: Convention = "copairs"

    def best(self, metric: str = "mean_average_precision") -> SweepPoint | None:
        """The point with the highest finite ``metric`` (None if none is finite)."""
        finite = [p for p in self.points if np.isfinite(getattr(p, metric))]
        return max(finite, key=lambda p: getattr(p, metric)) if finite else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready sweep: convention, points, baseline, best lambda by mAP, settings."""
        best = self.best()
        return {
            "convention": self.convention,
            "points": [p.to_dict() for p in self.points],
            "baseline": self.baseline.to_dict(),
            "best_lambda_by_map": best.lam if best else None,
            "settings": self.settings,
        }


def sweep_lambda(
    table: pd.DataFrame,
    *,
    controls: str | ControlSelector,
    lambdas: Sequence[float],
    id_col: str,
    annotation: str,
    method: Method = "zca",
    sep: str | None = "|",
    features: Sequence[str] | None = None,
    convention: Convention = "copairs",
) -> SweepResult:
    """(N rows) well profiles -> metrics of the treatment profiles after sphering with each lambda.

    Raises InputError for an empty lambda list, any lambda <= 0 or an unknown convention (and as
    ``fit_sphering`` does).
    """
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    if not lambdas:
        raise InputError("no lambda values given")
    transforms = fit_sphering_path(
        table, controls=controls, lambdas=lambdas, method=method, features=features
    )
    names = list(transforms[0].features)

    def evaluate(profiles: pd.DataFrame) -> RetrievalResult:
        return evaluate_retrieval(
            profiles, id_col=id_col, annotation=annotation, sep=sep, features=names, convention=convention
        )

    baseline = SweepPoint.of(None, evaluate(table))
    points = tuple(
        SweepPoint.of(t.lam, evaluate(t.apply(table, features=names)), t.rank_deficient) for t in transforms
    )
    settings = {
        "controls": str(ControlSelector.parse(controls)),
        "method": method,
        "id_column": id_col,
        "annotation": annotation,
        "annotation_separator": sep,
        "n_controls": transforms[0].n_controls,
        "n_features": len(names),
        "control_rank": transforms[0].rank,
    }
    return SweepResult(points=points, baseline=baseline, settings=settings, convention=convention)
