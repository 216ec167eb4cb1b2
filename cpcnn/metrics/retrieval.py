"""Retrieval metrics of treatment profiles: average precision (copairs-exact and interpolated), FoE.

Two conventions share the protocol below and differ in their rules. ``copairs`` (the default) is
described in this docstring. ``paper`` reproduces the published evaluation code of the CNN-1 paper:
its queries, interpolated AP, ties and odds-ratio rule are documented in ``cpcnn.metrics.paper``.

Protocol (the paper's): rows sharing ``id_col`` are averaged into one treatment profile. A query is
one treatment; its library is every other annotated treatment (leave-one-out); a library member is
a hit (positive) when it shares at least one annotation value with the query, multi-valued
annotations being split on ``sep`` (``|``). Treatments without any annotation value are excluded
both as queries and as library members: an unknown mechanism is not evidence of a different one.
Queries are the treatments with at least one positive. Similarity is cosine.

Ranking sorts a query's library by decreasing similarity; exact ties put positives first, as
copairs does (its stable sort lists positive pairs before negative ones).

- ``average_precision`` (non-interpolated, copairs): mean over the positives of precision@k at each
  positive's rank k.
- ``interpolated_average_precision`` (the paper): p_inter(r) = max over r' >= r of p(r'); at the j-th
  positive (recall j/P) this is the maximum precision at any rank >= that positive's rank; the AP is
  the mean of p_inter over the P recall points j/P, j = 1..P.
- folds of enrichment: see ``cpcnn.metrics.enrichment`` (including the infinite odds-ratio rule).

Degenerate inputs (fewer than two annotated treatments, no shared annotation) give an explicit empty
result: ``n_queries = 0``, NaN metrics and a ``message``; never an exception.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from cpcnn._types import CONVENTIONS, Convention, F64Array
from cpcnn.errors import InputError
from cpcnn.metrics import paper
from cpcnn.metrics.enrichment import INFINITE_ODDS_RULE, PERCENTILE, folds_of_enrichment
from cpcnn.profiles.aggregate import collapse_by_id
from cpcnn.profiles.similarity import normalize_rows
from cpcnn.profiles.tables import feature_columns, feature_matrix

logger = logging.getLogger(__name__)

RECALL_GRID: F64Array = np.linspace(0.0, 1.0, 101)
AP_RULE = "non-interpolated: mean of precision@rank over the positives (copairs)"
AP_INTERPOLATED_RULE = "interpolated: mean over the positives' recall points j/P of max precision at any rank >= the j-th positive"


def label_sets(values: Iterable[object], *, sep: str | None = "|") -> list[frozenset[str]]:
    """Annotation cells -> label sets: split on ``sep`` (None: whole value), stripped; NaN/empty -> empty set."""
    out: list[frozenset[str]] = []
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            out.append(frozenset())
            continue
        parts = str(value).split(sep) if sep else [str(value)]
        out.append(frozenset(p.strip() for p in parts if p.strip()))
    return out


def positive_matrix(labels: Sequence[frozenset[str]]) -> np.ndarray:
    """N label sets -> (N, N) bool, True where two different rows share a label; diagonal False."""
    vocab = {label: i for i, label in enumerate(sorted(set().union(*labels)))} if labels else {}
    onehot = np.zeros((len(labels), max(len(vocab), 1)), dtype=np.float32)
    for row, items in enumerate(labels):
        onehot[row, [vocab[x] for x in items]] = 1.0
    shared = (onehot @ onehot.T) > 0
    np.fill_diagonal(shared, False)
    return shared


def rank_relevance(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """(Q, M) scores, (Q, M) bool -> (Q, M) bool relevance by decreasing score; ties: positives first."""
    order = np.lexsort((~np.asarray(positives, bool), -np.asarray(scores, np.float64)), axis=1)
    return np.take_along_axis(np.asarray(positives, bool), order, axis=1)


def _precision(relevance: np.ndarray) -> F64Array:
    ranks = np.arange(1, relevance.shape[1] + 1, dtype=np.float64)
    return np.cumsum(relevance, axis=1, dtype=np.float64) / ranks


def average_precision(relevance: np.ndarray) -> F64Array:
    """(Q, M) ranked bool relevance -> (Q,) float64 non-interpolated AP; NaN for rows without positives."""
    rel = np.asarray(relevance, dtype=bool)
    n_pos = rel.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pos > 0, (_precision(rel) * rel).sum(axis=1) / n_pos, np.nan)


def interpolated_precision(relevance: np.ndarray) -> F64Array:
    """(Q, M) ranked bool relevance -> (Q, M) float64 max precision at this or any later rank."""
    return np.maximum.accumulate(_precision(np.asarray(relevance, bool))[:, ::-1], axis=1)[:, ::-1]


def interpolated_average_precision(relevance: np.ndarray) -> F64Array:
    """(Q, M) ranked bool relevance -> (Q,) float64 interpolated AP (module rule); NaN without positives."""
    rel = np.asarray(relevance, dtype=bool)
    n_pos = rel.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pos > 0, (interpolated_precision(rel) * rel).sum(axis=1) / n_pos, np.nan)


def precision_recall_curves(relevance: np.ndarray, recall: F64Array = RECALL_GRID) -> F64Array:
    """(Q, M) ranked bool relevance, (R,) recall levels -> (Q, R) float64 interpolated precision; NaN rows without positives."""
    rel = np.asarray(relevance, dtype=bool)
    n_pos = rel.sum(axis=1)
    out = np.full((len(rel), len(recall)), np.nan)
    ok = n_pos > 0
    if not ok.any():
        return out
    rel, n_pos = rel[ok], n_pos[ok]
    rows, cols = np.nonzero(rel)
    at_positive = interpolated_precision(rel)[rows, cols]
    offsets = np.cumsum(n_pos) - n_pos
    needed = np.maximum(np.ceil(np.round(np.outer(n_pos, recall), 9)), 1).astype(np.int64)
    out[ok] = at_positive[offsets[:, None] + needed - 1]
    return out


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query and overall retrieval metrics; metrics are NaN and ``message`` says why when n_queries is 0.

    ``mean_average_precision`` is the convention's mAP: non-interpolated for ``copairs``, the paper's
    interpolated one for ``paper``, where ``mean_average_precision_interpolated`` is the same number.
    ``n_queries`` counts the FoE queries. ``n_queries_average_precision`` counts the mAP queries: the
    same treatments under ``copairs``, those with two or more positives under ``paper``.
    """

    per_query: pd.DataFrame
    mean_average_precision: float
    mean_average_precision_interpolated: float
    folds_of_enrichment: float
    n_queries: int
    n_queries_average_precision: int
    n_treatments: int
    n_excluded_unannotated: int
    n_odds_ratio_infinite: int
    n_odds_ratio_undefined: int
    precision_at_recall: F64Array  # (R,) mean interpolated precision over queries at RECALL_GRID
    curves: F64Array  # (n_queries, R) interpolated precision per query at RECALL_GRID
    settings: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    convention: Convention = "copairs"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN -> None), without the per-query table."""

        def num(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        return {
            "convention": self.convention,
            "mean_average_precision": num(self.mean_average_precision),
            "mean_average_precision_interpolated": num(self.mean_average_precision_interpolated),
            "folds_of_enrichment": num(self.folds_of_enrichment),
            "n_queries": self.n_queries,
            "n_queries_average_precision": self.n_queries_average_precision,
            "n_treatments": self.n_treatments,
            "n_excluded_unannotated": self.n_excluded_unannotated,
            "n_odds_ratio_infinite": self.n_odds_ratio_infinite,
            "n_odds_ratio_undefined": self.n_odds_ratio_undefined,
            "message": self.message,
            "settings": self.settings,
            "precision_at_recall": {
                "recall": RECALL_GRID.tolist(),
                "precision": [num(v) for v in self.precision_at_recall],
            },
        }


_PER_QUERY = [
    "n_positives",
    "n_library",
    "average_precision",
    "average_precision_interpolated",
    "foe_threshold",
    "foe_n_above",
    "foe_n_positives_above",
    "foe_odds_ratio",
    "foe_corrected",
    "foe_p_value",
]


def _empty(
    id_col: str,
    annotation: str,
    n_treat: int,
    n_unannot: int,
    settings: dict[str, Any],
    message: str,
    convention: Convention,
) -> RetrievalResult:
    logger.warning("retrieval evaluation: %s", message)
    return RetrievalResult(
        per_query=pd.DataFrame(columns=[id_col, annotation, *_PER_QUERY]),
        mean_average_precision=math.nan,
        mean_average_precision_interpolated=math.nan,
        folds_of_enrichment=math.nan,
        n_queries=0,
        n_queries_average_precision=0,
        n_treatments=n_treat,
        n_excluded_unannotated=n_unannot,
        n_odds_ratio_infinite=0,
        n_odds_ratio_undefined=0,
        precision_at_recall=np.full(len(RECALL_GRID), np.nan),
        curves=np.empty((0, len(RECALL_GRID))),
        settings=settings,
        message=message,
        convention=convention,
    )


def _settings(
    convention: Convention, id_col: str, annotation: str, sep: str | None, percentile: float
) -> dict[str, Any]:
    common: dict[str, Any] = {
        "convention": convention,
        "id_column": id_col,
        "annotation": annotation,
        "annotation_separator": sep,
        "similarity": "cosine",
        "aggregation": "mean of rows sharing the id",
        "foe_percentile": percentile,
        "foe_threshold": "per query, numpy linear interpolation over its similarities to the library",
        "unannotated_treatments": "excluded as queries and as library members",
    }
    if convention == "paper":
        return {**common, **paper.RULES, "average_precision_interpolated": "same as average_precision"}
    return {
        **common,
        "queries_average_precision": "treatments with at least one other treatment sharing an annotation",
        "queries_folds_of_enrichment": "treatments with at least one other treatment sharing an annotation",
        "average_precision": AP_RULE,
        "average_precision_interpolated": AP_INTERPOLATED_RULE,
        "ties": "positives first (as copairs)",
        "foe_infinite_odds_rule": INFINITE_ODDS_RULE,
        "similarity_precision": "float32",
    }


@dataclass(frozen=True)
class _QueryScores:
    """Per-query arrays for Q queries: float64 (Q,) unless noted."""

    ap: F64Array
    ap_interpolated: F64Array
    curves: F64Array  # (Q, R) interpolated precision at RECALL_GRID
    threshold: F64Array
    tables: np.ndarray  # (Q, 4) int64 FoE contingency tables: a, b, c, d
    odds_ratio: F64Array
    corrected: np.ndarray  # (Q,) bool: an infinite odds ratio was corrected
    p_value: F64Array
    n_positives: np.ndarray  # (Q,) int

    @classmethod
    def concatenate(cls, blocks: Sequence[_QueryScores]) -> _QueryScores:
        """Blocks of queries, in order -> one set of per-query arrays."""
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields(cls)})


def _annotated_treatments(
    table: pd.DataFrame, *, id_col: str, annotation: str, sep: str | None, names: Sequence[str]
) -> tuple[pd.DataFrame, list[frozenset[str]], int]:
    """(N rows) profile table -> (T rows) mean treatment profiles with an annotation, their (T,) label sets,
    and the number of treatments left out for having none."""
    treatments = collapse_by_id(table, id_col=id_col, features=names, annotations=[annotation])
    labels = label_sets(treatments[annotation], sep=sep)
    annotated = np.array([len(x) > 0 for x in labels], dtype=bool)
    return treatments.loc[annotated].reset_index(drop=True), [x for x in labels if x], int((~annotated).sum())


def _treatment_matrix(treatments: pd.DataFrame, names: Sequence[str], id_col: str) -> np.ndarray:
    """(T rows) treatment table -> (T, D) feature matrix; InputError naming treatments with NaN features."""
    values = feature_matrix(treatments, names)
    if np.isnan(values).any():
        bad = treatments.loc[np.isnan(values).any(axis=1), id_col].astype(str).head(3).tolist()
        raise InputError(f"treatment profiles with NaN features (e.g. {', '.join(bad)}); drop NaN rows first")
    return values


def _score_block(
    unit: np.ndarray, positives: np.ndarray, rows: np.ndarray, *, percentile: float, convention: Convention
) -> _QueryScores:
    """(T, D) unit-norm profiles, (T, T) bool positives, (Q,) query rows -> their scores against the
    leave-one-out library of T - 1 treatments; memory O(Q x T)."""
    n = len(unit)
    keep = np.ones((len(rows), n), dtype=bool)
    keep[np.arange(len(rows)), rows] = False
    similarities = unit[rows] @ unit.T
    scores = similarities[keep].reshape(len(rows), n - 1)
    pos = positives[rows][keep].reshape(len(rows), n - 1)
    if convention == "paper":
        similarities[np.arange(len(rows)), rows] = -1.0  # the query stays in its ranking as a non-match
        ap, curves = paper.paper_average_precision(
            similarities, positives[rows], n_points=n, grid=RECALL_GRID
        )
        ap_interpolated = ap
    else:
        relevance = rank_relevance(scores, pos)
        ap = average_precision(relevance)
        ap_interpolated = interpolated_average_precision(relevance)
        curves = precision_recall_curves(relevance)
    foe = folds_of_enrichment(scores, pos, percentile=percentile, convention=convention)
    return _QueryScores(
        ap=ap,
        ap_interpolated=ap_interpolated,
        curves=curves,
        threshold=foe.threshold,
        tables=foe.tables,
        odds_ratio=foe.odds_ratio,
        corrected=foe.corrected,
        p_value=foe.p_value,
        n_positives=pos.sum(axis=1),
    )


def _per_query_table(
    treatments: pd.DataFrame, queries: np.ndarray, scores: _QueryScores, *, id_col: str, annotation: str
) -> pd.DataFrame:
    """(Q,) query rows of the (T rows) treatment table + their scores -> (Q rows) id, annotation, _PER_QUERY."""
    per_query = treatments.loc[queries, [id_col, annotation]].reset_index(drop=True)
    per_query["n_positives"] = scores.n_positives.astype(np.int64)
    per_query["n_library"] = len(treatments) - 1
    per_query["average_precision"] = scores.ap
    per_query["average_precision_interpolated"] = scores.ap_interpolated
    per_query["foe_threshold"] = scores.threshold
    per_query["foe_n_above"] = scores.tables[:, 0] + scores.tables[:, 1]
    per_query["foe_n_positives_above"] = scores.tables[:, 0]
    per_query["foe_odds_ratio"] = scores.odds_ratio
    per_query["foe_corrected"] = scores.corrected
    per_query["foe_p_value"] = scores.p_value
    return per_query


def evaluate_retrieval(
    table: pd.DataFrame,
    *,
    id_col: str,
    annotation: str,
    sep: str | None = "|",
    features: Sequence[str] | None = None,
    percentile: float = PERCENTILE,
    block_rows: int = 1024,
    convention: Convention = "copairs",
) -> RetrievalResult:
    """(N rows) profile table -> ``RetrievalResult`` under the module's protocol and ``convention``;
    memory O(block_rows x N).

    Raises InputError only for unusable input (missing columns, NaN treatment profiles, unknown
    convention); degenerate but valid input gives an empty result with a message.
    """
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    names = feature_columns(table, features)
    settings = _settings(convention, id_col, annotation, sep, percentile)
    treatments, labels, n_unannot = _annotated_treatments(
        table, id_col=id_col, annotation=annotation, sep=sep, names=names
    )
    n = len(treatments)
    if n < 2:
        message = f"{n} annotated treatment(s): nothing to retrieve"
        return _empty(id_col, annotation, n, n_unannot, settings, message, convention)
    values = _treatment_matrix(treatments, names, id_col)
    positives = positive_matrix(labels)
    queries = np.flatnonzero(positives.any(axis=1))
    if len(queries) == 0:
        message = f"no two of the {n} treatments share a {annotation} value"
        return _empty(id_col, annotation, n, n_unannot, settings, message, convention)
    unit = normalize_rows(values, dtype=np.float64 if convention == "paper" else np.float32)
    blocks = [queries[start : start + block_rows] for start in range(0, len(queries), block_rows)]
    scores = _QueryScores.concatenate(
        [_score_block(unit, positives, rows, percentile=percentile, convention=convention) for rows in blocks]
    )
    odds = scores.odds_ratio
    has_ap = np.isfinite(scores.ap)
    mean_ap = float(np.mean(scores.ap[has_ap])) if has_ap.any() else math.nan
    mean_ap_interpolated = float(np.mean(scores.ap_interpolated[has_ap])) if has_ap.any() else math.nan
    message = ""
    if not has_ap.any():
        message = (
            f"no treatment shares a {annotation} value with two or more others: "
            "the paper convention's mAP has no query"
        )
        logger.warning("retrieval evaluation: %s", message)
    return RetrievalResult(
        per_query=_per_query_table(treatments, queries, scores, id_col=id_col, annotation=annotation),
        mean_average_precision=mean_ap,
        mean_average_precision_interpolated=mean_ap_interpolated,
        folds_of_enrichment=float(np.nanmean(odds)) if np.isfinite(odds).any() else math.nan,
        n_queries=len(queries),
        n_queries_average_precision=int(has_ap.sum()),
        n_treatments=n,
        n_excluded_unannotated=n_unannot,
        n_odds_ratio_infinite=int(scores.corrected.sum()),
        n_odds_ratio_undefined=int(np.isnan(odds).sum()),
        precision_at_recall=(
            scores.curves[has_ap].mean(axis=0) if has_ap.any() else np.full(len(RECALL_GRID), np.nan)
        ),
        curves=scores.curves,
        settings=settings,
        message=message,
        convention=convention,
    )
