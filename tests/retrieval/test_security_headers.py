"""Every response carries the Content-Security-Policy and nosniff headers."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db

POLICY = {
    "default-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'self'",
    "frame-ancestors 'none'",
    "form-action 'self'",
}


@pytest.fixture
def search_urls(client: Client) -> dict[str, str]:
    """The API and page URLs of one stored (pending) search."""
    catalog = CatalogFactory(name="paris")
    CatalogImageFactory(catalog=catalog)
    upload = SimpleUploadedFile("q.jpg", encode(load_photo("coffee.png")))
    body = client.post("/api/search", {"image": upload, "wait": "0"}).json()
    return {"api": body["url"], "page": f"/searches/{body['id']}/"}


@pytest.mark.parametrize("page", ["home", "results", "api", "admin login", "admin index", "admin images"])
def test_every_page_has_the_content_security_policy(admin_client: Client, search_urls: dict[str, str], page: str) -> None:
    path = {
        "home": "/",
        "results": search_urls["page"],
        "api": search_urls["api"],
        "admin login": "/admin/login/",
        "admin index": "/admin/",
        "admin images": "/admin/retrieval/catalogimage/",
    }[page]
    client = Client() if page == "admin login" else admin_client
    response = client.get(path)
    assert response.status_code in (200, 202)
    assert {part.strip() for part in response["Content-Security-Policy"].split(";")} == POLICY
    assert response["X-Content-Type-Options"] == "nosniff"


def test_the_results_page_has_no_inline_script_or_style(client: Client, search_urls: dict[str, str]) -> None:
    html = client.get(search_urls["page"]).content.decode()
    assert "<script>" not in html and "style=" not in html
    assert "retrieval/results.js" in html
