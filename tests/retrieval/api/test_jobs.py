"""Reindex jobs started through the API, and the progress of jobs."""

from __future__ import annotations

import pytest
from django.test import Client

from retrieval import services
from retrieval.models import ReindexJob
from tests.factories import CatalogFactory
from tests.retrieval.api.conftest import photo_upload

pytestmark = pytest.mark.django_db


def test_a_reindex_starts_in_the_background_and_its_progress_is_followed(staff_client: Client) -> None:
    CatalogFactory(name="paris")
    staff_client.post("/api/catalogs/paris/images", {"files": [photo_upload("coffee.png"), photo_upload("rocket.jpg")]})

    response = staff_client.post("/api/catalogs/paris/reindex", {}, content_type="application/json")
    assert response.status_code == 202
    job = response.json()
    assert response["Location"] == job["url"]
    assert (job["catalog"], job["status"], job["stale_only"], job["progress"]["running"]) == (
        "paris",
        "pending",
        False,
        True,
    )

    services.reindex_run(job_id=job["id"])  # what the index worker runs
    done = staff_client.get(job["url"].replace("http://testserver", "")).json()
    assert done["status"] == "done" and done["model"]
    progress = done["progress"]
    assert (progress["total"], progress["done"], progress["failed"], progress["percent"]) == (2, 2, 0, 100.0)
    assert progress["running"] is False and progress["rate"] > 0
    assert staff_client.get("/api/catalogs/paris").json()["active_model"] == done["model"]


def test_a_reindex_of_stale_images_only(staff_client: Client) -> None:
    CatalogFactory(name="paris")
    response = staff_client.post("/api/catalogs/paris/reindex", {"stale_only": True}, content_type="application/json")
    assert response.status_code == 202
    assert ReindexJob.objects.get().stale_only is True


def test_starting_a_reindex_needs_staff(user_client: Client) -> None:
    CatalogFactory(name="paris")
    assert user_client.post("/api/catalogs/paris/reindex", {}, content_type="application/json").status_code == 403
    assert not ReindexJob.objects.exists()


def test_the_jobs_list_shows_the_latest_imports_and_reindex_jobs_of_a_catalog(staff_client: Client) -> None:
    CatalogFactory(name="paris")
    CatalogFactory(name="rome")
    staff_client.post("/api/catalogs/paris/images", {"files": [photo_upload("coffee.png")]})
    staff_client.post("/api/catalogs/rome/images", {"files": [photo_upload("coffee.png")]})
    staff_client.post("/api/catalogs/paris/reindex", {}, content_type="application/json")
    body = staff_client.get("/api/jobs?catalog=paris").json()
    assert [(job["catalog"], job["submitted"]) for job in body["imports"]] == [("paris", 1)]
    assert [job["catalog"] for job in body["reindex"]] == ["paris"]
    assert len(staff_client.get("/api/jobs").json()["imports"]) == 2


@pytest.mark.parametrize("path", ["/api/jobs/imports/999999", "/api/jobs/reindex/999999"])
def test_an_unknown_job_gets_404(user_client: Client, path: str) -> None:
    response = user_client.get(path)
    assert response.status_code == 404
    assert response.json()["error"].endswith("job with id 999999.")
