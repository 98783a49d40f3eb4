"""Product-quantised local features (LANDMARKS_LOCAL_CODEBOOK): the index worker stores
version-3 rows under a model version that names the codebook, and search verifies with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval import services
from retrieval.extraction import get_extractor, reset_extractor
from retrieval.models import Catalog, ImageDescriptor, SearchQuery
from retrieval.vision import compact
from tests.conftest import encode
from tests.factories import CatalogFactory

pytestmark = pytest.mark.django_db

TRAINING_PHOTOS = ("astronaut", "brick", "chelsea", "coffee", "coins", "gravel", "motorcycle_left", "retina")


@pytest.fixture
def codebook_path(settings, tmp_path: Path, real_photos) -> Iterator[Path]:
    """A pq16 codebook learned on the test extractor's local features of real photos, in use."""
    reset_extractor()
    extractor = get_extractor()
    cells = np.concatenate([extractor.extract(real_photos[name]).local.descriptors for name in TRAINING_PHOTOS])
    path = tmp_path / "book.npz"
    compact.train_codebook(cells, compact.CodebookSpec.parse("pq16"), seed=0, iterations=10).save(path)
    settings.LANDMARKS_LOCAL_CODEBOOK = path
    reset_extractor()
    yield path
    reset_extractor()


def _index(catalog: Catalog, photo: np.ndarray, name: str) -> int:
    image = services.image_ingest(catalog=catalog, data=encode(photo), filename=name, enqueue=False).image
    services.image_index(image_id=image.pk, task_id=f"task-{name}")
    return image.pk


def test_indexed_rows_are_compact_and_name_their_codebook(codebook_path: Path, real_photos) -> None:
    image_id = _index(CatalogFactory(), real_photos["rocket"], "rocket.jpg")
    row = ImageDescriptor.objects.select_related("model").get(image_id=image_id)
    book = compact.Codebook.load(codebook_path)
    assert bytes(row.local_features)[:4] == b"LFv3"
    assert row.model.version.endswith(f"+pq16.{book.digest.hex()}")
    assert len(row.local_features) == 21 + row.num_local * (4 + 2 + 16)  # keypoint, size, 16 codes


def test_search_verifies_against_compact_rows(codebook_path: Path, real_photos) -> None:
    catalog = CatalogFactory()
    rocket = _index(catalog, real_photos["rocket"], "rocket.jpg")
    _index(catalog, real_photos["coffee"], "coffee.jpg")
    query = services.search_create(catalog=catalog, data=encode(real_photos["rocket"]), filename="q.jpg", enqueue=False)
    services.search_execute(query_id=query.pk, task_id="search")
    done = SearchQuery.objects.get(pk=query.pk)
    assert done.status == "done", done.error
    best = done.results[0]
    assert best["image_id"] == rocket and best["verified"]
