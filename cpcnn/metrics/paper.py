"""The paper's evaluation conventions, ported from its experiments repository.

Source: ``broadinstitute/DeepProfilerExperiments`` (the code behind the published CNN-1 tables):
``profiling/metrics.py`` (``interpolated_precision_recall_curve``), ``profiling/quality.py``
(``enrichment_analysis``), ``profiling/profiling.py`` (``load_similarity_matrix``) and the
``{bbbc022,cdrp,ta-orf}/04-downstream-analysis.ipynb`` notebooks that call them. Re-implemented here
from a reading of that code; every rule below names the place it mirrors.

What the paper's procedure does, and where it differs from the ``copairs`` convention:

- **Treatments and library** (``load_similarity_matrix``; ``01-create-profiles``): sphered wells are
  averaged per treatment (replicates become one profile), and treatments without an annotation are
  dropped before the similarity matrix is built, so they are neither queries nor library members.
  Same as the ``copairs`` convention.
  Similarity is cosine, computed in float64 (sklearn ``cosine_similarity``).
- **Hits** (notebook cell "MOA matching"): two treatments match when they share one ``|``-separated
  annotation value (``bbbc022``, ``cdrp``); ``ta-orf`` compares whole strings (``--sep ''`` here).
  The notebooks match values with regular expressions; here values are compared literally, which is
  the same for every value without regular-expression metacharacters.
- **Queries differ per metric.** Folds of enrichment (notebook cell "Enrichment analysis"): every
  treatment with at least one other matching treatment. mAP (``interpolated_precision_recall_curve``):
  the match matrix's diagonal is cleared before ``is_query = column sum > 1``, so only treatments with
  **at least two** other matching treatments are queries. A treatment whose annotation is shared by
  exactly one other treatment counts for FoE but not for mAP.
- **Folds of enrichment** (``enrichment_analysis``): per query, over its similarities to every other
  treatment (its own is removed), threshold = ``np.percentile(similarities, 99)`` (numpy's default
  linear interpolation, per query, not global). 2x2 table: strictly above the threshold vs at or
  below it, by match vs no match; ``scipy.stats.fisher_exact(alternative="greater")`` gives the odds
  ratio ``a*d / (b*c)``. scipy returns NaN when a row or column of the table sums to 0 and infinity
  when ``b == 0`` or ``c == 0`` otherwise. **An infinite odds ratio is replaced by ``d``**, the number
  of non-matching treatments at or below the threshold (the table's lower-right cell). The FoE is
  the mean over queries. The published code has no rule for NaN: the ``bbbc022`` and ``cdrp`` notebooks
  stop with an error when they meet one, and ``ta-orf`` returns NaN for the mean. Here a NaN query is
  left out of the mean and counted, as in the ``copairs`` convention.
- **mAP** (``interpolated_precision_recall_curve``): in each query row, the query's own similarity is
  set to -1 and its label to "no match", so the query stays in its own library as a negative scoring
  -1. This changes the result only when a match scores -1 or less. The row goes to scikit-learn's
  ``precision_recall_curve``. The notebooks ran on Python 3.7 (their kernel metadata says 3.7.3), and
  scikit-learn 1.1 and later need Python 3.8, so the notebooks used scikit-learn 1.0 or older.
  Before 1.1, that function made one point per distinct similarity, so tied treatments enter
  together and precision is taken after the whole tie. It stopped at the first point that reaches
  full recall and appended (precision 1, recall 0). Precision is then replaced by its running
  maximum from the full-recall end (``np.maximum.accumulate``). It is read on a recall axis of ``N``
  points from 1 down to 0, where ``N`` is the number of annotated treatments, not the number of
  matches. The published loop writes a point *before* moving to the curve point of that recall
  value, so axis point ``i`` (``i >= 1``) gets the running maximum at the first curve point whose
  recall is <= axis point ``i - 1``, and point 0 gets the precision at full recall. A query's AP is the
  mean of its ``N`` values. The mAP is the mean over queries. This is the mean of the published mean
  curve. The steps lag the true interpolated precision by one recall level, so the result is close
  to, but not equal to, the textbook interpolated AP.
"""

from __future__ import annotations

import numpy as np

from cpcnn._types import F64Array, I64Array

SOURCE = "broadinstitute/DeepProfilerExperiments"

