"""Uploaded photos are stored and served by their decoded format, never as a page, and go
with their rows, however those are deleted."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from retrieval import services
from retrieval.models import CatalogImage, SearchQuery
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog():
    catalog = CatalogFactory(name="paris")
    CatalogImageFactory(catalog=catalog)
    return catalog


def _search(client: Client, data: bytes, name: str) -> dict:
    upload = SimpleUploadedFile(name, data, content_type="text/html")
    response = client.post("/api/search", {"image": upload, "wait": "0"})
    assert response.status_code == 202, response.content
    return response.json()


def _headers_and_body(response) -> str:
    return (
        " ".join(f"{k}: {v}" for k, v in response.headers.items())
        + " "
        + b"".join(response.streaming_content).decode("latin-1")
    )


def test_a_png_uploaded_as_evil_html_is_stored_and_served_as_png(client: Client, catalog) -> None:
    png = encode(load_photo("coffee.png"), "PNG")
    body = _search(client, png, "evil.html")
    query = SearchQuery.objects.get(public_id=body["id"])
    assert query.image.name.endswith(f"/{query.sha256}.png")

    response = client.get(f"/searches/{body['id']}/image")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == f'inline; filename="{query.sha256}.png"'
    assert "html" not in _headers_and_body(response).lower()


def test_a_jpeg_named_png_is_stored_as_jpg(client: Client, catalog) -> None:
    body = _search(client, encode(load_photo("coffee.png"), "JPEG"), "x.png")
    query = SearchQuery.objects.get(public_id=body["id"])
    assert query.image.name.endswith(".jpg")
    assert client.get(f"/searches/{body['id']}/image")["Content-Type"] == "image/jpeg"


def test_a_catalog_photo_is_stored_by_its_format_and_keeps_the_client_name_as_text(client: Client, catalog) -> None:
    png = encode(load_photo("chelsea.png"), "PNG")
    image = services.image_ingest(catalog=catalog, data=png, filename="evil.html", enqueue=False).image
    assert image.file.name.endswith(f"/{image.sha256}.png")
    assert image.original_name == "evil.html"

    response = client.get(f"/images/{image.pk}/file")
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == f'inline; filename="{image.sha256}.png"'


def test_a_file_stored_under_an_unknown_extension_is_only_offered_as_a_download(client: Client, catalog) -> None:
    # Files stored before names came from the format may still carry a client's suffix.
    storage = SearchQuery._meta.get_field("image").storage
    name = storage.save("queries/legacy/old.html", ContentFile(b"<script>alert(1)</script>"))
    query = SearchQuery.objects.create(catalog=catalog, sha256="0" * 64, image=name, created_at=timezone.now())

    response = client.get(f"/searches/{query.public_id}/image")
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"


def test_an_upload_in_an_unsupported_format_gets_415(client: Client, catalog) -> None:
    upload = SimpleUploadedFile("q.ppm", encode(load_photo("coffee.png"), "PPM"))
    response = client.post("/api/search", {"image": upload, "wait": "0"})
    assert response.status_code == 415
    assert SearchQuery.objects.count() == 0


def test_deleting_a_catalog_deletes_its_photos_thumbnails_and_query_photos(
    real_photos, django_capture_on_commit_callbacks
) -> None:
    from django.core.files.storage import default_storage

    from retrieval.services import thumbnails

    catalog = CatalogFactory()
    image = services.image_ingest(
        catalog=catalog, data=encode(real_photos["rocket"]), filename="r.jpg", enqueue=False
    ).image
    thumbnail = default_storage.save(thumbnails.thumbnail_name(image=image), ContentFile(b"thumbnail"))
    CatalogImage.objects.filter(pk=image.pk).update(status=CatalogImage.Status.INDEXED)
    query = services.search_create(catalog=catalog, data=encode(real_photos["coffee"]), filename="q.jpg", enqueue=False)
    names = [image.file.name, thumbnail, query.image.name]
    assert all(default_storage.exists(name) for name in names)
    with django_capture_on_commit_callbacks(execute=True):
        catalog.delete()  # the admin's delete: the rows go by cascade
    assert not any(default_storage.exists(name) for name in names)
