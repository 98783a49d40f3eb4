"""Indexing claims: an image another live task works on is not indexed twice, one whose
extractor cannot be built fails with the reason, and one deleted meanwhile gets no row."""

from __future__ import annotations


import pytest
from django.utils import timezone

from retrieval import services
from retrieval.models import CatalogImage
from tests.conftest import encode
from tests.factories import CatalogFactory

pytestmark = pytest.mark.django_db


def test_an_image_claimed_by_a_live_task_is_not_indexed_twice(real_photos) -> None:
    image = services.image_ingest(
        catalog=CatalogFactory(), data=encode(real_photos["rocket"]), filename="r.jpg", enqueue=False
    ).image
    CatalogImage.objects.filter(pk=image.pk).update(status="processing", claimed_by="task-1", claimed_at=timezone.now())
    services.image_index(image_id=image.pk, task_id="task-2")
    assert CatalogImage.objects.get(pk=image.pk).status == "processing"
    assert not image.descriptors.exists()
    services.image_index(image_id=image.pk, task_id="task-1")
    assert CatalogImage.objects.get(pk=image.pk).status == "indexed"
    assert image.descriptors.count() == 1


def test_an_image_whose_extractor_cannot_be_built_fails_with_the_reason_instead_of_waiting(
    real_photos, monkeypatch
) -> None:
    from retrieval import extraction

    def missing_weights(spec: str | None = None) -> None:
        raise FileNotFoundError("var/models/efficientnet-lite2.weights.h5")

    monkeypatch.setattr(extraction, "get_extractor", missing_weights)
    image = services.image_ingest(
        catalog=CatalogFactory(), data=encode(real_photos["rocket"]), filename="r.jpg", enqueue=False
    ).image
    services.image_index(image_id=image.pk, task_id="task-1")
    failed = CatalogImage.objects.get(pk=image.pk)
    assert failed.status == "failed" and failed.claimed_by == ""
    assert failed.failure_reason.startswith("The feature extractor could not be loaded: FileNotFoundError")


def test_a_photo_deleted_while_it_is_extracted_gets_no_descriptor_row(real_photos, monkeypatch) -> None:
    from retrieval.models import ImageDescriptor
    from retrieval.services import ingest

    image = services.image_ingest(
        catalog=CatalogFactory(), data=encode(real_photos["rocket"]), filename="r.jpg", enqueue=False
    ).image
    decode = ingest.image_decode

    def deleted_meanwhile(**kwargs: object) -> object:
        CatalogImage.objects.filter(pk=image.pk).delete()
        return decode(**kwargs)

    monkeypatch.setattr(ingest, "image_decode", deleted_meanwhile)
    assert services.image_index(image_id=image.pk, task_id="task-1") is None
    assert not ImageDescriptor.objects.filter(image_id=image.pk).exists()
