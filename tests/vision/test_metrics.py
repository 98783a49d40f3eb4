"""Tests of ``retrieval.vision.metrics``: retrieval, recognition and pair metrics computed by hand.

Plain pytest, no Django: run with ``pytest tests/vision/test_metrics.py -p no:django``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Set
from pathlib import Path

import numpy as np
import pytest

from retrieval.vision.datasets import QuerySpec
from retrieval.vision.metrics import (
    average_precision,
    epipolar_errors,
    global_average_precision,
    mean_average_precision,
    median,
    nan_mean,
    pair_metrics,
    precision_at_k,
    rank_by_score,
    recall_at_k,
    recognition_accuracy,
    retrieval_metrics,
    roc_auc,
    score_queries,
    transfer_errors,
)


def _query(qid: str, positives: Set[str], junk: Set[str] = frozenset()) -> QuerySpec:
    return QuerySpec(
        id=qid,
        path=Path(f"/nowhere/{qid}.jpg"),
        landmark=None,
        bbox=None,
        positives=frozenset(positives),
        junk=frozenset(junk),
    )


def _revisitop_reference(
    ranked: list[str], positives: set[str], junk: set[str], kappas: tuple[int, ...]
) -> tuple[float, list[float]]:
    """A line-by-line transcription of revisitop's compute_map/compute_ap for one query
    (github.com/filipradenovic/revisitop, python/evaluate.py, MIT), on a full ranking."""
    pos = [i for i, x in enumerate(ranked) if x in positives]
    jnk = [i for i, x in enumerate(ranked) if x in junk]
    k = 0
    ij = 0
    for ip in range(len(pos)):
        while ij < len(jnk) and pos[ip] > jnk[ij]:
            k += 1
            ij += 1
        pos[ip] = pos[ip] - k
    ap = 0.0
    recall_step = 1.0 / len(positives)
    for j, rank in enumerate(pos):
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    pos1 = np.array(pos) + 1
    prs = []
    for kappa in kappas:
        kq = min(max(pos1), kappa)
        prs.append(float((pos1 <= kq).sum() / kq))
    return ap, prs


# --- average precision ------------------------------------------------------------------


def test_average_precision_is_one_when_all_positives_come_first() -> None:
    assert average_precision(["p1", "p2", "n1", "n2"], {"p1", "p2"}, set()) == 1.0


def test_average_precision_removes_junk_before_scoring() -> None:
    # Ranking a J b p1 c p2, positives {p1, p2, p3}, junk {J}. Without J: a b p1 c p2,
    # so p1 is at 0-based rank 2 and p2 at rank 4; p3 is never retrieved. n = 3.
    #   p1 (j=0, r=2): p0 = 0/2 = 0,   p1 = 1/3 -> (0 + 1/3) / 2 / 3     = 1/18  = 20/360
    #   p2 (j=1, r=4): p0 = 1/4,       p1 = 2/5 -> (1/4 + 2/5) / 2 / 3   = 13/120 = 39/360
    #   p3: missing, adds 0.                                       AP = 59/360
    ranking = ["a", "J", "b", "p1", "c", "p2"]
    ap = average_precision(ranking, {"p1", "p2", "p3"}, {"J"})
    assert ap == pytest.approx(59 / 360)


def test_average_precision_counts_junk_positions_as_absent() -> None:
    # Junk ahead of the only positive does not cost anything.
    assert average_precision(["J1", "J2", "p"], {"p"}, {"J1", "J2"}) == 1.0


def test_average_precision_of_single_positive_at_rank_two_uses_trapezoid() -> None:
    # r = 1, j = 0: p0 = 0/1 = 0, p1 = 1/2 -> AP = (0 + 1/2) / 2 = 1/4 (not 1/2 as
    # in the non-interpolated definition).
    assert average_precision(["n", "p"], {"p"}) == pytest.approx(0.25)


def test_average_precision_is_nan_without_positives() -> None:
    assert math.isnan(average_precision(["a", "b"], set(), set()))


def test_average_precision_counts_a_positive_missing_from_the_ranking_as_zero() -> None:
    # p1 first (contributes (1 + 1) / 2 / 2 = 1/2), p2 absent (contributes 0).
    assert average_precision(["p1", "n"], {"p1", "p2"}) == pytest.approx(0.5)


def test_average_precision_is_zero_when_no_positive_is_retrieved() -> None:
    assert average_precision(["a", "b"], {"p"}) == 0.0


def test_average_precision_rejects_duplicate_ids_in_ranking() -> None:
    with pytest.raises(ValueError, match="more than once: p"):
        average_precision(["p", "a", "p"], {"p"})


def test_average_precision_rejects_ids_both_positive_and_junk() -> None:
    with pytest.raises(ValueError, match="both positive and junk"):
        average_precision(["p", "a"], {"p"}, {"p"})


def test_average_precision_and_precision_match_revisitop_on_random_rankings() -> None:
    rng = random.Random(0)
    catalog = [f"img{i}" for i in range(60)]
    for _ in range(200):
        ranked = rng.sample(catalog, len(catalog))
        chosen = rng.sample(catalog, rng.randint(1, 20))
        n_pos = rng.randint(1, len(chosen))
        positives, junk = set(chosen[:n_pos]), set(chosen[n_pos:])
        ref_ap, ref_pk = _revisitop_reference(ranked, positives, junk, (1, 5, 10))
        assert average_precision(ranked, positives, junk) == pytest.approx(ref_ap)
        for k, ref in zip((1, 5, 10), ref_pk, strict=True):
            assert precision_at_k(ranked, positives, junk, k=k) == pytest.approx(ref)


# --- precision@k and recall@k -------------------------------------------------------------


def test_precision_at_k_counts_positives_in_top_k_after_junk_removal() -> None:
    # Without junk: p1 a p2 b c p3 ...; 6 positives so the last positive is past k = 5.
    ranking = ["p1", "J", "a", "p2", "b", "c", "p3", "p4", "p5", "p6"]
    positives = {"p1", "p2", "p3", "p4", "p5", "p6"}
    assert precision_at_k(ranking, positives, {"J"}, k=1) == 1.0
    assert precision_at_k(ranking, positives, {"J"}, k=5) == pytest.approx(2 / 5)


def test_precision_at_k_divides_by_last_positive_rank_when_smaller_than_k() -> None:
    # revisitop: k' = min(k, rank of last positive) = min(10, 2) = 2 -> 2/2.
    assert precision_at_k(["p1", "p2", "a", "b"], {"p1", "p2"}, k=10) == 1.0
    # Last positive at rank 3 -> 2/3.
    assert precision_at_k(["p1", "a", "p2", "b"], {"p1", "p2"}, k=10) == pytest.approx(2 / 3)


def test_precision_at_k_divides_by_k_when_a_positive_is_missing() -> None:
    # p2 is absent (rank infinity) -> k' = k = 5 -> 1/5.
    assert precision_at_k(["p1", "a", "b"], {"p1", "p2"}, k=5) == pytest.approx(1 / 5)


def test_precision_at_k_is_nan_without_positives() -> None:
    assert math.isnan(precision_at_k(["a"], set(), k=1))


def test_precision_at_k_rejects_k_below_one() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        precision_at_k(["a"], {"a"}, k=0)


def test_recall_at_k_is_a_hit_indicator_after_junk_removal() -> None:
    ranking = ["a", "J", "b", "p", "c"]
    assert recall_at_k(ranking, {"p"}, {"J"}, k=1) == 0.0
    assert recall_at_k(ranking, {"p"}, {"J"}, k=2) == 0.0
    assert recall_at_k(ranking, {"p"}, {"J"}, k=3) == 1.0  # a b p: J does not count


def test_recall_at_k_is_nan_without_positives() -> None:
    assert math.isnan(recall_at_k(["a"], set(), k=5))


# --- ties --------------------------------------------------------------------------------


def test_rank_by_score_breaks_ties_by_input_order() -> None:
    assert rank_by_score(["a", "b", "c", "d"], [0.5, 0.9, 0.5, 0.9]) == ["b", "d", "a", "c"]
    assert rank_by_score(["c", "a", "d", "b"], [0.5, 0.5, 0.9, 0.9]) == ["d", "b", "c", "a"]


def test_rank_by_score_rejects_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="finite"):
        rank_by_score(["a", "b"], [0.1, float("nan")])


def test_rank_by_score_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rank_by_score(["a", "b"], [0.1])


# --- several queries ------------------------------------------------------------------------


def test_retrieval_metrics_average_over_queries() -> None:
    queries = [_query("q1", {"p1"}), _query("q2", {"p2"}, {"J"})]
    rankings = {
        "q1": ["p1", "a", "b"],  # AP 1, P@1 1, hit@1
        "q2": ["J", "a", "p2"],  # without J: a p2 -> AP 1/4, P@1 0, P@5 = P@10 = 1/2
    }
    metrics = retrieval_metrics(rankings, queries)
    assert set(metrics) == {"mAP", "mP@1", "mP@5", "mP@10", "recall@1", "recall@5", "recall@10"}
    assert metrics["mAP"] == pytest.approx((1 + 0.25) / 2)
    assert metrics["mP@1"] == pytest.approx(0.5)
    assert metrics["mP@5"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["mP@10"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["recall@1"] == pytest.approx(0.5)
    assert metrics["recall@5"] == 1.0
    assert metrics["recall@10"] == 1.0


def test_mean_average_precision_skips_queries_without_positives() -> None:
    queries = [_query("q1", {"p"}), _query("empty", set())]
    rankings = {"q1": ["a", "p"], "empty": ["a", "p"]}
    assert mean_average_precision(rankings, queries) == pytest.approx(0.25)
    assert retrieval_metrics(rankings, queries)["recall@1"] == 0.0


def test_retrieval_metrics_are_nan_when_no_query_has_positives() -> None:
    metrics = retrieval_metrics({"q": ["a"]}, [_query("q", set())])
    assert all(math.isnan(v) for v in metrics.values())


def test_retrieval_metrics_reject_a_query_without_ranking() -> None:
    with pytest.raises(ValueError, match="no ranking for 1 queries: q2"):
        retrieval_metrics({"q1": ["p"]}, [_query("q1", {"p"}), _query("q2", {"p"})])


def test_score_queries_names_the_query_with_a_malformed_ranking() -> None:
    with pytest.raises(ValueError, match="query 'q1'"):
        score_queries({"q1": ["p", "p"]}, [_query("q1", {"p"})])


def test_nan_mean_ignores_nan_and_is_nan_when_empty() -> None:
    assert nan_mean([1.0, float("nan"), 0.0]) == 0.5
    assert math.isnan(nan_mean([]))


# --- recognition ---------------------------------------------------------------------------


def test_recognition_accuracy_counts_none_as_miss_and_skips_non_landmark_queries() -> None:
    predictions = [("eiffel", 0.9), (None, 0.0), ("louvre", 0.4), ("eiffel", 0.8)]
    truths = ["eiffel", "louvre", "defense", None]
    assert recognition_accuracy(predictions, truths) == pytest.approx(1 / 3)


def test_recognition_accuracy_is_nan_without_landmark_queries() -> None:
    assert math.isnan(recognition_accuracy([("a", 1.0)], [None]))


def test_recognition_metrics_reject_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1"):
        global_average_precision([("a", 1.0), ("b", 0.5)], ["a"])


def test_gap_is_one_when_every_answer_is_right() -> None:
    assert global_average_precision([("a", 0.2), ("b", 0.9)], ["a", "b"]) == 1.0


def test_gap_is_lower_when_a_confident_wrong_answer_comes_first() -> None:
    truths = ["a", "b", "c"]
    # Sorted: wrong, right, right -> (0 + 1/2 + 2/3) / 3 = 7/18.
    wrong_first = [("x", 0.9), ("b", 0.5), ("c", 0.4)]
    # Sorted: right, right, wrong -> (1 + 1 + 0) / 3 = 2/3.
    wrong_last = [("x", 0.1), ("b", 0.5), ("c", 0.4)]
    assert global_average_precision(wrong_first, truths) == pytest.approx(7 / 18)
    assert global_average_precision(wrong_last, truths) == pytest.approx(2 / 3)


def test_gap_counts_none_predictions_as_misses_ranked_last() -> None:
    # The None answer, although its confidence is highest, is placed last; it is a miss.
    # Sorted labelled answers: right, right -> (1 + 1) / M with M = 3.
    predictions = [(None, 0.99), ("b", 0.5), ("c", 0.4)]
    assert global_average_precision(predictions, ["a", "b", "c"]) == pytest.approx(2 / 3)


def test_gap_penalises_labelled_answers_on_non_landmark_queries() -> None:
    # Query 2 has no landmark (M = 1) but gets a confident label: rank 1 wrong,
    # rank 2 right -> P(2) = 1/2 -> GAP = 1/2. Answering None there would give 1.
    assert global_average_precision([("a", 0.5), ("x", 0.9)], ["a", None]) == 0.5
    assert global_average_precision([("a", 0.5), (None, 0.9)], ["a", None]) == 1.0


def test_gap_breaks_confidence_ties_by_input_order() -> None:
    truths = ["a", "b"]
    # Equal confidences: the stable sort keeps input order.
    assert global_average_precision([("x", 0.5), ("b", 0.5)], truths) == pytest.approx(1 / 4)
    assert global_average_precision([("b", 0.5), ("x", 0.5)], truths[::-1]) == pytest.approx(1 / 2)


def test_gap_is_nan_without_landmark_queries() -> None:
    assert math.isnan(global_average_precision([("a", 1.0)], [None]))


def test_gap_rejects_non_finite_confidence_of_a_labelled_prediction() -> None:
    with pytest.raises(ValueError, match="finite"):
        global_average_precision([("a", float("nan"))], ["a"])


# --- pairs --------------------------------------------------------------------------------


def test_roc_auc_is_one_for_perfect_separation() -> None:
    assert roc_auc([10, 20, 30], [1, 2, 3, 9]) == 1.0


def test_roc_auc_is_half_when_all_scores_tie() -> None:
    assert roc_auc([5, 5], [5, 5, 5]) == 0.5


def test_roc_auc_counts_ties_as_half() -> None:
    # Pairs (pos, neg): (3,1) win, (3,3) tie, (1,1) tie, (1,3) loss -> (1 + 0.5 + 0.5) / 4.
    assert roc_auc([3, 1], [1, 3]) == pytest.approx(0.5)
    # (4,1) win, (4,4) tie -> 0.75.
    assert roc_auc([4], [1, 4]) == pytest.approx(0.75)


def test_roc_auc_is_zero_for_inverted_separation() -> None:
    assert roc_auc([1, 2], [3, 4]) == 0.0


def test_roc_auc_is_nan_when_a_side_is_empty() -> None:
    assert math.isnan(roc_auc([], [1.0]))
    assert math.isnan(roc_auc([1.0], []))


def test_median_is_nan_when_empty() -> None:
    assert median([3, 1, 2]) == 2.0
    assert math.isnan(median([]))


def test_pair_metrics_report_auc_and_medians() -> None:
    assert pair_metrics([100, 50, 80], [3, 8]) == {
        "auc": 1.0,
        "median_positive": 80.0,
        "median_negative": 5.5,
    }


def test_transfer_errors_measure_distance_after_mapping() -> None:
    shift = np.array([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]])
    points = np.array([[0.0, 0, 10, 0], [5, 5, 15, 8]])
    np.testing.assert_allclose(transfer_errors(shift, points), [0.0, 3.0])


def test_epipolar_errors_measure_distance_to_the_epipolar_lines() -> None:
    # A sideways camera move: epipolar lines are the rows, so the error is |y1 - y2|.
    sideways = np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    points = np.array([[0.0, 0, 10, 0], [5, 5, 15, 8], [7, 2, 100, 2]])
    np.testing.assert_allclose(epipolar_errors(sideways, points), [0.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        epipolar_errors(np.eye(2), points)


def test_transfer_errors_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        transfer_errors(np.eye(3), np.zeros((2, 3)))
