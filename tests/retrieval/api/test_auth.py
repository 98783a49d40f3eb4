"""Token authentication: anonymous clients read public catalogs and search; the rest of
the catalog API needs a token, and its writes a staff user."""

from __future__ import annotations

import pytest
from django.test import Client

from retrieval.models import Catalog
from tests.factories import CatalogFactory

pytestmark = pytest.mark.django_db


def test_without_a_token_the_catalog_images_get_401_with_the_error_shape(client: Client) -> None:
    CatalogFactory(name="paris")
    response = client.get("/api/catalogs/paris/images")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json() == {"error": "Authentication credentials were not provided."}


def test_an_invalid_token_gets_401(client: Client) -> None:
    response = client.get("/api/catalogs", headers={"Authorization": "Token 0123456789abcdef"})
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token."}


def test_without_a_token_creating_a_catalog_gets_401_and_creates_nothing(client: Client) -> None:
    response = client.post("/api/catalogs", {"name": "paris"}, content_type="application/json")
    assert response.status_code == 401
    assert not Catalog.objects.exists()


def test_a_user_who_is_not_staff_gets_403_on_writes(user_client: Client) -> None:
    response = user_client.post("/api/catalogs", {"name": "paris"}, content_type="application/json")
    assert response.status_code == 403
    assert response.json() == {"error": "Only staff users may change catalogs, images and jobs."}
    assert not Catalog.objects.exists()


def test_a_user_who_is_not_staff_reads_the_catalog_api(user_client: Client) -> None:
    CatalogFactory(name="paris", public=False)
    assert user_client.get("/api/catalogs/paris/images").status_code == 200
    assert user_client.get("/api/jobs").status_code == 200


def test_a_staff_token_creates_a_catalog(staff_client: Client) -> None:
    response = staff_client.post("/api/catalogs", {"name": "paris"}, content_type="application/json")
    assert response.status_code == 201
    assert Catalog.objects.filter(name="paris").exists()


def test_a_signed_in_staff_session_must_send_the_csrf_token(admin_user) -> None:  # type: ignore[no-untyped-def]
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    response = browser.post("/api/catalogs", {"name": "paris"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    assert not Catalog.objects.exists()
