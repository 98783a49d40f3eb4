from __future__ import annotations

from retrieval.vision.ranking import recognise, rerank


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
