"""Folds of enrichment (FoE) at the top percentile of similarities, as in the paper.

Per query: threshold t = ``np.percentile(scores, 99)`` over its similarities to the library (linear
interpolation). The 2x2 table counts library members with score strictly greater than t versus the
rest, by positive (shares an annotation) versus negative::

                 positive  negative
    above t         a         b
    rest            c         d

The one-sided Fisher exact test (alternative "greater") gives the p-value, computed as the
hypergeometric tail P(X >= a) (identical to ``scipy.stats.fisher_exact``), and FoE is its sample odds
ratio a*d / (b*c).

Infinite odds ratios (rule): the odds ratio is infinite or 0/0 exactly when b*c = 0 (no negative above
t, or every positive above t). For those queries FoE is the Haldane-Anscombe estimate
(a+0.5)(d+0.5) / ((b+0.5)(c+0.5)); all other queries keep the plain sample odds ratio (a query with
a = 0 and b, c > 0 keeps FoE = 0). A query with nothing strictly above t (its top 1% are ties) has
an undefined FoE: NaN, left out of the mean. The mean FoE averages the remaining queries; the counts
of corrected (infinite) and undefined queries are reported alongside.

Under the ``paper`` convention, the table and p-value are the same but the odds ratio follows the
paper's published code (``cpcnn.metrics.paper.paper_odds_ratios``): an infinite odds ratio becomes d.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import hypergeom

from cpcnn._types import Convention, F64Array, I64Array
from cpcnn.metrics.paper import paper_odds_ratios

PERCENTILE = 99.0
INFINITE_ODDS_RULE = (
    "odds ratio a*d/(b*c); where b*c == 0 (infinite or 0/0) the Haldane-Anscombe estimate "
    "(a+.5)(d+.5)/((b+.5)(c+.5)) is used instead; no library member strictly above the threshold -> NaN, "
    "excluded from the mean"
)


@dataclass(frozen=True)
class Enrichment:
    """Per-query FoE results for Q queries (arrays of length Q)."""

    threshold: F64Array
    tables: I64Array  # (Q, 4): a, b, c, d
    odds_ratio: F64Array  # after the convention's infinite-odds rule; NaN where undefined
    corrected: np.ndarray  # bool: the infinite-odds rule was applied
    p_value: F64Array


def enrichment_tables(
    scores: np.ndarray, positives: np.ndarray, *, percentile: float = PERCENTILE
) -> tuple[F64Array, I64Array]:
    """(Q, M) scores, (Q, M) bool positives -> (Q,) float64 thresholds, (Q, 4) int64 [a, b, c, d]; M >= 1."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    threshold = np.percentile(s, percentile, axis=1)
    above = s > threshold[:, None]
    a = np.sum(above & pos, axis=1)
    b = np.sum(above & ~pos, axis=1)
    c = np.sum(pos, axis=1) - a
    d = np.sum(~pos, axis=1) - b
    return threshold, np.stack([a, b, c, d], axis=1).astype(np.int64)


def odds_ratios(tables: I64Array) -> tuple[F64Array, np.ndarray]:
    """(Q, 4) int [a, b, c, d] -> (Q,) float64 odds ratios under the module's infinite-odds rule, (Q,) bool corrected."""
    t = np.asarray(tables, dtype=np.float64)
    a, b, c, d = t.T
    corrected = (b * c == 0) & (a + b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = a * d / (b * c)
    haldane = (a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5))
    out = np.where(corrected, haldane, raw)
    out[a + b == 0] = np.nan
    return out, corrected


def fisher_greater_pvalues(tables: I64Array) -> F64Array:
    """(Q, 4) int [a, b, c, d] -> (Q,) float64 one-sided Fisher exact p-values P(X >= a) (alternative "greater")."""
    a, b, c, d = np.asarray(tables, dtype=np.int64).T
    return np.asarray(hypergeom.sf(a - 1, a + b + c + d, a + c, a + b), dtype=np.float64)


def folds_of_enrichment(
    scores: np.ndarray,
    positives: np.ndarray,
    *,
    percentile: float = PERCENTILE,
    convention: Convention = "copairs",
) -> Enrichment:
    """(Q, M) similarities to the library, (Q, M) bool positives -> per-query ``Enrichment``; see module rule."""
    threshold, tables = enrichment_tables(scores, positives, percentile=percentile)
    ratio, corrected = paper_odds_ratios(tables) if convention == "paper" else odds_ratios(tables)
    return Enrichment(
        threshold=threshold,
        tables=tables,
        odds_ratio=ratio,
        corrected=corrected,
        p_value=fisher_greater_pvalues(tables),
    )
