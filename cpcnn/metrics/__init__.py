"""Retrieval metrics of profiles: mAP (copairs-exact and interpolated), folds of enrichment, lambda sweeps.

Two conventions: ``copairs`` (default) and ``paper`` (the CNN-1 paper's published evaluation code,
``cpcnn.metrics.paper``).

Pure functions on DataFrames/arrays returning dataclasses; plots live in ``cpcnn.metrics.report``
(``plots`` extra, imported lazily).
"""

from cpcnn.metrics.enrichment import (
    INFINITE_ODDS_RULE,
    Enrichment,
    enrichment_tables,
    fisher_greater_pvalues,
    folds_of_enrichment,
    odds_ratios,
)
from cpcnn.metrics.paper import paper_average_precision, paper_interpolated_precision, paper_odds_ratios
from cpcnn.metrics.retrieval import (
    RECALL_GRID,
    RetrievalResult,
    average_precision,
    evaluate_retrieval,
    interpolated_average_precision,
    interpolated_precision,
    label_sets,
    positive_matrix,
    precision_recall_curves,
    rank_relevance,
)
from cpcnn.metrics.sweep import SweepPoint, SweepResult, sweep_lambda

__all__ = [
    "INFINITE_ODDS_RULE",
    "RECALL_GRID",
    "Enrichment",
    "RetrievalResult",
    "SweepPoint",
    "SweepResult",
    "average_precision",
    "enrichment_tables",
    "evaluate_retrieval",
    "fisher_greater_pvalues",
    "folds_of_enrichment",
    "interpolated_average_precision",
    "interpolated_precision",
    "label_sets",
    "odds_ratios",
    "paper_average_precision",
    "paper_interpolated_precision",
    "paper_odds_ratios",
    "positive_matrix",
    "precision_recall_curves",
    "rank_relevance",
    "sweep_lambda",
]
