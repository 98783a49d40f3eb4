"""Geometric verification of matched keypoints with RANSAC (OpenCV's USAC MAGSAC++).

The model is a homography (planar facades, the usual landmark photo) or, for features
whose locations are too coarse or whose scenes are too deep for one plane, a
fundamental matrix (any rigid 3D scene between two views).

OpenCV rather than scikit-image: measured here, ``cv2.findHomography`` with USAC takes
~0.5 ms per image pair against ~200 ms for ``skimage.measure.ransac``, which matters when
100 shortlisted images are verified per search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from retrieval.vision.features import LocalFeatures
from retrieval.vision.matching import Precision, match_descriptors, match_levels


@dataclasses.dataclass(frozen=True)
class VerificationConfig:
    ratio: float = 0.85
    mutual: bool = True
    # Minimum cosine similarity of a match; -1 keeps all (XFeat uses 0.82 and ratio=1).
    min_similarity: float = -1.0
    # Reprojection threshold as a fraction of the candidate's keypoint spread
    # (0.008 is ~8 px on a 1024 px photo), so it works at any resolution.
    relative_threshold: float = 0.008
    max_iterations: int = 2000
    confidence: float = 0.999
    # Reject transforms that shrink or grow areas more than this (degenerate fits).
    max_area_change: float = 10.0
    geometry: Literal["homography", "fundamental"] = "homography"
    # Match level by level (features whose ``scales`` are equal form a level: dense cells
    # of one image at several sizes), see ``matching.match_levels``.
    per_level: bool = False
    # RANSAC's model score: MAGSAC++ with sigma-consensus local optimisation, or MSAC
    # with inner local optimisation (about half the time per iteration here).
    score: Literal["magsac", "msac"] = "magsac"
    # Fewest inliers that count as "same place", calibrated per local feature on
    # mismatched pairs (docs/quality.md); LANDMARKS_MIN_INLIERS overrides it.
    min_inliers: int = 8
    # RANSAC's random seed. 0 is the seed OpenCV's USAC_MAGSAC preset uses, so results
    # are reproducible; `evaluate --ransac-seeds N` repeats verification with seeds
    # 0..N-1 to show how much a score depends on it.
    seed: int = 0
    # Similarities in float32, or as int8 products (``matching.quantise_rows``): several
    # times faster, the same matches but for near ties (docs/quality.md).
    precision: Precision = "float32"


@dataclasses.dataclass(frozen=True)
class Verification:
    """Result of verifying one image pair.

    Attributes:
        inliers: number of distinct inlier locations (the score).
        homography: (3, 3) float64 mapping image-1 pixels to image-2 pixels, or None
            (always None for the fundamental-matrix geometry).
        matches: (K, 2) int64 indices of the inlier matches into features 1 and 2.
        tentative: number of tentative (descriptor) matches before RANSAC.
        fundamental: (3, 3) float64 with x2^T F x1 = 0 for the fundamental-matrix
            geometry, else None.
    """

    inliers: int
    homography: np.ndarray | None
    matches: np.ndarray
    tentative: int
    fundamental: np.ndarray | None = None

    @classmethod
    def failed(cls, tentative: int = 0) -> Verification:
        return cls(0, None, np.zeros((0, 2), np.int64), tentative)


def verify_pair(
    features1: LocalFeatures, features2: LocalFeatures, config: VerificationConfig = VerificationConfig()
) -> Verification:
    """Match local features and fit the configured geometry; inliers count distinct locations."""
    matches = tentative_matches(features1, features2, config)
    return verify_matches(features1.keypoints, features2.keypoints, matches, config)


def verify_best(
    query_sets: Sequence[LocalFeatures], candidate: LocalFeatures, config: VerificationConfig = VerificationConfig()
) -> tuple[int, Verification]:
    """Verify ``candidate`` against each of a query's local feature sets (the query at
    several image sizes, ``ImageFeatures.local_sets``) and keep the set with the most
    inliers, the first on ties. Returns (index into ``query_sets``, its verification)."""
    if not query_sets:
        raise ValueError("no query features to verify")
    return most_inliers([verify_pair(features, candidate, config) for features in query_sets])


def most_inliers(results: Sequence[Verification]) -> tuple[int, Verification]:
    """The verification with the most inliers, the first on ties: (its index, it).

    How :func:`verify_best` picks among a query's sizes; the evaluation uses it too when
    it verifies with several RANSAC seeds. Raises ValueError when ``results`` is empty.
    """
    if not results:
        raise ValueError("no verifications to choose from")
    best_index = 0
    for index, result in enumerate(results[1:], start=1):
        if result.inliers > results[best_index].inliers:
            best_index = index
    return best_index, results[best_index]


def tentative_matches(
    features1: LocalFeatures, features2: LocalFeatures, config: VerificationConfig = VerificationConfig()
) -> np.ndarray:
    """Descriptor matches with the configured tests: (K, 2) int64 indices into features 1
    and 2 ((0, 2) when either side has fewer than 4 features)."""
    if len(features1) < 4 or len(features2) < 4:
        return np.zeros((0, 2), np.int64)
    int8 = config.precision == "int8"
    tests = {"ratio": config.ratio, "mutual": config.mutual, "min_similarity": config.min_similarity}
    if config.per_level:  # split once per feature set: a query meets a hundred candidates
        levels1 = features1.int8_levels if int8 else features1.float_levels
        levels2 = features2.int8_levels if int8 else features2.float_levels
        return match_levels(levels1, None, levels2, None, **tests)
    desc1 = features1.int8_rows if int8 else features1.descriptors
    desc2 = features2.int8_rows if int8 else features2.descriptors
    return match_descriptors(desc1, desc2, **tests)


def verify_matches(
    keypoints1: np.ndarray, keypoints2: np.ndarray, matches: np.ndarray, config: VerificationConfig = VerificationConfig()
) -> Verification:
    """RANSAC on tentative matches.

    Args:
        keypoints1: (N, 2) float32 x, y in image-1 pixels.
        keypoints2: (M, 2) float32 x, y in image-2 pixels.
        matches: (K, 2) int64 indices into keypoints1 and keypoints2.
    """
    tentative = int(len(matches))
    if tentative < 4:
        return Verification.failed(tentative)
    src = keypoints1[matches[:, 0]].astype(np.float32)
    dst = keypoints2[matches[:, 1]].astype(np.float32)
    spread = float(np.ptp(keypoints2, axis=0).max()) if len(keypoints2) else 0.0
    threshold = max(1.0, config.relative_threshold * spread)
    if config.geometry == "fundamental":
        return _verify_fundamental(keypoints1, keypoints2, matches, src, dst, threshold, config)
    homography, mask = cv2.findHomography(src, dst, _usac_params(config, threshold))
    if homography is None or mask is None or not _plausible(homography, config.max_area_change):
        return Verification.failed(tentative)
    inlier_matches = matches[mask.ravel().astype(bool)]
    return Verification(_distinct_inliers(keypoints1, keypoints2, inlier_matches), homography, inlier_matches, tentative)


def _verify_fundamental(
    keypoints1: np.ndarray,
    keypoints2: np.ndarray,
    matches: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    config: VerificationConfig,
) -> Verification:
    """Fundamental-matrix RANSAC (needs 8 matches); inliers lie within ``threshold`` px
    of their epipolar lines."""
    tentative = int(len(matches))
    if tentative < 8:
        return Verification.failed(tentative)
    try:
        fundamental, mask = cv2.findFundamentalMat(src, dst, _usac_params(config, threshold))
    except cv2.error:  # USAC asserts on some degenerate samples (e.g. all points on a line)
        return Verification.failed(tentative)
    if fundamental is None or mask is None or fundamental.shape != (3, 3):
        return Verification.failed(tentative)
    inlier_matches = matches[mask.ravel().astype(bool)]
    inliers = _distinct_inliers(keypoints1, keypoints2, inlier_matches)
    return Verification(inliers, None, inlier_matches, tentative, fundamental=fundamental)


def _usac_params(config: VerificationConfig, threshold: float) -> cv2.UsacParams:
    """The settings of OpenCV's ``USAC_MAGSAC`` preset (uniform sampling, MAGSAC++ score,
    sigma-consensus local optimisation on 50 points) with our seed. Checked on WxBS
    matches: the same inliers as the preset on 280 of 280 fundamental-matrix fits and
    391 of 392 homographies with seed 0. ``score="msac"`` swaps in the MSAC score with
    inner local optimisation (OpenCV's ``USAC_DEFAULT`` choices)."""
    params = cv2.UsacParams()
    params.sampler = cv2.SAMPLING_UNIFORM
    if config.score == "msac":
        params.score = cv2.SCORE_METHOD_MSAC
        params.loMethod = cv2.LOCAL_OPTIM_INNER_LO
    else:
        params.score = cv2.SCORE_METHOD_MAGSAC
        params.loMethod = cv2.LOCAL_OPTIM_SIGMA
    params.loSampleSize = 50
    params.loIterations = 20 if config.geometry == "homography" else 10
    params.final_polisher = cv2.COV_POLISHER
    params.final_polisher_iterations = 3
    params.maxIterations = config.max_iterations
    params.confidence = config.confidence
    params.threshold = threshold
    params.randomGeneratorState = config.seed
    params.isParallel = False
    return params


def _plausible(homography: np.ndarray, max_area_change: float) -> bool:
    """Reject reflections, extreme scale changes and strong perspective."""
    h = homography / homography[2, 2] if abs(homography[2, 2]) > 1e-12 else homography
    det = float(np.linalg.det(h[:2, :2]))
    if not np.isfinite(det) or det <= 0:
        return False
    if det > max_area_change or det < 1.0 / max_area_change:
        return False
    return float(np.abs(h[2, :2]).max()) < 0.01


def _distinct_inliers(keypoints1: np.ndarray, keypoints2: np.ndarray, matches: np.ndarray) -> int:
    """Count inliers once per keypoint location on each side (SIFT repeats a location
    for each dominant orientation; those repeats are not independent evidence)."""
    if len(matches) == 0:
        return 0
    return int(min(_distinct_locations(keypoints1[matches[:, 0]]), _distinct_locations(keypoints2[matches[:, 1]])))


def _distinct_locations(points: np.ndarray) -> int:
    """Number of distinct (x, y) of (K, 2) points rounded to pixels; one int64 key per
    point (a 1-D unique is several times faster than ``np.unique(axis=0)``)."""
    pixels = np.round(points).astype(np.int64)
    return len(np.unique((pixels[:, 0] << 32) + pixels[:, 1]))
