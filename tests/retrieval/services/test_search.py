"""Search claims: a task resumes its own claim, leaves a live one alone, takes over a
stale one and gives up after a few attempts; a finished search is never run again."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from retrieval import services
from retrieval.models import Catalog, SearchQuery
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


def test_a_finished_search_reports_every_stage_within_its_total(catalog: Catalog, real_photos) -> None:
    query = _search(catalog, real_photos)
    services.search_execute(query_id=query.pk, task_id="task-1")
    timings = SearchQuery.objects.get(pk=query.pk).timings_ms
    stages = ("decode", "extract", "shortlist", "verify")
    assert {"queue", *stages, "total", "verify_depth"} <= set(timings)
    assert timings["total"] >= timings["queue"] + sum(timings[s] for s in stages) and timings["extract"] > 0


def test_a_retry_after_a_database_error_does_not_count_as_an_attempt(catalog: Catalog, real_photos, settings) -> None:
    max_attempts = settings.LANDMARKS_TASK_MAX_ATTEMPTS
    query = _search(
        catalog, real_photos, status="running", claimed_by="task-1", claimed_at=timezone.now(), attempts=max_attempts
    )
    services.search_execute(query_id=query.pk, task_id="task-1", retry=True)
    assert _status(query) == "done"


def test_verification_on_several_threads_gives_what_one_thread_gives(real_photos, settings) -> None:
    catalog = CatalogFactory()
    for name, photo in real_photos.items():
        image = services.image_ingest(catalog=catalog, data=encode(photo), filename=f"{name}.jpg", enqueue=False).image
        services.image_index(image_id=image.pk, task_id=f"index-{name}")
    # Four candidates a chunk, never decided: every candidate verified, blobs read ahead.
    settings.LANDMARKS_VERIFY_EARLY_STOP = 4
    settings.LANDMARKS_MIN_INLIERS = 100_000
    answers = []
    for threads in (1, 3):
        settings.LANDMARKS_VERIFY_THREADS = threads
        query = services.search_create(
            catalog=catalog, data=encode(real_photos["rocket"], quality=80), filename="q.jpg", enqueue=False
        )
        services.search_execute(query_id=query.pk, task_id=f"search-{threads}")
        done = SearchQuery.objects.get(pk=query.pk)
        assert done.status == "done", done.error
        answers.append([(r["image_id"], r["inliers"], r["checked"]) for r in done.results])
    assert answers[0] == answers[1]
    assert len(answers[0]) >= 5 and all(checked for _, _, checked in answers[0])
    assert answers[0][0][1] >= 40  # the rocket itself
