"""One picture or two: a similarity transform carries most matches of a copy only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from retrieval.vision.duplicates import picture_match
from retrieval.vision.extractors.rootsift import RootSIFT
from retrieval.vision.verification import VerificationConfig
from tests.conftest import load_photo

CONFIG = VerificationConfig(ratio=0.85, mutual=True)


@pytest.fixture(scope="module")
def sift() -> RootSIFT:
    return RootSIFT(max_features=1000)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def test_a_resized_cropped_reencoded_copy_is_one_picture(sift: RootSIFT) -> None:
    photo = load_photo("motorcycle_left.png")
    height, width = photo.shape[:2]
    copy = _jpeg(cv2.resize(photo[20 : height - 20, 30 : width - 30], None, fx=0.7, fy=0.7), 60)
    match = picture_match(sift.extract_local(photo), sift.extract_local(copy), CONFIG)
    assert match.share > 0.8 and match.inliers > 100
    assert match.scale == pytest.approx(0.7, abs=0.02)


def test_another_view_of_the_same_scene_is_not_one_picture(sift: RootSIFT) -> None:
    # The two cameras of a stereo pair: one scene, two viewpoints (depth moves its parts
    # by different amounts, which no similarity transform follows).
    left, right = load_photo("motorcycle_left.png"), load_photo("motorcycle_right.png")
    match = picture_match(sift.extract_local(left), sift.extract_local(right), CONFIG)
    assert match.tentative > 100
    assert match.share < 0.6


def test_unrelated_photos_share_almost_no_matches(sift: RootSIFT) -> None:
    match = picture_match(sift.extract_local(load_photo("coffee.png")), sift.extract_local(load_photo("rocket.jpg")), CONFIG)
    assert match.share < 0.2
