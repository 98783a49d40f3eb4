"""HEIC/HEIF and AVIF uploads: stored under their own extension, searchable, and shown to
browsers as a JPEG where they cannot display the original (HEIC, TIFF)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from retrieval import services
from retrieval.models import CatalogImage, SearchQuery
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory


@pytest.fixture
def catalog(db: None):
    catalog = CatalogFactory(name="paris")
    CatalogImageFactory(catalog=catalog)
    return catalog


def _search(client: Client, data: bytes, name: str, **extra: str) -> tuple[int, dict]:
    upload = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    response = client.post("/api/search", {"image": upload, **extra})
    return response.status_code, response.json()


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_a_heic_search_upload_is_stored_as_heic_and_its_page_image_is_a_jpeg(client: Client, catalog) -> None:
    status, body = _search(client, encode(load_photo("chelsea.png"), "HEIF"), "IMG_0001.HEIC", wait="0")
    assert status == 202, body
    query = SearchQuery.objects.get(public_id=body["id"])
    assert query.image.name.endswith(f"/{query.sha256}.heic") and (query.width, query.height) == (451, 300)

    response = client.get(f"/searches/{body['id']}/image")
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == f'inline; filename="{query.sha256}.jpg"'
    rendition = Image.open(io.BytesIO(_body(response)))
    assert rendition.format == "JPEG" and rendition.size == (451, 300)


def test_a_rotated_heic_is_stored_with_its_upright_size_and_shown_upright(client: Client, catalog) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera held sideways: turn 90 degrees clockwise to view
    data = encode(load_photo("chelsea.png"), "HEIF", exif=exif.tobytes())
    status, body = _search(client, data, "IMG_0002.HEIC", wait="0")
    assert status == 202, body
    assert (body["query"]["width"], body["query"]["height"]) == (300, 451)
    rendition = Image.open(io.BytesIO(_body(client.get(f"/searches/{body['id']}/image"))))
    assert rendition.size == (300, 451)


def test_an_avif_search_upload_is_stored_and_served_as_avif(client: Client, catalog) -> None:
    status, body = _search(client, encode(load_photo("coffee.png"), "AVIF"), "q.avif", wait="0")
    assert status == 202, body
    query = SearchQuery.objects.get(public_id=body["id"])
    assert query.image.name.endswith(".avif")
    assert client.get(f"/searches/{body['id']}/image")["Content-Type"] == "image/avif"


@pytest.mark.parametrize(("fmt", "suffix"), [("HEIF", ".heic"), ("TIFF", ".tif")])
def test_a_heic_or_tiff_catalog_photo_is_stored_as_it_is_and_served_as_a_jpeg(
    client: Client, catalog, fmt: str, suffix: str
) -> None:
    data = encode(load_photo("rocket.jpg"), fmt)
    image = services.image_ingest(catalog=catalog, data=data, filename=f"x{suffix}", enqueue=False).image
    assert image.file.name.endswith(f"/{image.sha256}{suffix}")
    with image.file.open("rb") as handle:
        assert handle.read() == data  # the original is kept; only the pages get a rendition

    response = client.get(f"/images/{image.pk}/file")
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(_body(response))).size == (640, 427)


def test_a_truncated_heic_search_upload_fails_with_a_reason_not_a_500(client: Client, catalog, settings) -> None:
    data = encode(load_photo("chelsea.png"), "HEIF")
    status, body = _search(client, data[:200], "cut.heic", wait="0")
    assert status == 415 and "HEIC" in body["error"]


def _wait(catalog, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while catalog.images.filter(status__in=["pending", "processing"]).exists():
        assert time.monotonic() < deadline, "the worker did not index the catalog in time"
        time.sleep(0.2)


@pytest.mark.e2e
def test_a_heic_catalog_photo_is_indexed_by_the_worker_and_found_by_an_avif_search(
    celery_worker: object, client: Client
) -> None:
    catalog = CatalogFactory(name="phones")
    photos = {"rocket": load_photo("rocket.jpg"), "coffee": load_photo("coffee.png")}
    for name, photo in photos.items():
        landmark = services.landmark_get_or_create(catalog=catalog, name=name)
        services.image_ingest(catalog=catalog, data=encode(photo, "HEIF"), filename=f"{name}.heic", landmark=landmark)
    _wait(catalog)
    assert set(catalog.images.values_list("status", flat=True)) == {CatalogImage.Status.INDEXED}

    query = np.ascontiguousarray(load_photo("rocket.jpg")[20:-20, 30:-30])
    status, body = _search(client, encode(query, "AVIF", quality=70), "q.avif", catalog="phones", wait="60")
    assert status == 200, body
    assert body["results"][0]["landmark"] == "rocket" and body["results"][0]["verified"]
    assert body["landmark"]["name"] == "rocket"
