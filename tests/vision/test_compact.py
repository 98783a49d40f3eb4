from __future__ import annotations

import numpy as np
import pytest

from retrieval.vision import compact
from retrieval.vision.features import FeatureFormatError, LocalFeatures

DIM = 16


def clustered_cells(n: int, *, seed: int = 0, clusters: int = 64) -> np.ndarray:
    """(n, DIM) unit rows around ``clusters`` centres, so that a codebook has structure to learn."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(clusters, DIM))
    rows = centres[rng.integers(0, clusters, n)] + 0.15 * rng.normal(size=(n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def two_levels(fine: int = 60, coarse: int = 20, *, seed: int = 1, extent: float = 1000.0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    n = fine + coarse
    return LocalFeatures(
        keypoints=(rng.random((n, 2)) * extent).astype(np.float32),
        descriptors=clustered_cells(n, seed=seed),
        scores=rng.random(n).astype(np.float32),
        scales=np.array([16.0] * fine + [32.0] * coarse, np.float32),
    )


@pytest.fixture(scope="module")
def codebook() -> compact.Codebook:
    return compact.train_codebook(clustered_cells(12_000), compact.CodebookSpec.parse("pq4"), seed=0)


def test_round_trip_keeps_levels_and_keypoints_to_half_a_pixel(codebook: compact.Codebook) -> None:
    features = two_levels()
    back = compact.decode(compact.encode(features, codebook), codebook)
    assert np.array_equal(back.scales, features.scales)
    assert np.abs(back.keypoints - features.keypoints).max() <= 0.5
    assert back.descriptors.shape == features.descriptors.shape


def test_decoded_descriptors_stay_close_to_the_originals(codebook: compact.Codebook) -> None:
    features = two_levels()
    back = compact.decode(compact.encode(features, codebook), codebook)
    cosine = np.einsum("ij,ij->i", back.descriptors, features.descriptors)
    assert np.allclose(np.linalg.norm(back.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.median(cosine) > 0.97


def test_scattered_keypoints_take_eight_bytes_a_feature_with_pq4(codebook: compact.Codebook) -> None:
    blob = compact.encode(two_levels(60, 20), codebook)
    assert len(blob) == 21 + 2 * 18 + 80 * (4 + 4)  # keypoints 2 x uint16, 4 codes


def test_keypoints_beyond_sixteen_bits_are_stored_in_coarser_units(codebook: compact.Codebook) -> None:
    features = two_levels(extent=200_000.0)
    back = compact.decode(compact.encode(features, codebook), codebook)
    assert np.abs(back.keypoints - features.keypoints).max() <= 200_000.0 / 65535


def test_a_blob_refuses_another_codebook(codebook: compact.Codebook) -> None:
    other = compact.train_codebook(clustered_cells(12_000, seed=5), compact.CodebookSpec.parse("pq4"), seed=1)
    with pytest.raises(FeatureFormatError, match="another codebook"):
        compact.decode(compact.encode(two_levels(), codebook), other)


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_a_truncated_blob_is_refused(codebook: compact.Codebook, cut: int) -> None:
    blob = compact.encode(two_levels(), codebook)
    with pytest.raises(FeatureFormatError):
        compact.decode(blob[:-cut], codebook)


@pytest.mark.parametrize("text", ["pq", "pq0", "sq8", "opq", "pq-4"])
def test_bad_codebook_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="pq20 or opq24"):
        compact.CodebookSpec.parse(text)


def test_opq_learns_an_orthogonal_rotation() -> None:
    book = compact.train_codebook(clustered_cells(12_000), compact.CodebookSpec.parse("opq4"), seed=0, iterations=5)
    assert book.rotation is not None
    assert np.allclose(book.rotation @ book.rotation.T, np.eye(DIM), atol=1e-4)
    features = two_levels()
    back = compact.decode(compact.encode(features, book), book)
    assert np.median(np.einsum("ij,ij->i", back.descriptors, features.descriptors)) > 0.95


def test_saved_codebook_loads_with_the_same_digest(codebook: compact.Codebook, tmp_path) -> None:
    codebook.save(tmp_path / "book.npz")
    assert compact.Codebook.load(tmp_path / "book.npz").digest == codebook.digest


def test_codec_without_codebook_writes_and_reads_int8_rows() -> None:
    codec = compact.LocalCodec(descriptor_dtype="i1")
    blob = codec.encode(two_levels())
    assert blob[:4] == b"LFv2"
    assert len(codec.decode(blob)) == 80
    assert codec.tag == ""


def test_codec_tag_names_the_spec_and_digest(codebook: compact.Codebook) -> None:
    assert compact.LocalCodec(codebook=codebook).tag == f"pq4.{codebook.digest.hex()}"


def test_rows_of_a_remembered_codebook_stay_readable_after_it_is_replaced(codebook: compact.Codebook, tmp_path) -> None:
    old = compact.LocalCodec(codebook=codebook, library=tmp_path)
    old.remember()
    blob = old.encode(two_levels())
    newer = compact.train_codebook(clustered_cells(12_000, seed=7), compact.CodebookSpec.parse("pq4"), seed=2)
    features = compact.LocalCodec(codebook=newer, library=tmp_path).decode(blob)
    assert np.array_equal(features.descriptors, compact.decode(blob, codebook).descriptors)


def test_rows_of_an_unknown_codebook_ask_for_a_reindex(codebook: compact.Codebook, tmp_path) -> None:
    blob = compact.encode(two_levels(), codebook)
    with pytest.raises(FeatureFormatError, match="reindex"):
        compact.LocalCodec(library=tmp_path).decode(blob)


def test_keypoints_with_their_own_sizes_keep_each_size_to_half_precision(codebook: compact.Codebook) -> None:
    rng = np.random.default_rng(3)
    n = 400
    features = LocalFeatures(
        keypoints=(rng.random((n, 2)) * 500).astype(np.float32),
        descriptors=clustered_cells(n, seed=3),
        scores=np.zeros(n, np.float32),
        scales=(1 + rng.random(n) * 20).astype(np.float32),
    )
    blob = compact.encode(features, codebook)
    back = compact.decode(blob, codebook)
    assert len(blob) == 21 + n * (4 + 2 + 4)
    assert np.allclose(back.scales, features.scales, rtol=1e-3)


def grid_cells(step_x: float, step_y: float, columns: int, rows: int, keep: int, *, seed: int) -> LocalFeatures:
    """``keep`` cells of a columns x rows grid (centres), in random order."""
    rng = np.random.default_rng(seed)
    index = rng.choice(columns * rows, keep, replace=False)
    keypoints = np.stack([(index % columns + 0.5) * step_x, (index // columns + 0.5) * step_y], axis=1)
    return LocalFeatures(
        keypoints=keypoints.astype(np.float32),
        descriptors=clustered_cells(keep, seed=seed),
        scores=np.zeros(keep, np.float32),
        scales=np.full(keep, max(step_x, step_y), np.float32),
    )


def test_cells_of_a_grid_take_two_bytes_of_keypoint_and_come_back_exactly(codebook: compact.Codebook) -> None:
    fine = grid_cells(15.97, 16.02, 64, 48, 300, seed=1)
    coarse = grid_cells(31.94, 32.04, 32, 24, 100, seed=2)
    features = LocalFeatures(
        keypoints=np.concatenate([fine.keypoints, coarse.keypoints]),
        descriptors=np.concatenate([fine.descriptors, coarse.descriptors]),
        scores=np.zeros(400, np.float32),
        scales=np.concatenate([fine.scales, coarse.scales]),
    )
    blob = compact.encode(features, codebook)
    back = compact.decode(blob, codebook)
    assert len(blob) == 21 + 2 * 18 + 400 * (2 + 4)
    assert np.abs(back.keypoints - features.keypoints).max() < 1e-3
    assert np.array_equal(back.scales, features.scales)


def test_a_photo_without_features_round_trips(codebook: compact.Codebook) -> None:
    back = compact.decode(compact.encode(LocalFeatures.empty(DIM), codebook), codebook)
    assert len(back) == 0 and back.descriptors.shape == (0, DIM)


def test_a_grid_too_wide_for_sixteen_bits_falls_back_to_x_and_y(codebook: compact.Codebook) -> None:
    features = LocalFeatures(
        keypoints=np.array([[0.5, 0.5], [1.5, 0.5], [65535.5, 0.5]], np.float32),
        descriptors=clustered_cells(3),
        scores=np.zeros(3, np.float32),
        scales=np.ones(3, np.float32),
    )
    back = compact.decode(compact.encode(features, codebook), codebook)
    assert np.abs(back.keypoints - features.keypoints).max() <= 1.0


@pytest.mark.parametrize("content", [b"not a codebook", b""])
def test_a_file_that_is_not_a_codebook_is_refused(tmp_path, content: bytes) -> None:
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(ValueError, match="is not a codebook"):
        compact.Codebook.load(tmp_path / "bad.npz")


def test_a_codebook_with_more_than_256_centroids_is_refused() -> None:
    with pytest.raises(ValueError, match="<=256"):
        compact.Codebook(centroids=np.zeros((4, 300, 4), np.float32))
