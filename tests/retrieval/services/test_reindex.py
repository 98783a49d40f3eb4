"""Reindex jobs resume after their worker died and fail an image that keeps killing it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from retrieval import services
from retrieval.models import CatalogImage
from tests.conftest import encode
from tests.factories import CatalogFactory

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
