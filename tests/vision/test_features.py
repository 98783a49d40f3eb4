from __future__ import annotations

import numpy as np
import pytest

from retrieval.vision.features import FeatureFormatError, LocalFeatures


def _features(n: int = 50, dim: int = 128) -> LocalFeatures:
    rng = np.random.default_rng(0)
    desc = rng.random((n, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return LocalFeatures(
        keypoints=rng.random((n, 2)).astype(np.float32) * 1000,
        descriptors=desc,
        scores=rng.random(n).astype(np.float32),
        scales=rng.random(n).astype(np.float32) * 10,
    )


def test_blob_round_trip_keeps_keypoints_exactly_and_descriptors_to_half_precision() -> None:
    features = _features()
    back = LocalFeatures.from_bytes(features.to_bytes())
    assert np.array_equal(back.keypoints, features.keypoints)
    assert np.array_equal(back.scores, features.scores)
    assert np.abs(back.descriptors - features.descriptors).max() < 1e-3


def test_blob_is_compact() -> None:
    blob = _features(1000, 128).to_bytes()
    assert len(blob) == 13 + 1000 * 16 + 1000 * 128 * 2  # ~272 kB for 1000 RootSIFT


def test_blob_round_trip_of_no_features() -> None:
    assert len(LocalFeatures.from_bytes(LocalFeatures.empty(64).to_bytes())) == 0


@pytest.mark.parametrize("blob", [b"", b"XXXX" + b"\x00" * 20, _features(3).to_bytes()[:-1]])
def test_malformed_blobs_raise_feature_format_error(blob: bytes) -> None:
    with pytest.raises(FeatureFormatError):
        LocalFeatures.from_bytes(blob)


def test_inconsistent_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="descriptors"):
        LocalFeatures(np.zeros((3, 2), np.float32), np.zeros((4, 8), np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32))
