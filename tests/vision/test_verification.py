"""Geometric verification on real photos with known transformations."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from retrieval.vision.extractors.rootsift import RootSIFT
from retrieval.vision.features import LocalFeatures
from retrieval.vision.matching import match_descriptors
from retrieval.vision.verification import (
    Verification,
    VerificationConfig,
    most_inliers,
    tentative_matches,
    verify_best,
    verify_matches,
    verify_pair,
)
from tests.conftest import load_photo


@pytest.fixture(scope="module")
def sift() -> RootSIFT:
    return RootSIFT(max_features=1000)


def _warp(image: np.ndarray, homography: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.warpPerspective(image, homography, (width, height), borderMode=cv2.BORDER_REFLECT)


KNOWN_H = np.array([[0.9, -0.12, 40.0], [0.1, 0.95, 10.0], [1e-5, 2e-5, 1.0]])


def test_rootsift_descriptors_have_unit_norm_and_keypoints_in_original_pixels(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    big = cv2.resize(photo, (2048, 2048))  # extracted at 1024, reported at 2048
    features = sift.extract_local(big)
    assert 100 < len(features) <= 1000
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    assert features.keypoints[:, 0].max() > 1024


def test_a_known_homography_is_recovered_within_a_few_pixels(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    warped = _warp(photo, KNOWN_H)
    result = verify_pair(sift.extract_local(photo), sift.extract_local(warped))
    assert result.inliers > 100
    assert result.homography is not None
    grid = np.array([[x, y, 1.0] for x in (100, 250, 400) for y in (100, 250, 400)]).T
    expected = KNOWN_H @ grid
    got = result.homography @ grid
    error = np.linalg.norm(expected[:2] / expected[2] - got[:2] / got[2], axis=0)
    assert error.max() < 3.0


def test_unrelated_photos_give_few_inliers(sift: RootSIFT) -> None:
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    features = [sift.extract_local(load_photo(n)) for n in names]
    for i in range(len(features)):
        for j in range(i + 1, len(features)):
            assert verify_pair(features[i], features[j]).inliers < 12, (names[i], names[j])


def test_matching_is_one_to_one() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 32)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.concatenate([a[:50], a[:50]])  # every b feature has an identical twin
    matches = match_descriptors(a, b, ratio=1.0, mutual=True)
    assert len(np.unique(matches[:, 1])) == len(matches)
    assert len(np.unique(matches[:, 0])) == len(matches)


def test_matching_with_nothing_to_match_is_empty() -> None:
    assert match_descriptors(np.zeros((0, 8), np.float32), np.ones((5, 8), np.float32)).shape == (0, 2)


def test_matching_refuses_mismatched_dimensions() -> None:
    with pytest.raises(ValueError, match="shapes"):
        match_descriptors(np.ones((3, 8), np.float32), np.ones((3, 16), np.float32))


def test_mutual_matching_keeps_one_row_when_two_query_rows_are_identical() -> None:
    rng = np.random.default_rng(2)
    b = rng.normal(size=(20, 16)).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    a = np.concatenate([b[:5], b[:5]])  # rows 0-4 and 5-9 are twins
    matches = match_descriptors(a, b, ratio=1.0, mutual=True)
    assert sorted(matches[:, 1].tolist()) == [0, 1, 2, 3, 4]
    assert len(np.unique(matches[:, 0])) == 5


def _weak_matches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 noisy matches of one homography among 160 random ones: a fit RANSAC's luck decides."""
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 800, size=(200, 2)).astype(np.float32)
    projected = cv2.perspectiveTransform(src[None], KNOWN_H)[0]
    dst = np.where(np.arange(200)[:, None] < 40, projected + rng.normal(0, 3, (200, 2)), rng.uniform(0, 800, (200, 2)))
    return src, dst.astype(np.float32), np.stack([np.arange(200), np.arange(200)], axis=1)


def test_the_same_ransac_seed_gives_the_same_inliers() -> None:
    src, dst, matches = _weak_matches()
    config = VerificationConfig(seed=3, max_iterations=50)
    first, second = verify_matches(src, dst, matches, config), verify_matches(src, dst, matches, config)
    assert first.inliers == second.inliers and np.array_equal(first.matches, second.matches)


