"""Near duplicates are flagged by the index worker (global cosine + one similarity transform), not refused."""

from __future__ import annotations

import time

import cv2
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from retrieval import extraction, services
from retrieval.models import Catalog, CatalogImage
from tests.conftest import TEST_EXTRACTOR, encode, load_photo
from tests.factories import CatalogFactory

pytestmark = [pytest.mark.e2e]


def _wait(catalog: Catalog, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while catalog.images.filter(status__in=["pending", "processing"]).exists():
        assert time.monotonic() < deadline, "the worker did not index the catalog in time"
        time.sleep(0.2)


def _ingest(catalog: Catalog, data: bytes, name: str) -> CatalogImage:
    landmark = services.landmark_get_or_create(catalog=catalog, name="site")
    image = services.image_ingest(catalog=catalog, data=data, filename=name, landmark=landmark).image
    _wait(catalog)  # one at a time, so that each sees the ones before it indexed
    image.refresh_from_db()
    assert image.status == CatalogImage.Status.INDEXED, image.failure_reason
    return image


@pytest.fixture
def images(celery_worker: object) -> dict[str, CatalogImage]:
    """An original, a copy re-encoded at quality 80 and 80 % of its size, and an unrelated photo."""
    catalog = CatalogFactory(name="dups")
    rocket = load_photo("rocket.jpg")
    smaller = cv2.resize(rocket, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    return {
        "original": _ingest(catalog, encode(rocket, quality=92), "rocket.jpg"),
        "copy": _ingest(catalog, encode(smaller, quality=80), "rocket-small.jpg"),
        "other": _ingest(catalog, encode(load_photo("coffee.png"), quality=92), "coffee.jpg"),
    }


def test_a_reencoded_smaller_copy_is_flagged_as_a_near_duplicate_of_the_original(images, settings) -> None:
    copy = images["copy"]
    assert copy.near_duplicate_of_id == images["original"].pk
    assert copy.near_duplicate_similarity >= settings.LANDMARKS_NEAR_DUPLICATE_SIMILARITY
    assert copy.near_duplicate_inliers >= extraction.min_inliers(TEST_EXTRACTOR)
    assert images["original"].near_duplicate_of_id is None  # the earlier photo is not flagged


def test_a_different_photo_is_not_flagged(images) -> None:
    assert images["other"].near_duplicate_of_id is None
    assert images["other"].near_duplicate_similarity is None


def test_a_copy_under_the_threshold_is_not_flagged(images, settings) -> None:
    settings.LANDMARKS_NEAR_DUPLICATE_SIMILARITY = 1.01  # above any cosine: the check is off
    services.images_requeue(image_ids=[images["copy"].pk])
    _wait(images["copy"].catalog)
    images["copy"].refresh_from_db()
    assert images["copy"].near_duplicate_of_id is None


def test_the_admin_filters_and_shows_near_duplicates(images, admin_client: Client) -> None:
    flagged = admin_client.get("/admin/retrieval/catalogimage/", {"near_duplicate": "yes"}).content.decode()
    assert "rocket-small.jpg" in flagged and "coffee.jpg" not in flagged
    assert f"image {images['original'].pk}</a>" in flagged
    others = admin_client.get("/admin/retrieval/catalogimage/", {"near_duplicate": "no"}).content.decode()
    assert "coffee.jpg" in others and "rocket.jpg" in others and "rocket-small.jpg" not in others


def test_search_results_name_the_photo_a_result_duplicates(images, client: Client) -> None:
    upload = SimpleUploadedFile("q.jpg", encode(load_photo("rocket.jpg"), quality=80))
    body = client.post("/api/search", {"image": upload, "catalog": "dups", "wait": "60"}).json()
    by_id = {r["image_id"]: r["near_duplicate_of"] for r in body["results"]}
    assert by_id[images["copy"].pk] == images["original"].pk and by_id[images["original"].pk] is None