#: The paper convention's rules, as reported in the metrics JSON ``settings``.
RULES: dict[str, str] = {
    "source": f"{SOURCE}: profiling/metrics.py, profiling/quality.py, */04-downstream-analysis.ipynb",
    "queries_average_precision": "treatments with at least two other treatments sharing an annotation",
    "queries_folds_of_enrichment": "treatments with at least one other treatment sharing an annotation",
    "average_precision": (
        "interpolated (metrics.interpolated_precision_recall_curve): running-max precision of the "
        "scikit-learn<=1.0 precision-recall curve (one point per distinct score, stopped at full recall), "
        "read with the published one-step lag on N = n_treatments recall points from 1 to 0, averaged"
    ),
    "ties": "tied scores enter the precision-recall curve together (scikit-learn)",
    "self_similarity": "excluded from FoE; kept in the mAP ranking as a non-match scoring -1",
    "foe_infinite_odds_rule": (
        "scipy.stats.fisher_exact odds ratio; infinite (b == 0 or c == 0) -> d, the non-matching treatments "
        "at or below the threshold (quality.enrichment_analysis); a row or column of the table summing to "
        "0 -> NaN, excluded from the mean"
    ),
    "similarity_precision": "float64",
}


def paper_odds_ratios(tables: I64Array) -> tuple[F64Array, np.ndarray]:
    """(Q, 4) int [a, b, c, d] -> (Q,) float64 odds ratios as ``quality.enrichment_analysis``, (Q,) bool replaced.

    scipy's ``fisher_exact``: NaN when a row or column sums to 0; infinity when b == 0 or c == 0
    otherwise, which the published code replaces by d (``replaced`` marks those queries);
    else a*d / (b*c).
    """
    a, b, c, d = np.asarray(tables, dtype=np.float64).T
    undefined = (a + b == 0) | (c + d == 0) | (a + c == 0) | (b + d == 0)
    replaced = ~undefined & ((b == 0) | (c == 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(replaced, d, a * d / (b * c))
    out[undefined] = np.nan
    return out, replaced


def paper_recall_axis(n_points: int) -> F64Array:
    """The published recall axis: ``n_points`` evenly spaced values from 1 down to 0."""
    return np.linspace(0.0, 1.0, num=n_points)[::-1]


def _truncated_pr_curve(scores: F64Array, positives: np.ndarray) -> tuple[F64Array, F64Array]:
    """One query -> (precision, recall) as scikit-learn <= 1.0 ``precision_recall_curve`` orders them.

    One point per distinct score, from the lowest threshold that reaches full recall up to the highest,
    then the appended (1, 0) point; recall is non-increasing along the arrays. Needs >= 1 positive.
    """
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tps = np.cumsum(positives[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    full = int(np.searchsorted(tps, tps[-1]))
    return np.r_[precision[full::-1], 1.0], np.r_[recall[full::-1], 0.0]


def _read_on_axis(precision: F64Array, recall: F64Array, axis: F64Array) -> F64Array:
    """Running-max precision read on a decreasing recall axis, as the loop of
    ``metrics.interpolated_precision_recall_curve`` does. Point 0 takes the value at the curve's first
    point. Point i >= 1 takes it at the first curve point whose recall is <= axis[i - 1], because the
    loop writes before it advances."""
    best = np.maximum.accumulate(precision)
    located = np.searchsorted(-recall, -np.asarray(axis[:-1]), side="left")
    return best[np.r_[0, located]]


def paper_interpolated_precision(scores: np.ndarray, positives: np.ndarray, axis: F64Array) -> F64Array:
    """One query's scores and bool matches (>= 1), a decreasing recall axis -> interpolated precision per axis point."""
    precision, recall = _truncated_pr_curve(
        np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    )
    return _read_on_axis(precision, recall, axis)


def paper_average_precision(
    scores: np.ndarray, positives: np.ndarray, *, n_points: int, grid: F64Array
) -> tuple[F64Array, F64Array]:
    """(Q, N) scores with the query's own column at -1, (Q, N) bool matches (own column False) ->
    (Q,) AP on the ``n_points`` published recall axis and (Q, len(grid)) the same procedure read on the
    increasing ``grid`` (for plots); NaN for rows with fewer than two matches (not mAP queries)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    axis = paper_recall_axis(n_points)
    grid_desc = np.asarray(grid, dtype=np.float64)[::-1]
    ap = np.full(len(s), np.nan)
    curves = np.full((len(s), len(grid_desc)), np.nan)
    for i in np.flatnonzero(pos.sum(axis=1) >= 2):
        precision, recall = _truncated_pr_curve(s[i], pos[i])
        ap[i] = _read_on_axis(precision, recall, axis).mean()
        curves[i] = _read_on_axis(precision, recall, grid_desc)[::-1]
    return ap, curves
