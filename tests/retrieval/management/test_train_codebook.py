from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from retrieval.models import Catalog
from retrieval.vision import compact
from retrieval.vision.features import LocalFeatures
from tests.factories import CatalogFactory, CatalogImageFactory, FeatureModelFactory, ImageDescriptorFactory
from tests.vision.test_compact import clustered_cells

pytestmark = pytest.mark.django_db


def _cells_blob(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return LocalFeatures(
        keypoints=(rng.random((n, 2)) * 800).astype(np.float32),
        descriptors=clustered_cells(n, seed=seed),
        scores=np.zeros(n, np.float32),
        scales=np.full(n, 16.0, np.float32),
    ).to_bytes(descriptor_dtype="i1")


def _catalog(images: int, cells: int) -> Catalog:
    catalog = CatalogFactory()
    model = FeatureModelFactory(local_dim=16)
    for seed in range(images):
        ImageDescriptorFactory(image=CatalogImageFactory(catalog=catalog), model=model, local_features=_cells_blob(cells, seed))
    return catalog


def test_a_codebook_is_learned_from_the_catalogs_stored_cells(tmp_path: Path, capsys) -> None:
    catalog = _catalog(images=11, cells=1000)
    out = tmp_path / "book.npz"
    call_command("train_codebook", catalog=catalog.name, spec="pq4", out=out)
    book = compact.Codebook.load(out)
    assert book.centroids.shape == (4, 256, 4)
    assert "11000 cells of 11 photos" in capsys.readouterr().out
    # it fits the catalog's cells: decoded rows stay close to the stored ones
    cells = clustered_cells(500, seed=3)
    assert np.median(np.einsum("ij,ij->i", book.reconstruct(book.codes(cells)), cells)) > 0.95


def test_too_few_cells_are_refused_with_the_count_needed(tmp_path: Path) -> None:
    catalog = _catalog(images=2, cells=500)
    with pytest.raises(CommandError, match="1000 local features in 2 photos; a codebook needs at least 10240"):
        call_command("train_codebook", catalog=catalog.name, spec="pq4", out=tmp_path / "b.npz")
    assert not (tmp_path / "b.npz").exists()


@pytest.mark.parametrize(("spec", "message"), [("pq5", "do not divide 16"), ("sq8", "pq20 or opq24")])
def test_a_bad_spec_is_refused(spec: str, message: str, tmp_path: Path) -> None:
    catalog = _catalog(images=11, cells=1000)
    with pytest.raises(CommandError, match=message):
        call_command("train_codebook", catalog=catalog.name, spec=spec, out=tmp_path / "b.npz")


def test_an_unknown_catalog_is_refused() -> None:
    with pytest.raises(CommandError, match="no catalog named 'nowhere'"):
        call_command("train_codebook", catalog="nowhere")


def test_a_catalog_without_indexed_photos_is_refused() -> None:
    with pytest.raises(CommandError, match="no indexed photos"):
        call_command("train_codebook", catalog=CatalogFactory().name)
