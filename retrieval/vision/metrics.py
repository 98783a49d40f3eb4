"""Retrieval, recognition and pair metrics: pure functions of rankings and scores.

Pure numpy: nothing here imports Django or TensorFlow, so the ``evaluate`` command, the
benchmarks and the tests can all score results the same way. The datasets these metrics
score are read by :mod:`retrieval.vision.datasets`.

Retrieval scoring follows the Revisited Oxford/Paris protocol (Radenovic et al., CVPR 2018;
``revisitop`` / cirtorch ``compute_map``), see ``/work/shared/datasets/FORMAT.md``:

- junk ids are removed from a ranking before anything is scored;
- a query without positives has no defined score: its metrics are ``nan`` and the means
  over queries skip it (revisitop skips such queries in the same way);
- a positive that does not appear in the ranking counts as retrieved at rank infinity
  (it contributes 0 to AP, and the ranking is treated as if it were longer than any k).

Recognition scoring follows the Google Landmark Recognition challenge (top-1 accuracy and
GAP). Pair scoring separates true pairs from mismatched pairs (ROC AUC, medians) and
checks estimated transforms against hand-marked correspondences.

Every metric that is undefined for its input (no positives, no scored query, an empty
score list) returns ``nan`` rather than raising; malformed input (duplicate ids in a
ranking, mismatched lengths, NaN confidences) raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from retrieval.vision.datasets import QuerySpec

KAPPAS: tuple[int, ...] = (1, 5, 10)
"""The cut-offs k reported by :func:`retrieval_metrics` (Revisited Oxford/Paris)."""


# ---------------------------------------------------------------------------------------
# Retrieval metrics (one query)
# ---------------------------------------------------------------------------------------


def _positive_ranks(ranked_ids: Sequence[str], positives: Set[str], junk: Set[str]) -> np.ndarray:
    """0-based ranks of the positives in ``ranked_ids`` once junk is removed.

    Args:
        ranked_ids: catalog ids, best first; each id at most once.
        positives: ids of the correct answers.
        junk: ids removed from the ranking before scoring; disjoint from ``positives``.

    Returns:
        (P,) int64, increasing; P <= len(positives) (positives absent from the ranking are
        not listed).

    Raises:
        ValueError: an id occurs twice in the ranking, or positives and junk overlap.
    """
    if len(set(ranked_ids)) != len(ranked_ids):
        dupes = sorted(i for i, count in Counter(ranked_ids).items() if count > 1)
        raise ValueError(f"ranking lists ids more than once: {', '.join(dupes[:5])}")
    overlap = positives & junk
    if overlap:
        raise ValueError(f"ids are both positive and junk: {', '.join(sorted(overlap)[:5])}")
    kept = [i for i in ranked_ids if i not in junk]
    is_positive = np.fromiter((i in positives for i in kept), dtype=bool, count=len(kept))
    return np.flatnonzero(is_positive).astype(np.int64)


def average_precision(
    ranked_ids: Sequence[str], positives: Set[str], junk: Set[str] = frozenset()
) -> float:
    """Average precision of one ranking, as revisitop / cirtorch ``compute_ap``.

    Junk ids are removed from the ranking first. With ``r_j`` the 0-based rank of the j-th
    retrieved positive (j = 0, 1, ...) in what remains and ``n = len(positives)``::

        AP = sum_j (1 / n) * (p0_j + p1_j) / 2
        p0_j = j / r_j            (precision just before the positive; 1 when r_j == 0)
        p1_j = (j + 1) / (r_j + 1) (precision at the positive)

    i.e. the area under the precision-recall curve with trapezoidal interpolation, each
    positive adding a recall step of ``1 / n``. Positives missing from the ranking add
    nothing (retrieved at infinity). A ranking with every positive first scores 1.0.

    Args:
        ranked_ids: catalog ids, best first; each id at most once.
        positives: ids of the correct answers.
        junk: ids that are neither right nor wrong (removed before scoring).

    Returns:
        AP in [0, 1]; ``nan`` when ``positives`` is empty (undefined: revisitop skips
        such queries, and :func:`mean_average_precision` skips ``nan``).

    Raises:
        ValueError: an id occurs twice in the ranking, or positives and junk overlap.
    """
    ranks = _positive_ranks(ranked_ids, positives, junk)
    if not positives:
        return math.nan
    j = np.arange(len(ranks), dtype=np.float64)
    r = ranks.astype(np.float64)
    p0 = np.divide(j, r, out=np.ones_like(r), where=r > 0)
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum((p0 + p1) / 2.0) / len(positives))


def precision_at_k(
    ranked_ids: Sequence[str], positives: Set[str], junk: Set[str] = frozenset(), *, k: int
) -> float:
    """Precision at k of one ranking, as revisitop ``compute_map`` (mP@k).

    Junk is removed first. Revisitop divides by ``k' = min(k, rank of the last positive)``
    (1-based), not by k, so a query with fewer than k positives can still score 1.0 when
    all of them come first. A positive missing from the ranking has rank infinity, so
    then ``k' = k``. Equal to plain ``hits in top k / k`` whenever the last positive is at
    rank k or later (e.g. paris5: 50 positives per query, k <= 10).

    Args:
        ranked_ids: catalog ids, best first; each id at most once.
        positives: ids of the correct answers.
        junk: ids removed from the ranking before scoring.
        k: the cut-off, >= 1.

    Returns:
        Precision in [0, 1]; ``nan`` when ``positives`` is empty.

    Raises:
        ValueError: k < 1, an id occurs twice in the ranking, or positives and junk overlap.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = _positive_ranks(ranked_ids, positives, junk) + 1  # 1-based
    if not positives:
        return math.nan
    last = int(ranks[-1]) if len(ranks) == len(positives) else math.inf
    kq = int(min(k, last))
    return float(np.count_nonzero(ranks <= kq) / kq)


