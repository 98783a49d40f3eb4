"""The search service: claims (a task resumes its own claim, leaves a live one alone,
takes over a stale one and gives up after a few attempts; a finished search is never run
again), which catalogs can be searched, and searches that meet a damaged row, a photo
deleted meanwhile or a box reaching past the photo."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from retrieval import selectors, services
from retrieval.errors import InvalidInput
from retrieval.models import Catalog, CatalogImage, ImageDescriptor, SearchQuery
from retrieval.services import search as search_service
from tests.conftest import encode
from tests.factories import CatalogFactory, CatalogImageFactory, ImageDescriptorFactory

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


def _indexed(real_photos: dict[str, np.ndarray], names: list[str]) -> tuple[Catalog, dict[str, CatalogImage]]:
    catalog = CatalogFactory()
    images = {}
    for name in names:
        image = services.image_ingest(
            catalog=catalog, data=encode(real_photos[name]), filename=f"{name}.jpg", enqueue=False
        ).image
        services.image_index(image_id=image.pk, task_id=f"index-{name}")
        images[name] = image
    return catalog, images


def _run(catalog: Catalog, photo: np.ndarray, bbox: list[float] | None = None) -> SearchQuery:
    query = services.search_create(
        catalog=catalog, data=encode(photo, quality=95), filename="q.jpg", bbox=bbox, enqueue=False
    )
    services.search_execute(query_id=query.pk, task_id=f"search-{query.pk}")
    return SearchQuery.objects.get(pk=query.pk)


def test_a_catalog_whose_photos_are_all_still_queued_is_refused_with_the_reason(real_photos) -> None:
    catalog = CatalogFactory()
    CatalogImageFactory(catalog=catalog, status=CatalogImage.Status.PENDING)
    with pytest.raises(InvalidInput, match="1 are being indexed"):
        services.search_create(catalog=catalog, data=encode(real_photos["coffee"]), filename="q.jpg", enqueue=False)


def test_a_catalog_whose_photos_are_being_indexed_again_stays_searchable(real_photos) -> None:
    image = CatalogImageFactory(status=CatalogImage.Status.PROCESSING)
    ImageDescriptorFactory(image=image)
    query = services.search_create(
        catalog=image.catalog, data=encode(real_photos["coffee"]), filename="q.jpg", enqueue=False
    )
    assert query.status == SearchQuery.Status.PENDING


def test_a_task_that_lost_its_claim_does_not_overwrite_the_answer_of_the_task_that_took_over(
    catalog: Catalog, real_photos, monkeypatch
) -> None:
    query = _search(catalog, real_photos)

    def taken_over_while_stalled(query: SearchQuery, timer: object, *, task_id: str) -> None:
        # Another task took the stale claim and stored its answer; this one then fails.
        SearchQuery.objects.filter(pk=query.pk).update(status="done", claimed_by="", results=[{"rank": 1}])
        raise RuntimeError("the stalled task fails late")

    monkeypatch.setattr(search_service, "_search_stages", taken_over_while_stalled)
    services.search_execute(query_id=query.pk, task_id="task-1")
    done = SearchQuery.objects.get(pk=query.pk)
    assert (done.status, done.results, done.error) == ("done", [{"rank": 1}], "")


def test_a_candidate_whose_stored_features_cannot_be_read_is_ranked_without_verification(real_photos, caplog) -> None:
    catalog, images = _indexed(real_photos, ["rocket", "coffee", "chelsea"])
    row = ImageDescriptor.objects.get(image=images["coffee"])
    ImageDescriptor.objects.filter(pk=row.pk).update(local_features=bytes(row.local_features)[:-7])
    done = _run(catalog, real_photos["rocket"])
    assert done.status == "done", done.error
    by_id = {r["image_id"]: r for r in done.results}
    assert not by_id[images["coffee"].pk]["checked"] and by_id[images["rocket"].pk]["verified"]
    assert "cannot be read" in caplog.text


def test_a_photo_deleted_between_the_shortlist_rounds_adds_nothing_to_the_expanded_query(
    real_photos, monkeypatch
) -> None:
    catalog, images = _indexed(real_photos, ["rocket", "coffee"])
    read = selectors.descriptor_vectors

    def without_coffee(*, model: object, image_ids: list[int], augmented: bool) -> dict[int, np.ndarray]:
        found = read(model=model, image_ids=image_ids, augmented=augmented)
        found.pop(images["coffee"].pk, None)
        return found

    monkeypatch.setattr(selectors, "descriptor_vectors", without_coffee)
    done = _run(catalog, real_photos["rocket"])
    assert done.status == "done", done.error
    assert done.results[0]["image_id"] == images["rocket"].pk


def test_a_box_reaching_past_the_photo_draws_the_matches_in_the_photo_s_pixels(real_photos) -> None:
    catalog, _ = _indexed(real_photos, ["rocket", "coffee"])
    photo = real_photos["rocket"]
    height, width = photo.shape[:2]
    whole = _run(catalog, photo, bbox=[0, 0, width, height])
    past = _run(catalog, photo, bbox=[-50, -30, width + 20, height + 10])  # the same crop: the whole photo
    assert whole.results[0]["matches"] and past.results[0]["matches"] == whole.results[0]["matches"]
