from __future__ import annotations

import pytest

from retrieval.vision.ranking import answer_decided, recognise, rerank


def test_verified_images_come_first_by_inliers_then_the_rest_by_similarity() -> None:
    ranked = rerank([(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)], {1: 3, 2: 40, 3: 15, 4: 0}, min_inliers=12)
    assert [r.image_id for r in ranked] == [2, 3, 1, 4]
    assert [r.verified for r in ranked] == [True, True, False, False]
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)


def test_recognition_is_no_match_when_nothing_is_verified() -> None:
    ranked = rerank([(1, 0.99)], {1: 5}, min_inliers=12)
    assert recognise(ranked, {1: "eiffel"}, min_inliers=12) is None


def test_recognition_votes_with_inliers_and_confidence_grows_with_agreement() -> None:
    labels = {1: "eiffel", 2: "eiffel", 3: "louvre"}
    alone = recognise(rerank([(1, 0.9), (3, 0.8)], {1: 40, 3: 40}, min_inliers=12), labels, min_inliers=12)
    agreed = recognise(rerank([(1, 0.9), (2, 0.8)], {1: 40, 2: 40}, min_inliers=12), labels, min_inliers=12)
    assert alone is not None and agreed is not None
    assert agreed.landmark == "eiffel"
    assert 0 < alone.confidence < agreed.confidence <= 1


def test_one_landmark_far_above_threshold_and_rivals_is_decided() -> None:
    # eiffel: 40 + 30 = 70 votes >= 3 x 12 and >= 3 x louvre's 20.
    assert answer_decided([40, 30, 20], ["eiffel", "eiffel", "louvre"], min_inliers=12)


def test_a_leader_below_margin_times_the_threshold_is_not_decided() -> None:
    assert not answer_decided([35], ["eiffel"], min_inliers=12)  # 35 < 3 x 12
    assert answer_decided([36], ["eiffel"], min_inliers=12)  # exactly 3 x 12


def test_a_runner_up_within_the_margin_leaves_it_undecided() -> None:
    assert not answer_decided([80, 30], ["eiffel", "louvre"], min_inliers=12)  # 80 < 3 x 30
    assert answer_decided([90, 30], ["eiffel", "louvre"], min_inliers=12)  # exactly 3 x 30


def test_the_runner_up_votes_are_summed_over_its_results() -> None:
    # louvre's two results together (15 + 15) keep eiffel's 80 under 3x; each alone would not.
    assert not answer_decided([80, 15, 15], ["eiffel", "louvre", "louvre"], min_inliers=12)
    assert answer_decided([80, 15], ["eiffel", "louvre"], min_inliers=12)


def test_unlabelled_results_do_not_vote() -> None:
    assert answer_decided([60, 50], ["eiffel", None], min_inliers=12)
    assert answer_decided([60, 50], ["eiffel", ""], min_inliers=12)
    assert not answer_decided([50, 60], [None, None], min_inliers=12)


def test_results_below_the_threshold_do_not_vote() -> None:
    # louvre's 11 inliers are not a verified result: they neither vote nor add up.
    assert answer_decided([36, 11, 11, 11], ["eiffel", "louvre", "louvre", "louvre"], min_inliers=12)
    assert not answer_decided([11, 11, 11, 11], ["eiffel"] * 4, min_inliers=12)


def test_nothing_verified_is_not_decided() -> None:
    assert not answer_decided([], [], min_inliers=12)
    assert not answer_decided([0, 3], ["eiffel", "louvre"], min_inliers=12)


def test_a_smaller_margin_decides_sooner() -> None:
    assert not answer_decided([50, 30], ["eiffel", "louvre"], min_inliers=12)
    assert answer_decided([50, 30], ["eiffel", "louvre"], min_inliers=12, margin=1.5)


def test_inliers_and_labels_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        answer_decided([40, 30], ["eiffel"], min_inliers=12)
