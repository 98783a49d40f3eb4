"""Claims: a task takes its row with one conditional update, resumes its own claim,
leaves a live one alone, takes over a stale one, and gives up after a few attempts."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from retrieval import services
from retrieval.models import Catalog, CatalogImage, SearchQuery
from tests.conftest import encode
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog() -> Catalog:
    catalog = CatalogFactory()
    CatalogImageFactory(catalog=catalog)  # no descriptor: the search runs and finds nothing
    return catalog


def _search(catalog: Catalog, real_photos: dict[str, np.ndarray], **claim: object) -> SearchQuery:
    query = services.search_create(catalog=catalog, data=encode(real_photos["coffee"]), filename="q.jpg", enqueue=False)
    SearchQuery.objects.filter(pk=query.pk).update(**claim)
    return query


def _status(query: SearchQuery) -> str:
    return SearchQuery.objects.get(pk=query.pk).status


def test_a_redelivered_search_resumes_its_own_claim(catalog: Catalog, real_photos) -> None:
    query = _search(catalog, real_photos, status="running", claimed_by="task-1", claimed_at=timezone.now(), attempts=1)
    services.search_execute(query_id=query.pk, task_id="task-1")
    assert _status(query) == "done"


def test_a_search_claimed_by_a_live_task_is_left_alone(catalog: Catalog, real_photos) -> None:
    query = _search(catalog, real_photos, status="running", claimed_by="task-1", claimed_at=timezone.now(), attempts=1)
    services.search_execute(query_id=query.pk, task_id="task-2")
    assert _status(query) == "running"


def test_a_stale_claim_is_taken_over(catalog: Catalog, real_photos, settings) -> None:
    long_ago = timezone.now() - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS + 1)
    query = _search(catalog, real_photos, status="running", claimed_by="dead", claimed_at=long_ago, attempts=1)
    services.search_execute(query_id=query.pk, task_id="task-2")
    done = SearchQuery.objects.get(pk=query.pk)
    assert done.status == "done" and done.claimed_by == "" and done.attempts == 0


def test_a_search_that_used_up_its_attempts_fails_with_a_reason(catalog: Catalog, real_photos, settings) -> None:
    long_ago = timezone.now() - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS + 1)
    query = _search(
        catalog, real_photos, status="running", claimed_by="dead", claimed_at=long_ago,
        attempts=settings.LANDMARKS_TASK_MAX_ATTEMPTS,
    )  # fmt: skip
    services.search_execute(query_id=query.pk, task_id="task-2")
    failed = SearchQuery.objects.get(pk=query.pk)
    assert failed.status == "failed" and "never finished" in failed.error


def test_a_finished_search_is_never_run_again(catalog: Catalog, real_photos) -> None:
    query = _search(catalog, real_photos, status="done", results=[{"rank": 1}])
    services.search_execute(query_id=query.pk, task_id="task-1")
    assert SearchQuery.objects.get(pk=query.pk).results == [{"rank": 1}]


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


def test_reimporting_a_photo_that_never_reached_the_broker_queues_it(real_photos, django_capture_on_commit_callbacks) -> None:
    catalog = CatalogFactory()
    data = encode(real_photos["rocket"])
    first = services.image_ingest(catalog=catalog, data=data, filename="r.jpg", enqueue=False).image
    assert first.queued_at is None
    with django_capture_on_commit_callbacks(execute=True):
        again = services.image_ingest(catalog=catalog, data=data, filename="r.jpg")
    assert not again.created and again.image.pk == first.pk
    assert CatalogImage.objects.get(pk=first.pk).queued_at is not None


def test_a_reindex_taken_over_from_a_dead_worker_skips_what_it_already_did(real_photos, settings) -> None:
    from retrieval.models import ImageDescriptor, ReindexJob

    catalog = CatalogFactory()
    started = timezone.now() - timedelta(seconds=1)
    images = [
        services.image_ingest(catalog=catalog, data=encode(real_photos[name]), filename=f"{name}.jpg", enqueue=False).image
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
    image = services.image_ingest(catalog=catalog, data=encode(real_photos["rocket"]), filename="r.jpg", enqueue=False).image
    CatalogImage.objects.filter(pk=image.pk).update(attempts=settings.LANDMARKS_TASK_MAX_ATTEMPTS)
    job = ReindexJob.objects.create(catalog=catalog)
    services.reindex_run(job_id=job.pk, task_id="t1")
    job.refresh_from_db()
    failed = CatalogImage.objects.get(pk=image.pk)
    assert job.status == "done" and job.failed == 1
    assert failed.status == "failed" and "never finished" in failed.failure_reason
