"""HTTP edges: every bad upload gets a 4xx with a message and stores nothing."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image, ImageFile

from retrieval import services
from retrieval.models import SearchQuery
from retrieval.vision import preprocessing
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


# Refused from the header alone, in the web process. A file whose pixels are truncated
# passes these checks: the worker decodes it and fails the search (see below).
BAD_UPLOADS = {
    "zero-byte": (b"", 400, "empty"),
    "not an image": (b"hello, I am a text file\n" * 20, 415, "not an image"),
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


def test_truncated_pixels_fail_the_search_in_the_worker_and_the_api_answers_422(client: Client, catalog) -> None:
    response = _post(client, encode(load_photo("coffee.png"))[:3000], wait="0")
    assert response.status_code == 202  # the header is fine; the web process decodes nothing
    query = SearchQuery.objects.get(public_id=response.json()["id"])
    services.search_execute(query_id=query.pk)  # what the search worker runs
    response = client.get(response.json()["url"])
    assert response.status_code == 422
    assert "truncated or corrupt" in response.json()["error"]


def test_the_web_process_stores_a_search_without_decoding_its_pixels(client: Client, catalog, monkeypatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the web process decoded the pixels")

    data = encode(load_photo("coffee.png"))
    monkeypatch.setattr(preprocessing, "decode_image", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    response = _post(client, data, wait="0")
    assert response.status_code == 202
    assert response.json()["query"] == {"width": 600, "height": 400, "bbox": None}


def test_a_query_over_the_query_pixel_cap_gets_413(client: Client, catalog, settings) -> None:
    settings.LANDMARKS_MAX_QUERY_PIXELS = 100_000
    response = _post(client, encode(load_photo("coffee.png"), "PNG"))  # 600 x 400
    assert response.status_code == 413
    assert "the limit is 100,000" in response.json()["error"]
    assert SearchQuery.objects.count() == 0


def test_a_query_keeps_its_upright_size_from_the_exif_orientation(client: Client, catalog) -> None:
    image = Image.fromarray(load_photo("coffee.png"))
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways
    response = _post(client, encode(image, "JPEG", exif=exif), wait="0")
    assert response.json()["query"]["width"] == 400 and response.json()["query"]["height"] == 600


def test_a_bbox_outside_the_image_gets_400_from_the_header_size(client: Client, catalog) -> None:
    response = _post(client, encode(load_photo("coffee.png")), bbox="700,500,900,900")
    assert response.status_code == 400
    assert "does not overlap the 600x400 image" in response.json()["error"]


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
    response = client.get("/api/search/0b7e3b0c-3c55-4a8e-9d7e-7f1d8f0b3a11")
    assert response.status_code == 404
    assert "0b7e3b0c-3c55-4a8e-9d7e-7f1d8f0b3a11" in response.json()["error"]


def test_a_search_is_reached_by_its_uuid(client: Client, catalog) -> None:
    body = _post(client, encode(load_photo("coffee.png")), wait="0").json()
    query = SearchQuery.objects.get()
    assert body["id"] == str(query.public_id)
    assert client.get(f"/api/search/{query.public_id}").status_code == 202
    assert client.get(f"/searches/{query.public_id}/").status_code == 200
    assert client.get(f"/searches/{query.public_id}/image").status_code == 200


@pytest.mark.parametrize("path", ["/api/search/{pk}", "/searches/{pk}/", "/searches/{pk}/image"])
def test_the_sequential_id_of_a_search_gets_404(client: Client, catalog, path: str) -> None:
    _post(client, encode(load_photo("coffee.png")), wait="0")
    query = SearchQuery.objects.get()
    assert client.get(path.format(pk=query.pk)).status_code == 404


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
    assert response["Location"] == body["url"]
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