def recall_at_k(
    ranked_ids: Sequence[str], positives: Set[str], junk: Set[str] = frozenset(), *, k: int
) -> float:
    """Hit indicator: 1.0 when at least one positive is in the top k (junk removed), else 0.0.

    Its mean over queries is FORMAT.md's recall@k, the share of queries answered by the
    top k.

    Args:
        ranked_ids: catalog ids, best first; each id at most once.
        positives: ids of the correct answers.
        junk: ids removed from the ranking before scoring.
        k: the cut-off, >= 1.

    Returns:
        1.0 or 0.0; ``nan`` when ``positives`` is empty.

    Raises:
        ValueError: k < 1, an id occurs twice in the ranking, or positives and junk overlap.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = _positive_ranks(ranked_ids, positives, junk)
    if not positives:
        return math.nan
    return 1.0 if len(ranks) and ranks[0] < k else 0.0


def rank_by_score(ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> list[str]:
    """Order ids by decreasing score; equal scores keep their input order (stable).

    Ties are therefore broken by the caller's order: pass ids in a fixed order (e.g.
    sorted, or by primary key) for reproducible rankings.

    Args:
        ids: (N,) catalog ids.
        scores: (N,) similarity, higher is better; finite.

    Returns:
        The N ids, best first.

    Raises:
        ValueError: lengths differ or a score is not finite.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(ids),):
        raise ValueError(f"scores must have shape ({len(ids)},), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    order = np.argsort(-s, kind="stable")
    return [ids[i] for i in order]


# ---------------------------------------------------------------------------------------
# Retrieval metrics (many queries)
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QueryScores:
    """Scores of one query; every field is ``nan`` when the query has no positives.

    Attributes:
        query_id: the query's id.
        ap: average precision (:func:`average_precision`).
        precision: k -> precision at k (:func:`precision_at_k`), k in ``KAPPAS``.
        recall: k -> hit indicator (:func:`recall_at_k`), k in ``KAPPAS``.
    """

    query_id: str
    ap: float
    precision: Mapping[int, float]
    recall: Mapping[int, float]


def nan_mean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the values that are not ``nan``; ``nan`` when none is left.

    Args:
        values: (N,) floats.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def score_queries(
    rankings: Mapping[str, Sequence[str]], queries: Sequence[QuerySpec]
) -> list[QueryScores]:
    """Score every query's ranking (AP, P@k, hit@k for k in ``KAPPAS``).

    Args:
        rankings: query id -> catalog ids, best first (the full ranked catalog, or a
            prefix of it: positives missing count as retrieved at infinity). Rankings of
            queries not in ``queries`` are ignored.
        queries: the queries to score, with their positives and junk.

    Returns:
        One :class:`QueryScores` per query, in the order of ``queries``.

    Raises:
        ValueError: a query has no ranking, or a ranking is malformed (see
            :func:`average_precision`).
    """
    missing = [q.id for q in queries if q.id not in rankings]
    if missing:
        raise ValueError(f"no ranking for {len(missing)} queries: {', '.join(missing[:5])}")
    scores = []
    for q in queries:
        ranked = rankings[q.id]
        try:
            scores.append(
                QueryScores(
                    query_id=q.id,
                    ap=average_precision(ranked, q.positives, q.junk),
                    precision={k: precision_at_k(ranked, q.positives, q.junk, k=k) for k in KAPPAS},
                    recall={k: recall_at_k(ranked, q.positives, q.junk, k=k) for k in KAPPAS},
                )
            )
        except ValueError as exc:
            raise ValueError(f"query {q.id!r}: {exc}") from exc
    return scores


def mean_average_precision(
    rankings: Mapping[str, Sequence[str]], queries: Sequence[QuerySpec]
) -> float:
    """mAP: mean AP over the queries that have positives (``nan`` if none has).

    Args and errors as :func:`score_queries`.
    """
    return nan_mean([s.ap for s in score_queries(rankings, queries)])


def retrieval_metrics(
    rankings: Mapping[str, Sequence[str]], queries: Sequence[QuerySpec]
) -> dict[str, float]:
    """The Revisited Oxford/Paris summary of a run.

    Args and errors as :func:`score_queries`.

    Returns:
        ``{"mAP", "mP@1", "mP@5", "mP@10", "recall@1", "recall@5", "recall@10"}``, each a
        fraction in [0, 1] averaged over the queries that have positives (``nan`` when no
        query has any).
    """
    scores = score_queries(rankings, queries)
    metrics = {"mAP": nan_mean([s.ap for s in scores])}
    for k in KAPPAS:
        metrics[f"mP@{k}"] = nan_mean([s.precision[k] for s in scores])
    for k in KAPPAS:
        metrics[f"recall@{k}"] = nan_mean([s.recall[k] for s in scores])
    return metrics


# ---------------------------------------------------------------------------------------
# Precision-recall curves
# ---------------------------------------------------------------------------------------


RECALL_GRID = np.linspace(0.0, 1.0, 101)
"""The recall levels at which :func:`interpolated_precision` samples a curve."""


def pr_curve(ranked_ids: Sequence[str], positives: Set[str], junk: Set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each retrieved positive, junk removed first.

    Returns:
        (P,) recall and (P,) precision, P = positives found in ``ranked_ids`` (a positive
        missing from the ranking is never reached, so recall may stop short of 1).
    """
    kept = [i for i in ranked_ids if i not in junk]
    ranks = np.flatnonzero([i in positives for i in kept]).astype(np.float64)
    found = np.arange(1, len(ranks) + 1, dtype=np.float64)
    return found / max(1, len(positives)), found / (ranks + 1.0)


def interpolated_precision(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray = RECALL_GRID) -> np.ndarray:
    """Precision interpolated at each recall level (best precision at that recall or
    beyond; 0 past the last positive found).

    Args:
        recall: (P,) and precision: (P,), as :func:`pr_curve` returns them.
        grid: (G,) recall levels.

    Returns:
        (G,) precision at each level.
    """
    out = np.zeros_like(grid)
    for n, level in enumerate(grid):
        reached = precision[recall >= level - 1e-12]
        out[n] = reached.max() if reached.size else 0.0
    return out


# ---------------------------------------------------------------------------------------
# Recognition metrics
# ---------------------------------------------------------------------------------------


class Prediction(NamedTuple):
    """A recognition answer: the predicted landmark (``None`` for "no match") and its
    confidence (higher is surer). A plain ``(label, confidence)`` tuple works as well."""

    label: str | None
    confidence: float


def _check_lengths(predictions: Sequence[Any], truths: Sequence[Any]) -> None:
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} ground-truth labels")


def recognition_accuracy(
    predictions: Sequence[tuple[str | None, float]], truths: Sequence[str | None]
) -> float:
    """Top-1 accuracy over the queries that show a landmark.

    Queries whose truth is ``None`` (no landmark) are left out, as they are from GAP's
    denominator; a ``None`` prediction on a landmark query is a miss.

    Args:
        predictions: (N,) ``(label or None, confidence)``; confidence is ignored here.
        truths: (N,) the true landmark of each query, or ``None``.

    Returns:
        Accuracy in [0, 1]; ``nan`` when no truth is a landmark.

    Raises:
        ValueError: lengths differ.
    """
    _check_lengths(predictions, truths)
    scored = [(p[0], t) for p, t in zip(predictions, truths, strict=True) if t is not None]
    if not scored:
        return math.nan
    return sum(label == t for label, t in scored) / len(scored)


def global_average_precision(
    predictions: Sequence[tuple[str | None, float]], truths: Sequence[str | None]
) -> float:
    """GAP (micro average precision) of the Google Landmark Recognition challenge.

    Predictions are sorted by decreasing confidence; then, with ``M`` the number of
    queries whose truth is a landmark::

        GAP = (1 / M) * sum_i P(i) * rel(i)

    where ``rel(i)`` is 1 when the i-th prediction equals its truth and ``P(i)`` is the
    precision of the first i predictions. A labelled prediction on a query without a
    landmark is wrong (``rel = 0``) and lowers the precision of everything after it.
    ``None`` ("no match") predictions are misses (``rel = 0``) placed after all labelled
    predictions whatever their confidence, i.e. an abstention costs the query but does not
    push other answers down (as the challenge scores a query with no prediction). Ties in
    confidence keep the input order (stable sort), so the result is deterministic.

    Args:
        predictions: (N,) ``(label or None, confidence)``; confidences of labelled
            predictions must be finite, those of ``None`` predictions are ignored.
        truths: (N,) the true landmark of each query, or ``None``.

    Returns:
        GAP in [0, 1]; ``nan`` when no truth is a landmark.

    Raises:
        ValueError: lengths differ or a labelled prediction has a non-finite confidence.
    """
    _check_lengths(predictions, truths)
    m = sum(t is not None for t in truths)
    if m == 0:
        return math.nan
    labelled = [i for i, p in enumerate(predictions) if p[0] is not None]
    conf = np.array([float(predictions[i][1]) for i in labelled], dtype=np.float64)
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidences of labelled predictions must be finite")
    order = [labelled[i] for i in np.argsort(-conf, kind="stable")]
    # None predictions come last: they only add rel = 0 after every labelled answer,
    # so they change nothing and are left out of the sum.
    rel = np.array([predictions[i][0] == truths[i] for i in order], dtype=np.float64)
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float(np.sum(precision * rel) / m)


# ---------------------------------------------------------------------------------------
# Pair metrics
# ---------------------------------------------------------------------------------------


def _as_scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite")
    return v


def roc_auc(
    positive_scores: Sequence[float] | np.ndarray, negative_scores: Sequence[float] | np.ndarray
) -> float:
    """Area under the ROC curve: P(positive score > negative score), ties counting 1/2.

    The Mann-Whitney U statistic divided by ``P * N``, computed with sorted negatives
    (O((P + N) log N)).

    Args:
        positive_scores: (P,) scores of true pairs (e.g. inlier counts), higher = surer.
        negative_scores: (N,) scores of mismatched pairs.

    Returns:
        AUC in [0, 1]: 1.0 for perfect separation, 0.5 when all scores are equal; ``nan``
        when either side is empty.

    Raises:
        ValueError: a score is not finite.
    """
    pos = _as_scores(positive_scores, "positive_scores")
    neg = np.sort(_as_scores(negative_scores, "negative_scores"))
    if pos.size == 0 or neg.size == 0:
        return math.nan
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    u = np.sum(below) + 0.5 * np.sum(at_or_below - below)
    return float(u / (pos.size * neg.size))


def median(values: Sequence[float] | np.ndarray) -> float:
    """Median of the values; ``nan`` when empty (numpy warns instead).

    Args:
        values: (N,) floats.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(np.median(v)) if v.size else math.nan


def pair_metrics(
    positive_scores: Sequence[float] | np.ndarray, negative_scores: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """How well a pair score (e.g. verified inliers) separates true from mismatched pairs.

    Args:
        positive_scores: (P,) scores of true pairs.
        negative_scores: (N,) scores of mismatched pairs.

    Returns:
        ``{"auc", "median_positive", "median_negative"}`` (see :func:`roc_auc`,
        :func:`median`).
    """
    return {
        "auc": roc_auc(positive_scores, negative_scores),
        "median_positive": median(positive_scores),
        "median_negative": median(negative_scores),
    }


def epipolar_errors(fundamental: np.ndarray, correspondences: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance of each marked correspondence under ``fundamental``:
    the mean of the image-2 point's distance to the epipolar line of its image-1 point and
    the reverse.

    Args:
        fundamental: (3, 3) with ``x2^T F x1 = 0`` (x, y, 1 convention).
        correspondences: (N, 4) rows ``[x1, y1, x2, y2]`` as in ``pairs.json``.

    Returns:
        (N,) float64 pixel distances; ``inf`` where an epipolar line is undefined.
    """
    f, x1, x2 = _homogeneous_pairs("fundamental", fundamental, correspondences)
    lines2 = x1 @ f.T  # epipolar lines in image 2
    lines1 = x2 @ f  # epipolar lines in image 1
    algebraic = np.abs(np.sum(x2 * lines2, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d2 = algebraic / np.hypot(lines2[:, 0], lines2[:, 1])
        d1 = algebraic / np.hypot(lines1[:, 0], lines1[:, 1])
    distance = (d1 + d2) / 2
    return np.where(np.isfinite(distance), distance, np.inf)


def transfer_errors(homography: np.ndarray, correspondences: np.ndarray) -> np.ndarray:
    """Distance between each image2 point and its image1 point mapped by ``homography``.

    Args:
        homography: (3, 3) maps image1 pixels to image2 pixels (x, y, 1 convention).
        correspondences: (N, 4) rows ``[x1, y1, x2, y2]`` as in ``pairs.json``.

    Returns:
        (N,) float64 pixel errors in image2; ``inf`` where a point maps to infinity.

    Raises:
        ValueError: wrong shapes.
    """
    h, x1, x2 = _homogeneous_pairs("homography", homography, correspondences)
    src = x1 @ h.T
    w = src[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        mapped = src[:, :2] / w[:, None]
        err = np.linalg.norm(mapped - x2[:, :2], axis=1)
    return np.where(np.abs(w) > 1e-12, err, np.inf)


def _homogeneous_pairs(
    name: str, matrix: np.ndarray, correspondences: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks a (3, 3) two-view matrix and (N, 4) ``[x1, y1, x2, y2]`` rows; returns the
    float64 matrix and the (N, 3) homogeneous image-1 and image-2 points."""
    m = np.asarray(matrix, dtype=np.float64)
    c = np.asarray(correspondences, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"{name} must be (3, 3), got {m.shape}")
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"correspondences must be (N, 4), got {c.shape}")
    ones = np.ones((len(c), 1))
    return m, np.hstack([c[:, :2], ones]), np.hstack([c[:, 2:], ones])
