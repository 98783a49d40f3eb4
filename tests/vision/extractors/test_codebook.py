from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.vision import compact
from retrieval.vision.extractors.base import Extractor
from retrieval.vision.extractors.codebook import CodebookExtractor
from retrieval.vision.extractors.registry import ExtractorConfig, UnknownModelError, _with_codebook
from retrieval.vision.features import ImageFeatures, LocalFeatures
from tests.vision.test_compact import DIM, clustered_cells


class Cells(Extractor):
    """A stand-in pipeline: 50 fixed cells of DIM dims on one level."""

    descriptor_dtype = "i1"
    model_name = "cells"
    model_version = "7"
    global_dim = 8
    local_dim = DIM

    def extract(self, image: np.ndarray) -> ImageFeatures:
        rng = np.random.default_rng(0)
        local = LocalFeatures(
            keypoints=(rng.random((50, 2)) * 100).astype(np.float32),
            descriptors=clustered_cells(50),
            scores=np.ones(50, np.float32),
            scales=np.full(50, 16.0, np.float32),
        )
        return ImageFeatures(global_descriptor=np.eye(8, dtype=np.float32)[0], local=local)


def cells_config(cache_dir: Path, codebook: Path) -> ExtractorConfig:
    return ExtractorConfig(
        spec="cells", cache_dir=cache_dir, global_image_size=0, global_scales=(1.0,), max_keypoints=0,
        max_local_cells=0, query_scales=(1.0,), dense_fine_size=0, dense_global_scales=(1.0,), dense_fine_cells=0,
        dense_coarse_cells=0, dense_query_fine_cells=0, dense_query_coarse_cells=0, local_codebook=codebook,
    )  # fmt: skip


@pytest.fixture(scope="module")
def codebook() -> compact.Codebook:
    return compact.train_codebook(clustered_cells(12_000), compact.CodebookSpec.parse("pq4"), seed=0)


def test_the_model_version_names_the_codebook(codebook: compact.Codebook) -> None:
    wrapped = CodebookExtractor(Cells(), compact.LocalCodec(codebook=codebook))
    assert wrapped.model_name == "cells"
    assert wrapped.model_version == f"7+pq4.{codebook.digest.hex()}"


def test_stored_rows_are_product_quantised_and_read_back(codebook: compact.Codebook) -> None:
    wrapped = CodebookExtractor(Cells(), compact.LocalCodec(codebook=codebook))
    local = wrapped.extract(np.zeros((32, 32, 3), np.uint8)).local
    blob = wrapped.codec.encode(local)
    assert blob[:4] == b"LFv3"
    assert wrapped.codec.decode(blob).descriptors.shape == (50, DIM)


def test_a_codebook_for_other_dimensions_is_refused(codebook: compact.Codebook) -> None:
    other = Cells()
    other.local_dim = 32  # type: ignore[misc]
    with pytest.raises(ValueError, match="16-d local descriptors, cells makes 32-d"):
        CodebookExtractor(other, compact.LocalCodec(codebook=codebook))


def test_an_unreadable_codebook_file_is_a_model_error(tmp_path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a codebook")
    config = cells_config(tmp_path, tmp_path / "bad.npz")
    with pytest.raises(UnknownModelError, match="cannot read the local-feature codebook"):
        _with_codebook(Cells(), config)


def test_the_codebook_in_use_is_kept_in_the_model_cache(codebook: compact.Codebook, tmp_path) -> None:
    codebook.save(tmp_path / "book.npz")
    config = cells_config(tmp_path, tmp_path / "book.npz")
    _with_codebook(Cells(), config)
    assert (tmp_path / "codebooks" / f"{codebook.digest.hex()}.npz").exists()
