"""HTTP edges: every bad upload gets a 4xx with a message and stores nothing."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from retrieval.models import SearchQuery
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog():
    catalog = CatalogFactory(name="paris")
    CatalogImageFactory(catalog=catalog)
    return catalog


def _post(client: Client, data: bytes, name: str = "q.jpg", **fields: object):
    upload = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    return client.post("/api/search", {"image": upload, **fields})


BAD_UPLOADS = {
    "zero-byte": (b"", 400, "empty"),
    "not an image": (b"hello, I am a text file\n" * 20, 415, "not an image"),
    "truncated": (encode(load_photo("coffee.png"))[:3000], 400, "truncated or corrupt"),
    "tiny": (encode(np.zeros((16, 16, 3), np.uint8), "PNG"), 400, "at least 32"),
    "bomb": (encode(Image.new("L", (20000, 20000)), "PNG"), 413, "pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_4xx_with_a_message_and_store_nothing(client: Client, catalog, case: str) -> None:
    data, status, message = BAD_UPLOADS[case]
    response = _post(client, data)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert SearchQuery.objects.count() == 0


def test_a_file_over_the_size_limit_gets_413(client: Client, catalog, settings) -> None:
    settings.LANDMARKS_MAX_UPLOAD_BYTES = 10_000
    response = _post(client, encode(load_photo("coffee.png"), "PNG"))
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_a_missing_image_field_gets_400(client: Client, catalog) -> None:
    response = client.post("/api/search", {"top_k": 5})
    assert response.status_code == 400
    assert response.json()["error"].startswith("image:")


def test_an_unknown_catalog_gets_400(client: Client, catalog) -> None:
    response = _post(client, encode(load_photo("coffee.png")), catalog="nowhere")
    assert response.status_code == 400
    assert "catalog" in response.json()["error"]


def test_an_invalid_bbox_gets_400(client: Client, catalog) -> None:
    response = _post(client, encode(load_photo("coffee.png")), bbox="10,10,5,5")
    assert response.status_code == 400
    assert "bbox" in response.json()["error"]


@pytest.mark.parametrize("bbox", ["nan,nan,nan,nan", "0,0,nan,100", "0,0,inf,100", "-inf,0,10,10"])
def test_a_non_finite_bbox_gets_400(client: Client, catalog, bbox: str) -> None:
    response = _post(client, encode(load_photo("coffee.png")), bbox=bbox)
    assert response.status_code == 400
    assert "finite" in response.json()["error"]
    assert SearchQuery.objects.count() == 0


@pytest.mark.parametrize("top_k", ["nan", "inf", "1e400"])
def test_a_non_finite_top_k_gets_400(client: Client, catalog, top_k: str) -> None:
    response = _post(client, encode(load_photo("coffee.png")), top_k=top_k)
    assert response.status_code == 400
    assert response.json()["error"].startswith("top_k:")


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf"])
def test_a_non_finite_wait_gets_400(client: Client, catalog, wait: str) -> None:
    response = _post(client, encode(load_photo("coffee.png")), wait=wait)
    assert response.status_code == 400
    assert "finite" in response.json()["error"]
    assert SearchQuery.objects.count() == 0


def test_an_unknown_search_id_gets_404(client: Client) -> None:
    response = client.get("/api/search/987654")
    assert response.status_code == 404
    assert "987654" in response.json()["error"]


def test_search_in_an_empty_catalog_gets_400(client: Client) -> None:
    CatalogFactory(name="empty")
    response = _post(client, encode(load_photo("coffee.png")), catalog="empty")
    assert response.status_code == 400
    assert "no images" in response.json()["error"]


def test_search_answers_202_with_a_poll_url_when_no_worker_answers_in_time(client: Client, catalog) -> None:
    response = _post(client, encode(load_photo("coffee.png")), wait="0")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["url"].endswith(f"/api/search/{body['id']}")
    assert client.get(body["url"]).status_code == 202


def test_unknown_catalog_image_gets_404(client: Client) -> None:
    assert client.get("/images/123456/file").status_code == 404


def test_the_search_page_renders_a_form(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert b'enctype="multipart/form-data"' in response.content


def test_the_search_page_shows_the_error_for_a_bad_upload(client: Client, catalog) -> None:
    upload = SimpleUploadedFile("x.jpg", b"", content_type="image/jpeg")
    response = client.post("/", {"image": upload})
    assert response.status_code == 400
    assert b"empty" in response.content
