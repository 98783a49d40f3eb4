"""Reindex jobs resume after their worker died, fail an image that keeps killing it, skip
one deleted meanwhile, and switch a catalog to the new model only when nothing it serves
would be lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from retrieval import services
from retrieval.models import Catalog, CatalogImage
from tests.conftest import encode
from tests.factories import CatalogFactory, FeatureModelFactory, ImageDescriptorFactory

pytestmark = pytest.mark.django_db


def test_a_reindex_taken_over_from_a_dead_worker_skips_what_it_already_did(real_photos, settings) -> None:
    from retrieval.models import ImageDescriptor, ReindexJob

    catalog = CatalogFactory()
    started = timezone.now() - timedelta(seconds=1)
    images = [
        services.image_ingest(
            catalog=catalog, data=encode(real_photos[name]), filename=f"{name}.jpg", enqueue=False
        ).image
        for name in ("rocket", "coffee")
    ]
    for image in images:
        services.image_index(image_id=image.pk)
    done_before = ImageDescriptor.objects.get(image=images[0]).updated_at
    ImageDescriptor.objects.filter(image=images[1]).update(updated_at=started - timedelta(seconds=10))
    stale = timezone.now() - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS + 1)
    job = ReindexJob.objects.create(
        catalog=catalog, status="running", claimed_by="dead", claimed_at=stale, started_at=started, processed=1, total=2
    )
    services.reindex_run(job_id=job.pk, task_id="t2")
    job.refresh_from_db()
    assert job.status == "done" and job.processed == 2
    assert ImageDescriptor.objects.get(image=images[0]).updated_at == done_before  # not extracted again
    assert ImageDescriptor.objects.get(image=images[1]).updated_at > started


def test_a_reindex_image_that_keeps_killing_the_worker_fails_instead(real_photos, settings) -> None:
    from retrieval.models import ReindexJob

    catalog = CatalogFactory()
    image = services.image_ingest(
        catalog=catalog, data=encode(real_photos["rocket"]), filename="r.jpg", enqueue=False
    ).image
    CatalogImage.objects.filter(pk=image.pk).update(attempts=settings.LANDMARKS_TASK_MAX_ATTEMPTS)
    job = ReindexJob.objects.create(catalog=catalog)
    services.reindex_run(job_id=job.pk, task_id="t1")
    job.refresh_from_db()
    failed = CatalogImage.objects.get(pk=image.pk)
    assert job.status == "done" and job.failed == 1
    assert failed.status == "failed" and "never finished" in failed.failure_reason


def _served_by_an_old_model(real_photos, names: list[str]) -> tuple[object, dict[str, CatalogImage], object]:
    """A catalog whose photos have rows of an older model, which serves it."""
    from retrieval.extraction import get_extractor
    from retrieval.services import indexing

    # The new model's table index first: PostgreSQL builds none after rows in one transaction.
    indexing.feature_model_ensure(extractor=get_extractor())
    catalog = CatalogFactory()
    old = FeatureModelFactory(name="older-model")
    images = {}
    for name in names:
        image = services.image_ingest(
            catalog=catalog, data=encode(real_photos[name]), filename=f"{name}.jpg", enqueue=False
        ).image
        CatalogImage.objects.filter(pk=image.pk).update(status=CatalogImage.Status.INDEXED)
        ImageDescriptorFactory(image=image, model=old)
        images[name] = image
    Catalog.objects.filter(pk=catalog.pk).update(active_model=old)
    return catalog, images, old


def _reindexed(catalog: Catalog, task_id: str) -> object:
    """A stale-only reindex job of ``catalog`` run to its end by ``task_id``."""
    from retrieval.models import ReindexJob

    job = ReindexJob.objects.create(catalog=catalog, stale_only=True)
    services.reindex_run(job_id=job.pk, task_id=task_id)
    job.refresh_from_db()
    return job


def test_a_reindex_keeps_the_serving_model_while_a_photo_it_serves_failed_with_the_new_one(
    real_photos, monkeypatch
) -> None:
    from retrieval.services import indexing

    catalog, images, old = _served_by_an_old_model(real_photos, ["rocket", "coffee"])
    extract = indexing.image_extract

    def coffee_fails(*, image: CatalogImage, extractor: object, model: object) -> bool:
        if image.pk == images["coffee"].pk:
            indexing.image_fail(image, "Feature extraction failed: MemoryError")
            return False
        return extract(image=image, extractor=extractor, model=model)

    monkeypatch.setattr(indexing, "image_extract", coffee_fails)
    job = _reindexed(catalog, "t1")
    assert Catalog.objects.get(pk=catalog.pk).active_model_id == old.pk
    assert job.status == "failed" and "1 photos" in job.error and job.failed == 1

    monkeypatch.setattr(indexing, "image_extract", extract)  # the retry succeeds: the catalog switches
    again = _reindexed(catalog, "t2")
    assert again.status == "done" and Catalog.objects.get(pk=catalog.pk).active_model_id == again.model_id != old.pk


def test_a_reindex_does_not_switch_a_catalog_that_was_given_another_extractor_meanwhile(
    real_photos, monkeypatch
) -> None:
    from retrieval.services import indexing

    catalog, _, old = _served_by_an_old_model(real_photos, ["rocket"])
    extract = indexing.image_extract

    def reconfigured_meanwhile(*, image: CatalogImage, extractor: object, model: object) -> bool:
        Catalog.objects.filter(pk=catalog.pk).update(extractor_spec="effnet-lite0-dense")
        return extract(image=image, extractor=extractor, model=model)

    monkeypatch.setattr(indexing, "image_extract", reconfigured_meanwhile)
    job = _reindexed(catalog, "t1")
    assert Catalog.objects.get(pk=catalog.pk).active_model_id == old.pk
    assert job.status == "failed" and "effnet-lite0-dense" in job.error


def test_a_photo_deleted_while_the_reindex_extracts_it_is_skipped(real_photos, monkeypatch) -> None:
    from retrieval.models import ImageDescriptor
    from retrieval.services import indexing

    catalog = CatalogFactory()
    images = {}
    for name in ("rocket", "coffee"):
        images[name] = services.image_ingest(
            catalog=catalog, data=encode(real_photos[name]), filename=f"{name}.jpg", enqueue=False
        ).image
        services.image_index(image_id=images[name].pk)
    extract = indexing.image_extract

    def coffee_deleted_meanwhile(*, image: CatalogImage, extractor: object, model: object) -> bool:
        if image.pk == images["coffee"].pk:
            CatalogImage.objects.filter(pk=image.pk).delete()
        return extract(image=image, extractor=extractor, model=model)

    monkeypatch.setattr(indexing, "image_extract", coffee_deleted_meanwhile)
    from retrieval.models import ReindexJob

    job = ReindexJob.objects.create(catalog=catalog)
    services.reindex_run(job_id=job.pk, task_id="t1")
    job.refresh_from_db()
    assert job.status == "done" and job.processed == 2
    assert not ImageDescriptor.objects.filter(image_id=images["coffee"].pk).exists()
