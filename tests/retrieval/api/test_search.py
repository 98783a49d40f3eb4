"""Who may search which catalog: anyone a public one; a private one only with a token or
a session. The web form and the API answer alike."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from retrieval.models import SearchQuery
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_waiting(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LANDMARKS_SEARCH_WAIT_SECONDS = 0  # the form's wait for the (absent) worker


@pytest.fixture
def vault() -> None:
    CatalogImageFactory(catalog=CatalogFactory(name="vault", public=False))


def _search(client: Client, path: str = "/api/search", **fields: str):  # type: ignore[no-untyped-def]
    upload = SimpleUploadedFile("q.jpg", encode(load_photo("coffee.png")))
    return client.post(path, {"image": upload, "wait": "0", **fields})


def test_a_private_catalog_is_not_searchable_anonymously(client: Client, vault: None) -> None:
    response = _search(client, catalog="vault")
    assert response.status_code == 400
    assert "private catalogs need a sign-in or an API token" in response.json()["error"]
    assert not SearchQuery.objects.exists()


def test_a_private_catalog_answers_like_an_unknown_one(client: Client, vault: None) -> None:
    private = _search(client, catalog="vault").json()["error"]
    assert _search(client, catalog="nowhere").json()["error"] == private


def test_a_private_catalog_is_searchable_with_a_token(user_client: Client, vault: None) -> None:
    response = _search(user_client, catalog="vault")
    assert response.status_code == 202
    assert SearchQuery.objects.get().catalog.name == "vault"


def test_the_only_catalog_anonymous_clients_may_search_is_their_default(client: Client, vault: None) -> None:
    CatalogImageFactory(catalog=CatalogFactory(name="paris"))
    response = _search(client)
    assert response.status_code == 202
    assert response.json()["catalog"] == "paris"


def test_the_search_form_offers_and_accepts_only_public_catalogs_anonymously(client: Client, vault: None) -> None:
    CatalogImageFactory(catalog=CatalogFactory(name="paris"))
    page = client.get("/").content.decode()
    assert 'value="paris"' in page and 'value="vault"' not in page
    response = _search(client, path="/", catalog="vault")
    assert response.status_code == 400
    assert "private catalogs need a sign-in" in response.content.decode()


def test_the_search_form_searches_a_private_catalog_when_signed_in(admin_client: Client, vault: None) -> None:
    response = _search(admin_client, path="/", catalog="vault")
    assert response.status_code == 302
    assert SearchQuery.objects.get().catalog.name == "vault"


def test_an_anonymous_search_needs_no_csrf_token(vault: None) -> None:
    CatalogImageFactory(catalog=CatalogFactory(name="paris"))
    response = _search(Client(enforce_csrf_checks=True), catalog="paris")
    assert response.status_code == 202