def test_the_ransac_seed_reaches_opencv() -> None:
    src, dst, matches = _weak_matches()
    results = {
        tuple(verify_matches(src, dst, matches, VerificationConfig(seed=seed, max_iterations=50)).matches[:, 0])
        for seed in range(10)
    }
    assert len(results) > 1


def test_verify_best_keeps_the_query_set_with_the_most_inliers(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    candidate = sift.extract_local(_warp(photo, KNOWN_H))
    unrelated = sift.extract_local(load_photo("coffee.png"))
    index, best = verify_best([unrelated, sift.extract_local(photo)], candidate)
    assert index == 1
    assert best.inliers == verify_pair(sift.extract_local(photo), candidate).inliers > 100


def test_most_inliers_keeps_the_first_of_equal_results() -> None:
    none = np.zeros((0, 2), np.int64)
    results = [Verification.failed(5), Verification(7, None, none, 9), Verification(7, None, none, 8)]
    index, best = most_inliers(results)
    assert index == 1 and best is results[1]


def test_most_inliers_refuses_an_empty_list() -> None:
    with pytest.raises(ValueError, match="no verifications"):
        most_inliers([])


def test_verify_best_refuses_an_empty_query(sift: RootSIFT) -> None:
    with pytest.raises(ValueError, match="no query features"):
        verify_best([], sift.extract_local(load_photo("astronaut.png")))


def _as_level(features: LocalFeatures, level: float) -> LocalFeatures:
    """``features`` labelled as one level: every ``scales`` entry set to ``level``."""
    return dataclasses.replace(features, scales=np.full(len(features), level, np.float32))


def _two_identical_levels(features: LocalFeatures) -> LocalFeatures:
    """Every feature twice, once per level: a ratio test over both levels at once finds
    each nearest neighbour's twin as close as the neighbour itself."""
    return LocalFeatures(
        keypoints=np.concatenate([features.keypoints, features.keypoints]),
        descriptors=np.concatenate([features.descriptors, features.descriptors]),
        scores=np.concatenate([features.scores, features.scores]),
        scales=np.repeat(np.array([16.0, 32.0], np.float32), len(features)),
    )


def test_per_level_matching_uses_scales_as_the_level_labels(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    query = _as_level(sift.extract_local(photo), 16.0)
    candidate = _two_identical_levels(sift.extract_local(_warp(photo, KNOWN_H)))
    flat = tentative_matches(query, candidate, VerificationConfig())
    per_level = tentative_matches(query, candidate, VerificationConfig(per_level=True))
    assert len(flat) == 0  # every match fails the ratio test against its twin
    assert len(per_level) > 100
    assert len(np.unique(per_level[:, 0])) == len(np.unique(per_level[:, 1])) == len(per_level)


def test_per_level_verification_of_a_known_homography_finds_many_inliers(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    query = _as_level(sift.extract_local(photo), 16.0)
    candidate = _two_identical_levels(sift.extract_local(_warp(photo, KNOWN_H)))
    assert verify_pair(query, candidate).inliers == 0
    assert verify_pair(query, candidate, VerificationConfig(per_level=True)).inliers > 100


def test_per_level_matching_of_one_level_is_plain_matching(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    query = _as_level(sift.extract_local(photo), 16.0)
    candidate = _as_level(sift.extract_local(_warp(photo, KNOWN_H)), 16.0)
    flat = tentative_matches(query, candidate, VerificationConfig())
    per_level = tentative_matches(query, candidate, VerificationConfig(per_level=True))
    assert len(flat) > 100
    assert {tuple(m) for m in per_level.tolist()} == {tuple(m) for m in flat.tolist()}


def test_per_level_matching_of_fewer_than_four_features_is_empty(sift: RootSIFT) -> None:
    features = _two_identical_levels(sift.extract_local(load_photo("astronaut.png")))
    few = LocalFeatures(features.keypoints[:3], features.descriptors[:3], features.scores[:3], features.scales[:3])
    assert tentative_matches(few, features, VerificationConfig(per_level=True)).shape == (0, 2)


def test_msac_with_the_same_seed_gives_the_same_inliers() -> None:
    src, dst, matches = _weak_matches()
    config = VerificationConfig(score="msac", seed=3, max_iterations=50)
    first, second = verify_matches(src, dst, matches, config), verify_matches(src, dst, matches, config)
    assert first.inliers > 0
    assert first.inliers == second.inliers and np.array_equal(first.matches, second.matches)


def test_msac_takes_the_ransac_seed() -> None:
    src, dst, matches = _weak_matches()
    configs = [VerificationConfig(score="msac", seed=seed, max_iterations=50) for seed in range(10)]
    results = {tuple(verify_matches(src, dst, matches, config).matches[:, 0]) for config in configs}
    assert len(results) > 1


def _noisy_homography_matches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 matches of KNOWN_H with 3 px noise among 100 random ones: an easy fit whose
    border inliers depend on the model score."""
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 800, size=(300, 2)).astype(np.float32)
    projected = cv2.perspectiveTransform(src[None].astype(np.float64), KNOWN_H)[0]
    noisy = projected + rng.normal(0, 3, (300, 2))
    dst = np.where(np.arange(300)[:, None] < 200, noisy, rng.uniform(0, 800, (300, 2)))
    return src, dst.astype(np.float32), np.stack([np.arange(300), np.arange(300)], axis=1)


def test_the_msac_score_reaches_opencv() -> None:
    src, dst, matches = _noisy_homography_matches()
    magsac = verify_matches(src, dst, matches, VerificationConfig(seed=0))
    msac = verify_matches(src, dst, matches, VerificationConfig(seed=0, score="msac"))
    assert (msac.matches[:, 0] < 200).sum() > 170  # the planted model (rows 0-199)
    assert (magsac.matches[:, 0] < 200).sum() > 170
    assert set(msac.matches[:, 0].tolist()) != set(magsac.matches[:, 0].tolist())


def test_msac_recovers_a_known_homography_with_many_inliers(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    config = VerificationConfig(score="msac")
    result = verify_pair(sift.extract_local(photo), sift.extract_local(_warp(photo, KNOWN_H)), config)
    assert result.inliers > 100
    assert result.homography is not None
    grid = np.array([[x, y, 1.0] for x in (100, 250, 400) for y in (100, 250, 400)]).T
    expected, got = KNOWN_H @ grid, result.homography @ grid
    assert np.linalg.norm(expected[:2] / expected[2] - got[:2] / got[2], axis=0).max() < 3.0


def test_msac_fits_a_fundamental_matrix_of_a_known_warp(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    config = VerificationConfig(score="msac", geometry="fundamental")
    result = verify_pair(sift.extract_local(photo), sift.extract_local(_warp(photo, KNOWN_H)), config)
    assert result.inliers > 100
    assert result.fundamental is not None and result.homography is None


def test_msac_keeps_unrelated_photos_below_a_dozen_inliers(sift: RootSIFT) -> None:
    config = VerificationConfig(score="msac")
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]
    features = [sift.extract_local(load_photo(n)) for n in names]
    for i in range(len(features)):
        for j in range(i + 1, len(features)):
            assert verify_pair(features[i], features[j], config).inliers < 12, (names[i], names[j])


def test_int8_per_level_verification_of_a_known_homography_finds_many_inliers(sift: RootSIFT) -> None:
    photo = load_photo("astronaut.png")
    query = _as_level(sift.extract_local(photo), 16.0)
    candidate = _two_identical_levels(sift.extract_local(_warp(photo, KNOWN_H)))
    floats = verify_pair(query, candidate, VerificationConfig(per_level=True))
    int8 = verify_pair(query, candidate, VerificationConfig(per_level=True, precision="int8"))
    assert int8.inliers > 100
    assert abs(int8.inliers - floats.inliers) <= 0.05 * floats.inliers


def test_int8_verification_keeps_unrelated_photos_below_a_dozen_inliers(sift: RootSIFT) -> None:
    config = VerificationConfig(per_level=True, precision="int8", score="msac")
    query = _as_level(sift.extract_local(load_photo("astronaut.png")), 16.0)
    other = _as_level(sift.extract_local(load_photo("coffee.png")), 16.0)
    assert verify_pair(query, other, config).inliers < 12
