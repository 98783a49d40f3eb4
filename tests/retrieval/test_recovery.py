"""The sweep: queues what a fault left behind, and leaves live work alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from retrieval import recovery
from retrieval.models import Catalog, CatalogImage, ReindexJob, SearchQuery
from tests.factories import CatalogFactory, CatalogImageFactory, ImageDescriptorFactory

pytestmark = pytest.mark.django_db


def _ago(seconds: float) -> object:
    return timezone.now() - timedelta(seconds=seconds)


def _pending_image(**fields: object) -> CatalogImage:
    image = CatalogImageFactory(status="pending")
    CatalogImage.objects.filter(pk=image.pk).update(**fields)
    return image


def test_the_sweep_queues_a_photo_that_never_reached_the_broker() -> None:
    image = _pending_image(created_at=_ago(60), queued_at=None)
    report = recovery.work_sweep()
    assert report.images == 1
    assert CatalogImage.objects.get(pk=image.pk).queued_at is not None


def test_the_sweep_waits_for_a_photo_just_stored() -> None:
    _pending_image(queued_at=None)  # its on_commit send may still be on its way
    assert recovery.work_sweep().images == 0


def test_the_sweep_queues_again_a_photo_whose_worker_died(settings) -> None:
    image = _pending_image(status="processing", claimed_by="dead", claimed_at=_ago(settings.LANDMARKS_TASK_LEASE_SECONDS + 5))
    assert recovery.work_sweep().images == 1
    assert CatalogImage.objects.get(pk=image.pk).queued_at is not None


def test_the_sweep_sends_abandoned_work_once_per_lease(settings) -> None:
    _pending_image(status="processing", claimed_by="dead", claimed_at=_ago(settings.LANDMARKS_TASK_LEASE_SECONDS + 5))
    assert recovery.work_sweep().images == 1
    assert recovery.work_sweep().images == 0  # its task may still be waiting in the queue


def test_the_sweep_leaves_live_work_alone() -> None:
    _pending_image(status="processing", claimed_by="alive", claimed_at=timezone.now())
    _pending_image(created_at=_ago(60), queued_at=timezone.now())
    assert not recovery.work_sweep()


def test_the_sweep_gives_up_searches_nobody_waits_for(settings) -> None:
    catalog = CatalogFactory()
    old = SearchQuery.objects.create(
        catalog=catalog, sha256="0" * 64, created_at=_ago(settings.LANDMARKS_SEARCH_GIVE_UP_SECONDS + 1),
        queued_at=timezone.now(),
    )  # fmt: skip
    recent = SearchQuery.objects.create(catalog=catalog, sha256="1" * 64, created_at=timezone.now(), queued_at=timezone.now())
    assert recovery.work_sweep().searches_given_up == 1
    old.refresh_from_db()
    assert old.status == "failed" and "did not finish" in old.error
    assert SearchQuery.objects.get(pk=recent.pk).status == "pending"


def test_the_sweep_takes_over_a_reindex_job_whose_worker_died(settings) -> None:
    job = ReindexJob.objects.create(status="running", claimed_by="dead", claimed_at=_ago(settings.LANDMARKS_TASK_LEASE_SECONDS + 5))
    assert recovery.work_sweep().reindex_jobs == 1
    assert ReindexJob.objects.get(pk=job.pk).queued_at is not None


def test_the_sweep_requests_an_augmentation_lost_to_a_fault() -> None:
    catalog = CatalogFactory()
    ImageDescriptorFactory(image=CatalogImageFactory(catalog=catalog))
    Catalog.objects.filter(pk=catalog.pk).update(augment_pending=False, augmented_at=_ago(60))
    assert recovery.work_sweep().augmentations == 1
    assert Catalog.objects.get(pk=catalog.pk).augment_pending
    assert recovery.work_sweep().augmentations == 0  # requested once


def test_the_sweep_requests_a_first_augmentation_only_for_a_catalog_with_rows() -> None:
    empty, filled = CatalogFactory(), CatalogFactory()
    ImageDescriptorFactory(image=CatalogImageFactory(catalog=filled))
    Catalog.objects.update(augment_pending=False, augmented_at=None)
    assert recovery.work_sweep().augmentations == 1
    assert Catalog.objects.get(pk=filled.pk).augment_pending and not Catalog.objects.get(pk=empty.pk).augment_pending


def test_the_sweep_sends_again_an_augmentation_request_whose_task_was_lost(settings) -> None:
    catalog = CatalogFactory()
    ImageDescriptorFactory(image=CatalogImageFactory(catalog=catalog))
    lost_at = _ago(settings.LANDMARKS_TASK_LEASE_SECONDS + settings.LANDMARKS_AUGMENT_DELAY_SECONDS + 1)
    Catalog.objects.filter(pk=catalog.pk).update(augment_pending=True, augment_requested_at=lost_at)
    assert recovery.work_sweep().augmentations == 1
    resent = Catalog.objects.get(pk=catalog.pk)
    assert resent.augment_pending and resent.augment_requested_at > lost_at
    assert recovery.work_sweep().augmentations == 0  # sent once a lease


def test_the_sweep_queues_again_a_photo_whose_message_was_lost_with_the_broker(settings) -> None:
    from searchsite.celery import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("index")  # the broker lost its data
    image = _pending_image(created_at=_ago(600), queued_at=_ago(settings.LANDMARKS_TASK_LEASE_SECONDS + 5))
    assert recovery.work_sweep().images == 1
    assert CatalogImage.objects.get(pk=image.pk).queued_at > _ago(5)


def test_the_sweep_lets_a_live_search_finish_however_old(settings) -> None:
    live = SearchQuery.objects.create(
        catalog=CatalogFactory(), sha256="0" * 64, created_at=_ago(settings.LANDMARKS_SEARCH_GIVE_UP_SECONDS + 1),
        status="running", claimed_by="alive", claimed_at=timezone.now(),
    )  # fmt: skip
    assert recovery.work_sweep().searches_given_up == 0
    assert SearchQuery.objects.get(pk=live.pk).status == "running"
