"""Final ranking and landmark recognition from global similarities and inlier counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class RankedResult:
    image_id: int
    global_score: float
    inliers: int
    verified: bool

    @property
    def score(self) -> float:
        """Monotonic with the ranking: inliers + similarity when verified, else similarity
        (similarity <= 1 < minimum inliers, so verified results always come first)."""
        return self.inliers + self.global_score if self.verified else self.global_score


def rerank(
    candidates: Sequence[tuple[int, float]], inliers: Mapping[int, int], *, min_inliers: int
) -> list[RankedResult]:
    """Verified images first by inliers (ties by similarity), then the rest by similarity.

    Args:
        candidates: (image_id, cosine similarity) from the shortlist.
        inliers: image_id -> inlier count for the candidates that were verified.
        min_inliers: an image with at least this many inliers counts as verified.
    """
    results = [
        RankedResult(image_id, similarity, inliers.get(image_id, 0), inliers.get(image_id, 0) >= min_inliers)
        for image_id, similarity in candidates
    ]
    return sorted(results, key=lambda r: (not r.verified, -r.inliers if r.verified else 0, -r.global_score))


@dataclasses.dataclass(frozen=True)
class Recognition:
    landmark: str
    confidence: float


def recognise(
    ranked: Sequence[RankedResult], labels: Mapping[int, str | None], *, min_inliers: int, saturation: float = 30.0
) -> Recognition | None:
    """The landmark of the verified results, or None ("no match") when none is verified.

    Each verified result votes for its landmark with its inlier count. The confidence is
    the winner's share of the votes times ``n / (n + saturation)`` with n the winner's best
    inlier count: a landmark seen by one image with 12 inliers gets ~0.29, one with 100+
    inliers and no rival gets > 0.75.
    """
    votes: dict[str, int] = {}
    best: dict[str, int] = {}
    for result in ranked:
        label = labels.get(result.image_id)
        if not result.verified or not label:
            continue
        votes[label] = votes.get(label, 0) + result.inliers
        best[label] = max(best.get(label, 0), result.inliers)
    if not votes:
        return None
    winner = max(votes, key=lambda name: (votes[name], best[name]))
    share = votes[winner] / sum(votes.values())
    strength = best[winner] / (best[winner] + saturation)
    if best[winner] < min_inliers:
        return None
    return Recognition(winner, round(share * strength, 4))


def answer_decided(
    inliers: Sequence[int], labels: Sequence[str | None], *, min_inliers: int, margin: float = 3.0
) -> bool:
    """Whether more verification is unlikely to change the recognised landmark.

    Decided when one landmark's votes (the inliers of its verified results, as in
    :func:`recognise`) reach ``margin`` times the threshold and ``margin`` times every
    other landmark's votes: several strong, agreeing results that the remaining,
    less similar candidates would have to outvote.

    Args:
        inliers: inlier count of each candidate verified so far.
        labels: the landmark of each of those candidates (None when unlabelled).
    """
    votes: dict[str, int] = {}
    for count, label in zip(inliers, labels, strict=True):
        if label and count >= min_inliers:
            votes[label] = votes.get(label, 0) + count
    if not votes:
        return False
    ordered = sorted(votes.values(), reverse=True)
    leader, runner_up = ordered[0], (ordered[1] if len(ordered) > 1 else 0)
    return leader >= margin * min_inliers and leader >= margin * runner_up
