"""Both evaluation conventions on hand-computed cases, against loop oracles, and on the real LINCS plate.

``paper`` mirrors the published evaluation code of the CNN-1 paper's experiments repository
(broadinstitute/DeepProfilerExperiments: profiling/metrics.py, profiling/quality.py, the
04-downstream-analysis notebooks); ``copairs`` is the default and must stay numerically unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracles import paper_average_precision_naive, paper_interpolated_precision_naive, paper_odds_ratio_naive

from cpcnn.errors import InputError
from cpcnn.metrics import evaluate_retrieval, folds_of_enrichment, odds_ratios
from cpcnn.metrics.paper import paper_average_precision, paper_interpolated_precision, paper_odds_ratios
from cpcnn.metrics.retrieval import RECALL_GRID
from cpcnn.profiles import read_profiles

LINCS = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/profiles/lincs-SQ00015054/SQ00015054_normalized_feature_select.csv.gz"
)
ID, MOA = "Metadata_id", "Metadata_moa"


def paper_ap(scores: list[float], positives: list[bool], n_points: int) -> float:
    axis = np.linspace(0.0, 1.0, n_points)[::-1]
    return float(paper_interpolated_precision(np.array(scores), np.array(positives), axis).mean())


def test_paper_ap_hand_cases() -> None:
    # Lag. Ranking P N P N (0.9, 0.8, 0.7, 0.6), 5 recall points 1, .75, .5, .25, 0.
    # Curve points (precision, recall) from the highest score: (1, .5), (.5, .5), (2/3, 1) [full recall: stop].
    # Read from full recall: (2/3, 1), (.5, .5), (1, .5), then (1, 0); running max 2/3, 2/3, 1, 1.
    # Axis 1 -> 2/3; .75 -> 2/3 (still at the first point); .5 -> running max at the first point with
    # recall <= .75, i.e. (.5, .5): 2/3; .25 -> same point: 2/3; 0 -> first point with recall <= .25,
    # (1, 0): 1. AP = (4 * 2/3 + 1) / 5 = 11/15, where the textbook interpolated AP is (1 + 2/3) / 2 = 5/6.
    assert paper_ap([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 5) == pytest.approx(11 / 15, abs=1e-15)
    # Ties enter together. Ranking (N 0.9, P 0.9), N 0.5, P 0.3; 5 recall points.
    # Points: tie block -> (1/2, 1/2); 0.5 -> (1/3, 1/2); 0.3 -> (1/2, 1) [stop]. From full recall:
    # (1/2, 1), (1/3, 1/2), (1/2, 1/2), (1, 0); running max 1/2, 1/2, 1/2, 1. Axis values: 1/2 four
    # times, then 1 at recall 0. AP = 3/5. copairs breaks the tie positives first (P N N P): (1 + 2/4)/2 = 3/4.
    assert paper_ap([0.9, 0.9, 0.5, 0.3], [False, True, False, True], 5) == pytest.approx(3 / 5, abs=1e-15)
    # Stop at full recall. P P N, 3 recall points: points (1, 1/2), (1, 1) [stop]; all precisions 1 -> AP 1.
    # The scikit-learn >= 1.1 curve keeps the point (2/3, 1) after full recall and would give 7/9.
    assert paper_ap([0.9, 0.8, 0.7], [True, True, False], 3) == 1.0


def test_odds_ratio_rules_hand_cases() -> None:
    tables = np.array(
        [
            [1, 0, 0, 53],  # LINCS: the only hit is the top match. scipy: inf. paper: d = 53.
            [1, 0, 2, 50],  # b = 0: inf -> paper d = 50; Haldane-Anscombe 1.5*50.5/(0.5*2.5) = 60.6
            [2, 1, 3, 50],  # finite: 2*50/(1*3) in both
            [0, 3, 2, 50],  # no hit above: 0 in both
            [0, 0, 2, 50],  # nothing strictly above the threshold: undefined in both
            [1, 0, 1, 0],  # no non-hit at all: scipy NaN (a column sums to 0); Haldane 1.5*0.5/(0.5*1.5) = 1
        ]
    )
    paper, replaced = paper_odds_ratios(tables)
    np.testing.assert_allclose(paper, [53, 50, 100 / 3, 0, np.nan, np.nan], rtol=1e-15)
    assert replaced.tolist() == [True, True, False, False, False, False]
    ours, corrected = odds_ratios(tables)
    # copairs convention: (1.5 * 53.5) / (0.5 * 0.5) = 321
    np.testing.assert_allclose(ours, [321, 60.6, 100 / 3, 0, np.nan, 1.0], rtol=1e-12)
    assert corrected.tolist() == [True, True, False, False, False, True]


def angles_table() -> pd.DataFrame:
    """Six treatments on the unit circle (cosine = cos of the angle between them).

    T0 0 deg a | T1 15 deg b | T2 40 deg a | T3 70 deg a|c | T4 120 deg c | T5 210 deg d
    """
    angles = np.deg2rad([0, 15, 40, 70, 120, 210])
    return pd.DataFrame(
        {
            ID: [f"T{i}" for i in range(6)],
            MOA: ["a", "b", "a", "a|c", "c", "d"],
            "f0": np.cos(angles),
            "f1": np.sin(angles),
        }
    )


def test_both_conventions_on_a_hand_built_table() -> None:
    # Hits: T0 {T2, T3}; T2 {T0, T3}; T3 {T0, T2, T4}; T4 {T3}; T1 and T5 none (not queries).
    # Rankings by angle: T0: T1 T2* T3* T4 T5 | T2: T1 T3* T0* T4 T5 | T3: T2* T4* T1 T0* T5 | T4: T3* ...
    # Top 1% of 5 library members = the single best match (99th percentile lies between the top two).
    # FoE tables [a b c d]: T0 [0 1 2 2] -> 0; T2 [0 1 2 2] -> 0; T3 [1 0 2 2]; T4 [1 0 0 4].
    copairs = evaluate_retrieval(angles_table(), id_col=ID, annotation=MOA)
    # AP: T0, T2 (1/2 + 2/3)/2 = 7/12; T3 (1 + 1 + 3/4)/3 = 11/12; T4 1.
    np.testing.assert_allclose(copairs.per_query["average_precision"], [7 / 12, 7 / 12, 11 / 12, 1])
    # Interpolated over the positives: T0, T2 (2/3 + 2/3)/2; T3 11/12; T4 1.
    np.testing.assert_allclose(
        copairs.per_query["average_precision_interpolated"], [2 / 3, 2 / 3, 11 / 12, 1]
    )
    # Haldane-Anscombe: T3 1.5*2.5/(0.5*2.5) = 3; T4 1.5*4.5/(0.5*0.5) = 27.
    np.testing.assert_allclose(copairs.per_query["foe_odds_ratio"], [0, 0, 3, 27])
    assert copairs.mean_average_precision == pytest.approx(37 / 48, abs=1e-15)
    assert (
        copairs.folds_of_enrichment == 7.5 and copairs.n_queries == copairs.n_queries_average_precision == 4
    )

    paper = evaluate_retrieval(angles_table(), id_col=ID, annotation=MOA, convention="paper")
    # mAP queries need two hits: T0, T2, T3 (T4 has one). N = 6 recall points 1, .8, .6, .4, .2, 0.
    # T0: points (0, 0), (1/2, 1/2), (2/3, 1) [stop]; from full recall (2/3, 1), (1/2, 1/2), (0, 0),
    #     (1, 0), running max 2/3 everywhere before the last point, which is never reached (the axis
    #     stops at the first recall-0 point): AP 2/3. Same for T2.
    # T3: points (1, 1/3), (1, 2/3), (2/3, 2/3), (3/4, 1) [stop]; from full recall: running max
    #     3/4, 3/4, 1, 1, 1 at recalls 1, 2/3, 2/3, 1/3, 0. Axis 1 -> 3/4; .8 -> 3/4; .6 -> point for .8
    #     (recall 2/3, first of the two): 3/4; .4 -> point for .6 (recall 1/3): 1; .2 -> 1; 0 -> 1. AP 7/8.
    np.testing.assert_allclose(paper.per_query["average_precision"], [2 / 3, 2 / 3, 7 / 8, np.nan])
    assert paper.mean_average_precision == pytest.approx((2 / 3 + 2 / 3 + 7 / 8) / 3, abs=1e-15)  # 53/72
    assert paper.mean_average_precision_interpolated == paper.mean_average_precision
    # Infinite odds ratios become d: T3 -> 2, T4 -> 4. FoE = (0 + 0 + 2 + 4) / 4.
    np.testing.assert_allclose(paper.per_query["foe_odds_ratio"], [0, 0, 2, 4])
    assert paper.folds_of_enrichment == 1.5 and paper.n_odds_ratio_infinite == 2
    assert (paper.n_queries, paper.n_queries_average_precision) == (4, 3)
    summary = paper.to_dict()
    assert summary["convention"] == "paper" and copairs.to_dict()["convention"] == "copairs"
    assert (
        summary["n_queries_average_precision"] == 3
        and "DeepProfilerExperiments" in summary["settings"]["source"]
    )
    assert np.isnan(paper.curves[3]).all() and np.isfinite(paper.precision_at_recall).all()


def test_paper_kernels_match_loop_oracles() -> None:
    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(3, 40))
        scores = rng.integers(-3, 4, n) / 4.0 if trial % 2 else rng.standard_normal(n)  # ties, or none
        positives = rng.random(n) < 0.3
        positives[rng.integers(0, n, 2)] = True
        n_points = int(rng.integers(2, 60))
        want = paper_average_precision_naive(scores, positives, n_points)
        got, curves = paper_average_precision(
            scores[None], positives[None], n_points=n_points, grid=RECALL_GRID
        )
        assert got[0] == pytest.approx(want, rel=1e-12, abs=1e-15)
        on_grid = paper_interpolated_precision_naive(scores, positives, RECALL_GRID[::-1].tolist())[::-1]
        np.testing.assert_allclose(curves[0], on_grid, rtol=1e-15)
        library = np.concatenate([scores, [0.0]])  # FoE: one more non-hit so that some tables are finite
        hits = np.concatenate([positives, [False]])
        foe = folds_of_enrichment(library[None], hits[None], convention="paper")
        want_foe = paper_odds_ratio_naive(library, hits)
        assert foe.odds_ratio[0] == pytest.approx(want_foe, rel=1e-12, nan_ok=True)


def test_unknown_convention_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown convention 'nature'"):
        evaluate_retrieval(angles_table(), id_col=ID, annotation=MOA, convention="nature")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    if not LINCS.is_file():
        pytest.skip("shared LINCS plate not present")
    return read_profiles(LINCS)


def test_lincs_compound_level_both_conventions(lincs: pd.DataFrame) -> None:
    # 55 annotated compounds; 16 share a MoA with exactly one other compound.
    kw = {"id_col": "Metadata_broad_sample", "annotation": "Metadata_moa"}
    copairs = evaluate_retrieval(lincs, **kw)
    # Unchanged default numbers (as before the paper convention existed).
    assert copairs.mean_average_precision == pytest.approx(0.2909119630594249, abs=1e-12)
    # 4 queries have their only hit as top match: [1 0 0 53] -> Haldane 321; 12 queries -> 0.
    assert copairs.folds_of_enrichment == pytest.approx(4 * 321 / 16)  # 80.25
    paper = evaluate_retrieval(lincs, **kw, convention="paper")
    # Same 4 tables -> d = 53 each: 4 * 53 / 16 = 13.25, as the published code computes it.
    assert paper.folds_of_enrichment == pytest.approx(13.25) and paper.n_queries == 16
    # No compound has two hits: the published mAP has no query (its code stops with an error).
    assert paper.n_queries_average_precision == 0 and math.isnan(paper.mean_average_precision)
    assert "no query" in paper.message and paper.to_dict()["mean_average_precision"] is None


def test_lincs_well_level_paper_equals_the_published_code(lincs: pd.DataFrame) -> None:
    # Each well a treatment (342 annotated): every MoA has >= 2 other wells, so the mAP has queries.
    # Reference numbers: profiling/metrics.py and profiling/quality.py of DeepProfilerExperiments with the
    # notebook's query and match cells, run under Python 3.7.16, scikit-learn 1.0.2, scipy 1.7.3 on
    # these well profiles (float32, as read).
    wells = lincs.copy().assign(Metadata_well_id=lincs["Metadata_Plate"] + "_" + lincs["Metadata_Well"])
    paper = evaluate_retrieval(
        wells, id_col="Metadata_well_id", annotation="Metadata_moa", convention="paper"
    )
    assert paper.n_treatments == paper.n_queries == paper.n_queries_average_precision == 342
    assert paper.mean_average_precision == pytest.approx(0.30927397737793233, rel=1e-9)
    assert paper.folds_of_enrichment == pytest.approx(93.79738466536712, rel=1e-9)
    copairs = evaluate_retrieval(wells, id_col="Metadata_well_id", annotation="Metadata_moa")
    assert copairs.n_odds_ratio_infinite == paper.n_odds_ratio_infinite == 42
    assert copairs.folds_of_enrichment > 1.4 * paper.folds_of_enrichment
