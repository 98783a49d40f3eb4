"""Ingest: a photo stored while the broker was away is queued when imported again."""

from __future__ import annotations


import pytest

from retrieval import services
from retrieval.models import CatalogImage
from tests.conftest import encode
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db


def test_reimporting_a_photo_that_never_reached_the_broker_queues_it(
    real_photos, django_capture_on_commit_callbacks
) -> None:
    catalog = CatalogFactory()
    data = encode(real_photos["rocket"])
    first = services.image_ingest(catalog=catalog, data=data, filename="r.jpg", enqueue=False).image
    assert first.queued_at is None
    with django_capture_on_commit_callbacks(execute=True):
        again = services.image_ingest(catalog=catalog, data=data, filename="r.jpg")
    assert not again.created and again.image.pk == first.pk
    assert CatalogImage.objects.get(pk=first.pk).queued_at is not None


def test_index_again_puts_images_back_to_pending_and_queues_them(django_capture_on_commit_callbacks) -> None:
    image = CatalogImageFactory(status="failed", failure_reason="bad")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.images_requeue(image_ids=[image.pk]) == 1
    requeued = CatalogImage.objects.get(pk=image.pk)
    assert requeued.status == "pending" and requeued.failure_reason == "" and requeued.queued_at is not None
