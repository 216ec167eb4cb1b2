"""Retrieval metrics: copairs equality on the real LINCS plate, kernels against loop oracles, degenerate input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracles import average_precision_naive, foe_naive, interpolated_average_precision_naive

from cpcnn.errors import InputError
from cpcnn.metrics import (
    average_precision,
    evaluate_retrieval,
    folds_of_enrichment,
    interpolated_average_precision,
    label_sets,
    odds_ratios,
    positive_matrix,
    rank_relevance,
)
from cpcnn.profiles import collapse_by_id, feature_columns, read_profiles

LINCS = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/profiles/lincs-SQ00015054/SQ00015054_normalized_feature_select.csv.gz"
)
ID, MOA = "Metadata_broad_sample", "Metadata_moa"


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    if not LINCS.is_file():
        pytest.skip("shared LINCS plate not present")
    return read_profiles(LINCS)


def treatment_level(table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    names = feature_columns(table)
    treatments = collapse_by_id(table, id_col=ID, features=names, annotations=[MOA])
    treatments = treatments[treatments[MOA].notna()].reset_index(drop=True)
    return treatments, treatments[names].to_numpy(np.float64)


def test_single_label_ap_equals_copairs(lincs: pd.DataFrame) -> None:
    copairs_map = pytest.importorskip("copairs.map")
    treatments, feats = treatment_level(lincs)
    ref = copairs_map.average_precision(
        treatments[[ID, MOA]],
        feats,
        pos_sameby=[MOA],
        pos_diffby=[ID],
        neg_sameby=[],
        neg_diffby=[MOA],
        progress_bar=False,
    ).dropna(subset=["average_precision"])
    ours = evaluate_retrieval(lincs, id_col=ID, annotation=MOA, sep=None)
    merged = ref.merge(ours.per_query, on=ID)
    assert ours.n_queries == len(ref) == len(merged) == 10
    np.testing.assert_allclose(merged["average_precision_x"], merged["average_precision_y"], atol=1e-6)
    assert ours.mean_average_precision == pytest.approx(ref["average_precision"].mean(), abs=1e-6)


def test_multilabel_ap_equals_copairs_on_the_same_pairs(lincs: pd.DataFrame) -> None:
    pytest.importorskip("copairs")
    from copairs import compute
    from copairs.map.average_precision import build_rank_lists

    treatments, feats = treatment_level(lincs)
    shared = positive_matrix(label_sets(treatments[MOA], sep="|"))
    upper = np.stack(np.triu_indices(len(treatments), 1), axis=1)
    is_pos = shared[upper[:, 0], upper[:, 1]]
    pos_pairs, neg_pairs = upper[is_pos], upper[~is_pos]
    cosine = compute.get_similarity_fn("cosine", progress_bar=False)
    paired, rel_k, counts = build_rank_lists(
        pos_pairs, neg_pairs, cosine(feats, pos_pairs, 20_000), cosine(feats, neg_pairs, 20_000)
    )
    ap, _ = compute.ap_contiguous(rel_k, counts)
    ref = pd.DataFrame({ID: treatments[ID].to_numpy()[paired], "ref": ap}).dropna()
    ours = evaluate_retrieval(lincs, id_col=ID, annotation=MOA, sep="|")
    merged = ref.merge(ours.per_query, on=ID)
    assert ours.n_queries == len(ref) == len(merged) == 16 and ours.n_excluded_unannotated == 4
    np.testing.assert_allclose(merged["ref"], merged["average_precision"], atol=1e-6)


def test_ap_kernels_match_loop_oracles() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (40, 30)).astype(np.float32)  # many ties
    positives = rng.random((40, 30)) < 0.2
    relevance = rank_relevance(scores, positives)
    want = [average_precision_naive(s, p) for s, p in zip(scores, positives, strict=True)]
    want_i = [interpolated_average_precision_naive(s, p) for s, p in zip(scores, positives, strict=True)]
    np.testing.assert_allclose(average_precision(relevance), want, rtol=1e-12)
    np.testing.assert_allclose(interpolated_average_precision(relevance), want_i, rtol=1e-12)
    assert (
        interpolated_average_precision(relevance)[~np.isnan(want)] >= np.array(want)[~np.isnan(want)]
    ).all()


def test_foe_matches_fisher_exact_loop_and_rule() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((60, 300))
    positives = rng.random((60, 300)) < 0.05
    top3 = np.argsort(-scores[:10], axis=1)[:, :3]
    positives[np.arange(10)[:, None], top3] = True  # all of the top 1% positive: infinite odds ratios
    foe = folds_of_enrichment(scores, positives)
    assert 0 < foe.corrected.sum() < 60
    for i in range(60):
        raw, p, table = foe_naive(scores[i], positives[i])
        assert foe.tables[i].tolist() == table
        assert foe.p_value[i] == pytest.approx(p, rel=1e-9)
        a, b, c, d = table
        if np.isfinite(raw) and b * c > 0:
            assert foe.odds_ratio[i] == pytest.approx(raw, rel=1e-12) and not foe.corrected[i]
        else:
            assert foe.corrected[i]
            assert foe.odds_ratio[i] == pytest.approx((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    ratio, corrected = odds_ratios(np.array([[0, 0, 2, 50], [0, 3, 2, 50], [2, 0, 0, 50]]))
    assert np.isnan(ratio[0]) and ratio[1] == 0.0 and corrected.tolist() == [False, False, True]


def synthetic(n: int, moas: list[str | None]) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    table = pd.DataFrame(rng.standard_normal((n, 5)).astype(np.float32), columns=[f"f{i}" for i in range(5)])
    table.insert(0, ID, [f"BRD-{i}" for i in range(n)])
    table.insert(1, MOA, moas)
    return table


def test_degenerate_inputs_give_explicit_empty_results() -> None:
    single = evaluate_retrieval(synthetic(1, ["a"]), id_col=ID, annotation=MOA)
    assert (
        single.n_queries == 0 and np.isnan(single.mean_average_precision) and "1 annotated" in single.message
    )
    disjoint = evaluate_retrieval(synthetic(4, ["a", "b", "c|d", None]), id_col=ID, annotation=MOA)
    assert disjoint.n_queries == 0 and disjoint.n_excluded_unannotated == 1 and "share" in disjoint.message
    assert disjoint.to_dict()["folds_of_enrichment"] is None and disjoint.per_query.empty
    overlap = evaluate_retrieval(synthetic(4, ["a", "b", "c|a", None]), id_col=ID, annotation=MOA)
    assert overlap.n_queries == 2 and set(overlap.per_query[ID]) == {"BRD-0", "BRD-2"}
    assert overlap.per_query["n_library"].tolist() == [2, 2]
    with pytest.raises(InputError, match="annotation columns not in the table"):
        evaluate_retrieval(synthetic(3, ["a", "a", "b"]), id_col=ID, annotation="Metadata_nope")


def test_lincs_metrics_are_consistent(lincs: pd.DataFrame) -> None:
    result = evaluate_retrieval(lincs, id_col=ID, annotation=MOA)
    summary = result.to_dict()
    assert summary["n_queries"] == 16 and summary["n_treatments"] == 55
    assert 0 < summary["mean_average_precision"] <= summary["mean_average_precision_interpolated"] <= 1
    assert summary["folds_of_enrichment"] > 1 and summary["settings"]["annotation"] == MOA
    assert result.curves.shape == (16, 101) and np.all(np.diff(result.precision_at_recall) <= 1e-12)
