from __future__ import annotations

import struct

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


def _signed_features(n: int = 50, dim: int = 120) -> LocalFeatures:
    """Unit descriptors with both signs (CNN cells), as the int8 format stores them."""
    rng = np.random.default_rng(3)
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return LocalFeatures(
        keypoints=rng.random((n, 2)).astype(np.float32) * 1000,
        descriptors=desc,
        scores=rng.random(n).astype(np.float32) * 50,
        scales=rng.choice([16.0, 32.0], n).astype(np.float32),
    )


def test_int8_round_trip_keeps_keypoints_exactly() -> None:
    features = _signed_features()
    back = LocalFeatures.from_bytes(features.to_bytes(descriptor_dtype="i1"))
    assert back.keypoints.dtype == np.float32
    assert np.array_equal(back.keypoints, features.keypoints)


def test_int8_round_trip_gives_unit_descriptors_close_in_cosine() -> None:
    features = _signed_features()
    back = LocalFeatures.from_bytes(features.to_bytes(descriptor_dtype="i1"))
    assert back.descriptors.dtype == np.float32
    assert np.allclose(np.linalg.norm(back.descriptors, axis=1), 1.0, atol=1e-5)
    cosine = np.einsum("ij,ij->i", back.descriptors, features.descriptors)
    assert cosine.min() > 1 - 1e-2


def test_int8_round_trip_keeps_descriptor_similarities_to_1e_2() -> None:
    features = _signed_features()
    back = LocalFeatures.from_bytes(features.to_bytes(descriptor_dtype="i1"))
    before = features.descriptors @ features.descriptors.T
    after = back.descriptors @ back.descriptors.T
    assert np.abs(after - before).max() < 1e-2


def test_int8_round_trip_keeps_scores_and_scales_to_half_precision() -> None:
    features = _signed_features()
    back = LocalFeatures.from_bytes(features.to_bytes(descriptor_dtype="i1"))
    assert back.scores.dtype == back.scales.dtype == np.float32
    assert np.allclose(back.scores, features.scores, rtol=2**-11, atol=0)
    assert np.allclose(back.scales, features.scales, rtol=2**-11, atol=0)
    assert not np.array_equal(back.scores, features.scores)  # they did go through float16


def test_int8_blob_size_is_header_plus_per_feature_bytes() -> None:
    n, dim = 1000, 120
    blob = _signed_features(n, dim).to_bytes(descriptor_dtype="i1")
    assert len(blob) == 13 + n * (8 + 2 + 2 + dim)
    assert blob[:4] == b"LFv2"


def test_int8_blob_is_smaller_than_the_half_precision_one() -> None:
    features = _signed_features(1000, 120)
    assert len(features.to_bytes(descriptor_dtype="i1")) < len(features.to_bytes()) / 1.8


def test_int8_round_trip_of_no_features() -> None:
    back = LocalFeatures.from_bytes(LocalFeatures.empty(120).to_bytes(descriptor_dtype="i1"))
    assert len(back) == 0
    assert back.dim == 120


def test_int8_round_trip_keeps_an_all_zero_descriptor_finite() -> None:
    features = _signed_features(4, 16)
    zeroed = LocalFeatures(
        features.keypoints, np.vstack([np.zeros((1, 16), np.float32), features.descriptors[1:]]),
        features.scores, features.scales,
    )  # fmt: skip
    back = LocalFeatures.from_bytes(zeroed.to_bytes(descriptor_dtype="i1"))
    assert np.all(np.isfinite(back.descriptors))
    assert np.array_equal(back.descriptors[0], np.zeros(16, np.float32))


@pytest.mark.parametrize("cut", [1, 2, 14])
def test_a_truncated_int8_blob_raises_feature_format_error(cut: int) -> None:
    blob = _signed_features(3, 16).to_bytes(descriptor_dtype="i1")
    with pytest.raises(FeatureFormatError, match="expected"):
        LocalFeatures.from_bytes(blob[:-cut])


def test_an_int8_blob_with_a_trailing_byte_raises_feature_format_error() -> None:
    blob = _signed_features(3, 16).to_bytes(descriptor_dtype="i1")
    with pytest.raises(FeatureFormatError):
        LocalFeatures.from_bytes(blob + b"\x00")


def _version_1_blob(features: LocalFeatures) -> bytes:
    """A version 1 blob laid out by hand (as rows stored before version 2 existed):
    header, float32 keypoints, scores and scales, float16 descriptors."""
    n, dim = len(features), features.dim
    return b"".join(
        [
            struct.pack("<4sIIB", b"LFv1", n, dim, 1),
            features.keypoints.astype("<f4").tobytes(),
            features.scores.astype("<f4").tobytes(),
            features.scales.astype("<f4").tobytes(),
            features.descriptors.astype("<f2").tobytes(),
        ]
    )


def test_version_1_blobs_are_still_read() -> None:
    features = _signed_features()
    back = LocalFeatures.from_bytes(_version_1_blob(features))
    assert np.array_equal(back.keypoints, features.keypoints)
    assert np.array_equal(back.scores, features.scores)  # float32 in version 1
    assert np.array_equal(back.scales, features.scales)
    assert np.abs(back.descriptors - features.descriptors).max() < 1e-3


def test_the_default_format_is_still_version_1() -> None:
    features = _signed_features()
    assert features.to_bytes() == _version_1_blob(features)


def test_a_version_1_blob_with_the_int8_code_is_refused() -> None:
    blob = bytearray(_signed_features(3, 16).to_bytes(descriptor_dtype="i1"))
    blob[:4] = b"LFv1"  # int8 rows only exist in version 2
    with pytest.raises(FeatureFormatError, match="magic or dtype"):
        LocalFeatures.from_bytes(bytes(blob))


def test_int8_rows_and_levels_are_computed_once_per_feature_set() -> None:
    """A query is matched against a hundred candidates: its quantised rows are reused."""
    features = _features()
    assert features.int8_rows is features.int8_rows
    assert features.int8_levels is features.int8_levels
    assert features.float_levels is features.float_levels
    assert sum(len(rows) for rows in features.int8_levels.rows) == len(features)
