"""Deleting a catalog image: row, descriptors and files go, and the augmented descriptors
of its neighbours are recomputed without it."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import selectors, services
from retrieval.models import Catalog, CatalogImage, ImageDescriptor
from retrieval.vision.expansion import database_side_augmentation
from tests.factories import CatalogFactory, ImageDescriptorFactory, feature_model_with_index
from tests.retrieval.services.test_augmentation import _augment, _augmented, _clusters

pytestmark = pytest.mark.django_db


def test_after_a_deletion_the_incremental_augmentation_equals_an_exact_one_without_it(settings) -> None:
    model = feature_model_with_index("augmentation-test-model")
    catalog = CatalogFactory()
    vectors = _clusters(np.random.default_rng(5), 20, 20)  # 400 rows: a deletion stays incremental
    ids = [ImageDescriptorFactory(image__catalog=catalog, model=model, embedding=v).image_id for v in vectors]
    _augment(catalog)
    gone = 7

    assert services.image_delete(image_id=ids[gone])
    written = _augment(catalog)

    assert not CatalogImage.objects.filter(pk=ids[gone]).exists()
    assert not ImageDescriptor.objects.filter(image_id=ids[gone]).exists()
    assert Catalog.objects.get(pk=catalog.pk).augment_pending is False  # the refresh ran
    assert 0 < written < len(ids) // 2  # its neighbourhood, not the catalog
    kept = [i for n, i in enumerate(ids) if n != gone]
    stored = selectors.descriptor_vectors(model=model, image_ids=kept, augmented=False)  # as halfvec keeps them
    plain = np.stack([stored[i] for i in kept])
    expected = database_side_augmentation(plain, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS)
    assert np.allclose(_augmented(model, kept), expected, atol=3e-3)


def test_deleting_an_unknown_image_reports_it() -> None:
    assert services.image_delete(image_id=123456) is False
