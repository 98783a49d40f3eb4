"""Geometric verification on real photos with known transformations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from retrieval.vision.extractors.rootsift import RootSIFT
from retrieval.vision.matching import match_descriptors
from retrieval.vision.verification import VerificationConfig, verify_best, verify_matches, verify_pair
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


def test_verify_best_refuses_an_empty_query(sift: RootSIFT) -> None:
    with pytest.raises(ValueError, match="no query features"):
        verify_best([], sift.extract_local(load_photo("astronaut.png")))
