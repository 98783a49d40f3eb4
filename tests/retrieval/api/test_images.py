"""Uploading photos through the catalog API, listing and deleting them, following an
import's indexing progress."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from retrieval import services
from retrieval.models import Catalog, CatalogImage, ImportJob
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory
from tests.retrieval.api.conftest import photo_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def paris() -> Catalog:
    return CatalogFactory(name="paris")


def _upload(client: Client, *files: SimpleUploadedFile, catalog: str = "paris", **fields: str):  # type: ignore[no-untyped-def]
    return client.post(f"/api/catalogs/{catalog}/images", {"files": list(files), **fields})


def test_two_photos_with_a_landmark_are_stored_pending_in_one_import_job(staff_client: Client, paris: Catalog) -> None:
    response = _upload(staff_client, photo_upload("coffee.png"), photo_upload("chelsea.png"), landmark="Café")
    assert response.status_code == 201
    body = response.json()
    job = ImportJob.objects.get()
    assert response["Location"] == body["import_job"]["url"] == f"http://testserver/api/jobs/imports/{job.pk}"
    assert [image["original_name"] for image in body["created"]] == ["coffee.jpg", "chelsea.jpg"]
    assert body["duplicates"] == [] and body["refused"] == []
    assert body["import_job"]["submitted"] == 2 and body["import_job"]["created_by"] == "curator"
    assert body["import_job"]["progress"]["total"] == 2 and body["import_job"]["progress"]["running"] is True

    listed = staff_client.get("/api/catalogs/paris/images").json()
    assert listed["count"] == 2
    assert {(i["landmark"], i["status"], i["import_job"]) for i in listed["results"]} == {("Café", "pending", job.pk)}
    assert {(i["width"], i["height"]) for i in listed["results"]} == {(600, 400), (451, 300)}


def test_a_file_already_in_the_catalog_is_reported_as_a_duplicate(staff_client: Client, paris: Catalog) -> None:
    first = _upload(staff_client, photo_upload("coffee.png")).json()["created"][0]
    response = _upload(staff_client, photo_upload("coffee.png"))
    assert response.status_code == 200  # nothing new, nothing wrong
    assert response.json()["duplicates"] == [{"name": "coffee.jpg", "image_id": first["id"]}]
    assert response.json()["import_job"]["duplicates"] == 1
    assert CatalogImage.objects.count() == 1


def test_a_file_that_is_not_an_image_is_refused_with_the_reason_and_nothing_is_stored(
    staff_client: Client, paris: Catalog
) -> None:
    files_before = _stored_files()
    response = _upload(staff_client, SimpleUploadedFile("notes.jpg", b"just some text\n" * 10))
    assert response.status_code == 415
    body = response.json()
    assert body["error"].startswith("No file was stored. notes.jpg: The file is not an image")
    assert body["refused"] == [{"name": "notes.jpg", "error": body["refused"][0]["error"]}]
    assert ImportJob.objects.get().refused == body["refused"]
    assert not CatalogImage.objects.exists()
    assert _stored_files() == files_before


def test_good_files_are_kept_when_another_is_refused(staff_client: Client, paris: Catalog) -> None:
    tiny = SimpleUploadedFile("tiny.png", encode(load_photo("coffee.png")[:8, :8], "PNG"))
    response = _upload(staff_client, tiny, photo_upload("coffee.png"))
    assert response.status_code == 201
    assert [i["original_name"] for i in response.json()["created"]] == ["coffee.jpg"]
    assert response.json()["refused"][0]["name"] == "tiny.png"


def test_an_upload_without_files_gets_400(staff_client: Client, paris: Catalog) -> None:
    response = staff_client.post("/api/catalogs/paris/images", {"landmark": "x"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("files:")


def test_the_upload_takes_a_body_larger_than_one_search(staff_client: Client, paris: Catalog, settings) -> None:
    """Several photos in one request get the bulk limit (as the admin's upload), not the
    limit of one search's body."""
    settings.LANDMARKS_MAX_UPLOAD_BYTES = 80_000  # per file; one search's body: 81,000 bytes
    settings.LANDMARKS_FORM_OVERHEAD_BYTES = 1_000
    names = ["coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png"]  # 182 kB of JPEG together
    response = _upload(staff_client, *[photo_upload(name) for name in names])
    assert response.status_code == 201
    assert len(response.json()["created"]) == 4
    search = staff_client.post("/api/search", {"image": [photo_upload(name) for name in names]})
    assert search.status_code == 413
    assert "the limit is 81,000" in search.json()["error"]


def test_deleting_an_image_removes_its_row_file_and_thumbnail(
    staff_client: Client, paris: Catalog, django_capture_on_commit_callbacks
) -> None:
    image_id = _upload(staff_client, photo_upload("coffee.png")).json()["created"][0]["id"]
    image = CatalogImage.objects.get(pk=image_id)
    image.thumbnail.save("thumb.jpg", SimpleUploadedFile("t.jpg", b"thumb"), save=True)
    names = [image.file.name, image.thumbnail.name]
    assert all(default_storage.exists(name) for name in names)

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.delete(f"/api/images/{image_id}")
    assert response.status_code == 204
    assert not CatalogImage.objects.filter(pk=image_id).exists()
    assert not any(default_storage.exists(name) for name in names)
    assert Catalog.objects.get(pk=paris.pk).augment_pending  # the augmented descriptors are refreshed without it
    assert staff_client.get(f"/api/images/{image_id}").status_code == 404
    assert staff_client.get(f"/images/{image_id}/file").status_code == 404


def test_deleting_needs_staff(user_client: Client, paris: Catalog) -> None:
    image = CatalogImageFactory(catalog=paris)
    assert user_client.delete(f"/api/images/{image.pk}").status_code == 403
    assert CatalogImage.objects.filter(pk=image.pk).exists()


def test_deleting_an_unknown_image_gets_404(staff_client: Client) -> None:
    response = staff_client.delete("/api/images/999999")
    assert response.status_code == 404
    assert response.json() == {"error": "No image with id 999999."}


def test_the_import_job_follows_indexing_with_failures_and_their_reasons(staff_client: Client, paris: Catalog) -> None:
    truncated = SimpleUploadedFile("broken.jpg", encode(load_photo("chelsea.png"))[:4000])
    body = _upload(staff_client, photo_upload("coffee.png"), truncated).json()
    job_url = body["import_job"]["url"].replace("http://testserver", "")
    for image in body["created"]:
        services.image_index(image_id=image["id"])  # what the index worker runs

    job = staff_client.get(job_url).json()
    assert job["progress"] | {"rate": None} == {
        "total": 2, "done": 1, "failed": 1, "remaining": 0, "percent": 100.0, "rate": None, "eta_seconds": None,
        "running": False,
    }  # fmt: skip
    assert [(f["name"], "truncated or corrupt" in f["error"]) for f in job["failures"]] == [("broken.jpg", True)]
    statuses = staff_client.get("/api/catalogs/paris/images?status=indexed").json()["results"]
    assert [(i["original_name"], i["indexed_at"] is not None) for i in statuses] == [("coffee.jpg", True)]


def _stored_files() -> set[str]:
    found = set()
    for root in ("catalog", "thumbs"):
        if default_storage.exists(root):
            found |= _walk(root)
    return found


def _walk(folder: str) -> set[str]:
    folders, files = default_storage.listdir(folder)
    found = {f"{folder}/{name}" for name in files}
    for sub in folders:
        found |= _walk(f"{folder}/{sub}")
    return found
