"""Query photos and their results go after LANDMARKS_QUERY_RETENTION_DAYS."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile

from retrieval import services, tasks
from retrieval.models import Catalog, SearchQuery
from tests.factories import CatalogFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def catalog() -> Catalog:
    return CatalogFactory(name="paris")


def _search(catalog: Catalog, *, days_old: float) -> SearchQuery:
    query = SearchQuery(catalog=catalog, sha256=f"{days_old:064.0f}", created_at=NOW - timedelta(days=days_old))
    query.image.save(f"{query.sha256}.jpg", ContentFile(b"jpeg bytes"), save=False)
    query.save()
    return query


def _exists(query: SearchQuery) -> bool:
    return query.image.storage.exists(query.image.name)


def test_it_deletes_old_searches_and_their_photos_and_keeps_recent_ones(catalog: Catalog, settings) -> None:
    settings.LANDMARKS_QUERY_RETENTION_DAYS = 30
    old, older = _search(catalog, days_old=31), _search(catalog, days_old=400)
    recent = _search(catalog, days_old=29)

    assert services.search_purge_expired(now=NOW) == 2

    assert list(SearchQuery.objects.all()) == [recent]
    assert not _exists(old) and not _exists(older)
    assert _exists(recent)


def test_a_missing_photo_does_not_stop_the_purge(catalog: Catalog, settings) -> None:
    settings.LANDMARKS_QUERY_RETENTION_DAYS = 30
    query = _search(catalog, days_old=31)
    query.image.storage.delete(query.image.name)

    assert services.search_purge_expired(now=NOW) == 1
    assert not SearchQuery.objects.exists()


def test_it_purges_in_batches(catalog: Catalog, settings) -> None:
    settings.LANDMARKS_QUERY_RETENTION_DAYS = 1
    queries = [_search(catalog, days_old=2 + n) for n in range(5)]

    assert services.search_purge_expired(now=NOW, batch_size=2) == 5
    assert not SearchQuery.objects.exists()
    assert not any(_exists(q) for q in queries)


def test_a_retention_of_zero_keeps_everything(catalog: Catalog, settings) -> None:
    settings.LANDMARKS_QUERY_RETENTION_DAYS = 0
    query = _search(catalog, days_old=3650)

    assert services.search_purge_expired(now=NOW) == 0
    assert SearchQuery.objects.get() == query and _exists(query)


def test_the_task_runs_the_purge(catalog: Catalog, settings) -> None:
    settings.LANDMARKS_QUERY_RETENTION_DAYS = 30
    _search(catalog, days_old=10_000)

    assert tasks.search_purge_expired_task.apply().get() == 1
    assert not SearchQuery.objects.exists()


def test_beat_sends_the_task_hourly_to_the_housekeeping_queue() -> None:
    from searchsite.celery import app

    entry = django_settings.CELERY_BEAT_SCHEDULE["search-purge-expired"]
    assert entry == {"task": tasks.search_purge_expired_task.name, "schedule": 3600.0}
    # Not the search queue, where it would make a person's search wait.
    assert app.amqp.router.route({}, entry["task"])["queue"].name == "housekeeping"
