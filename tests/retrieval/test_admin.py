"""The admin's multi-file upload page puts photos into a catalog with a landmark, for
those allowed to."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from retrieval.models import Catalog, CatalogImage
from tests.conftest import encode, load_photo

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(admin_client: Client) -> Client:
    return admin_client


def _files(*names: str) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(f"{n}.jpg", encode(load_photo(n + ('.jpg' if n == 'rocket' else '.png'))), "image/jpeg") for n in names]


def test_upload_of_several_files_creates_pending_images_with_the_landmark(admin_client_logged_in: Client) -> None:
    response = admin_client_logged_in.post(
        "/admin/retrieval/catalogimage/upload/",
        {"new_catalog": "museum", "landmark": "Eiffel Tower", "files": _files("rocket", "coffee", "chelsea")},
    )
    assert response.status_code == 302
    catalog = Catalog.objects.get(name="museum")
    images = catalog.images.select_related("landmark")
    assert images.count() == 3
    assert {i.landmark.name for i in images} == {"Eiffel Tower"}
    assert {i.status for i in images} == {CatalogImage.Status.PENDING}
    assert all(i.width and i.height for i in images)


def test_upload_reports_duplicates_and_bad_files_and_keeps_the_good_ones(admin_client_logged_in: Client) -> None:
    admin_client_logged_in.post("/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": _files("rocket")})
    bad = SimpleUploadedFile("notes.jpg", b"just text", "image/jpeg")
    response = admin_client_logged_in.post(
        "/admin/retrieval/catalogimage/upload/",
        {"new_catalog": "museum", "files": [*_files("rocket", "coffee"), bad]},
        follow=True,
    )
    text = response.content.decode()
    assert "Skipped rocket.jpg: already in catalog museum" in text
    assert "Skipped notes.jpg: The file is not an image" in text
    assert Catalog.objects.get(name="museum").images.count() == 2


def test_upload_page_needs_a_catalog(admin_client_logged_in: Client) -> None:
    response = admin_client_logged_in.post("/admin/retrieval/catalogimage/upload/", {"files": _files("rocket")})
    assert response.status_code == 200
    assert "Choose a catalog or name a new one." in response.content.decode()
    assert not CatalogImage.objects.exists()


def test_the_admin_lists_images_with_status(admin_client_logged_in: Client) -> None:
    admin_client_logged_in.post("/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": _files("rocket")})
    response = admin_client_logged_in.get("/admin/retrieval/catalogimage/")
    assert response.status_code == 200
    assert "Upload photos" in response.content.decode() and "pending" in response.content.decode()


def _staff(django_user_model, *permissions: str) -> Client:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("editor", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_permissions_gets_403_and_stores_nothing(django_user_model) -> None:
    client = _staff(django_user_model)
    assert client.get("/admin/retrieval/catalogimage/upload/").status_code == 403
    response = client.post("/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": _files("rocket")})
    assert response.status_code == 403
    assert not Catalog.objects.exists() and not CatalogImage.objects.exists()


def test_staff_who_may_add_images_uploads_into_an_existing_catalog(django_user_model) -> None:
    catalog = Catalog.objects.create(name="museum")
    client = _staff(django_user_model, "add_catalogimage", "view_catalogimage")
    response = client.post("/admin/retrieval/catalogimage/upload/", {"catalog": catalog.pk, "files": _files("rocket")})
    assert response.status_code == 302
    assert catalog.images.count() == 1


def test_staff_who_may_add_images_but_not_catalogs_cannot_create_one(django_user_model) -> None:
    client = _staff(django_user_model, "add_catalogimage", "view_catalogimage")
    response = client.post("/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": _files("rocket")})
    assert response.status_code == 200
    assert "You may not create catalogs" in response.content.decode()
    assert not Catalog.objects.exists() and not CatalogImage.objects.exists()


def test_the_upload_link_is_hidden_from_staff_who_may_not_add_images(django_user_model) -> None:
    client = _staff(django_user_model, "view_catalogimage")
    response = client.get("/admin/retrieval/catalogimage/")
    assert response.status_code == 200
    assert "Upload photos" not in response.content.decode()


def test_a_superuser_still_creates_a_catalog_and_uploads(admin_client_logged_in: Client) -> None:
    response = admin_client_logged_in.get("/admin/retrieval/catalogimage/upload/")
    assert response.status_code == 200
    response = admin_client_logged_in.post(
        "/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": _files("rocket")}
    )
    assert response.status_code == 302
    assert Catalog.objects.get(name="museum").images.count() == 1


def test_an_upload_is_one_import_job_that_the_jobs_page_follows(admin_client_logged_in: Client) -> None:
    from retrieval.models import ImportJob

    admin_client_logged_in.post("/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": _files("rocket")})
    bad = SimpleUploadedFile("notes.jpg", b"just text", "image/jpeg")
    response = admin_client_logged_in.post(
        "/admin/retrieval/catalogimage/upload/", {"new_catalog": "museum", "files": [*_files("rocket", "coffee"), bad]}
    )
    job = ImportJob.objects.order_by("-pk").first()
    assert response.status_code == 302 and response["Location"] == f"/jobs/#import-{job.pk}"
    assert (job.source, job.submitted, job.duplicates, job.created_by) == ("admin upload", 3, 1, "admin")
    assert [r["name"] for r in job.refused] == ["notes.jpg"] and job.finished_at is not None
    assert [i.original_name for i in job.images.all()] == ["coffee.jpg"]
    page = admin_client_logged_in.get("/jobs/").content.decode()
    assert f'id="import-{job.pk}"' in page and "notes.jpg: The file is not an image" in page
