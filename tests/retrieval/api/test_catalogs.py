"""Catalogs: creation by staff, listings with image counts per status, who sees which."""

from __future__ import annotations

import pytest
from django.test import Client

from retrieval.models import Catalog, CatalogImage
from tests.factories import CatalogFactory, CatalogImageFactory, FeatureModelFactory, LandmarkFactory

pytestmark = pytest.mark.django_db


def _create(client: Client, **fields: object):  # type: ignore[no-untyped-def]
    return client.post("/api/catalogs", fields, content_type="application/json")


def test_creating_a_catalog_answers_it_with_its_url(staff_client: Client) -> None:
    response = _create(staff_client, name="rome", description="Fountains", public=False)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "rome" and body["description"] == "Fountains" and body["public"] is False
    assert body["images"] == {"pending": 0, "processing": 0, "indexed": 0, "failed": 0, "total": 0}
    assert response["Location"] == body["url"] == "http://testserver/api/catalogs/rome"
    assert Catalog.objects.get(name="rome").public is False


def test_creating_a_catalog_whose_name_is_taken_gets_409(staff_client: Client) -> None:
    CatalogFactory(name="rome")
    response = _create(staff_client, name="rome")
    assert response.status_code == 409
    assert response.json() == {"error": "A catalog named rome exists already."}


@pytest.mark.parametrize("name", ["../etc", "with space", "-dash-first", "x" * 101])
def test_an_invalid_catalog_name_gets_400(staff_client: Client, name: str) -> None:
    response = _create(staff_client, name=name)
    assert response.status_code == 400
    assert response.json()["error"].startswith(("Invalid catalog name", "name:"))
    assert not Catalog.objects.exists()


def test_a_missing_name_gets_400_naming_the_field(staff_client: Client) -> None:
    response = _create(staff_client, description="no name")
    assert response.status_code == 400
    assert response.json() == {"error": "name: This field is required."}


def test_the_list_counts_images_per_status(staff_client: Client) -> None:
    paris = CatalogFactory(name="paris")
    CatalogFactory(name="rome")
    for status in ["indexed", "indexed", "pending", "failed"]:
        CatalogImageFactory(catalog=paris, status=status)
    LandmarkFactory(catalog=paris)
    body = staff_client.get("/api/catalogs").json()
    assert body["count"] == 2
    by_name = {c["name"]: c for c in body["results"]}
    assert by_name["paris"]["images"] == {"pending": 1, "processing": 0, "indexed": 2, "failed": 1, "total": 4}
    assert by_name["paris"]["landmarks"] == 1
    assert by_name["rome"]["images"]["total"] == 0


def test_anonymous_clients_list_only_public_catalogs(client: Client) -> None:
    CatalogFactory(name="paris")
    CatalogFactory(name="vault", public=False)
    body = client.get("/api/catalogs").json()
    assert [c["name"] for c in body["results"]] == ["paris"]


def test_a_private_catalog_is_unknown_to_anonymous_clients_and_visible_with_a_token(
    client: Client, user_client: Client
) -> None:
    CatalogFactory(name="vault", public=False)
    response = client.get("/api/catalogs/vault")
    assert response.status_code == 404
    assert response.json() == {"error": "No catalog named vault."}
    assert user_client.get("/api/catalogs/vault").json()["public"] is False


def test_the_detail_shows_the_active_model(user_client: Client) -> None:
    model = FeatureModelFactory(name="effnet", version="v7")
    CatalogFactory(name="paris", active_model=model)
    body = user_client.get("/api/catalogs/paris").json()
    assert body["active_model"] == "effnet@v7"
    assert body["extractor"]  # the server's default extractor


def test_staff_make_a_catalog_private(staff_client: Client) -> None:
    CatalogFactory(name="paris")
    response = staff_client.patch("/api/catalogs/paris", {"public": False}, content_type="application/json")
    assert response.status_code == 200 and response.json()["public"] is False
    assert Catalog.objects.get(name="paris").public is False


def test_the_landmarks_are_paged_with_their_image_counts(user_client: Client) -> None:
    paris = CatalogFactory(name="paris")
    eiffel, louvre = LandmarkFactory(catalog=paris, name="eiffel"), LandmarkFactory(catalog=paris, name="louvre")
    for landmark in [eiffel, eiffel, louvre]:
        CatalogImageFactory(catalog=paris, landmark=landmark)
    body = user_client.get("/api/catalogs/paris/landmarks?limit=1").json()
    assert body["count"] == 2
    assert [(lm["name"], lm["images"]) for lm in body["results"]] == [("eiffel", 2)]
    page2 = user_client.get(body["next"].replace("http://testserver", "")).json()
    assert [(lm["name"], lm["images"]) for lm in page2["results"]] == [("louvre", 1)]


def test_the_images_filter_by_status_and_landmark(user_client: Client) -> None:
    paris = CatalogFactory(name="paris")
    eiffel = LandmarkFactory(catalog=paris, name="eiffel")
    wanted = CatalogImageFactory(catalog=paris, landmark=eiffel, status=CatalogImage.Status.FAILED)
    CatalogImageFactory(catalog=paris, landmark=eiffel, status=CatalogImage.Status.INDEXED)
    CatalogImageFactory(catalog=paris, status=CatalogImage.Status.FAILED)
    body = user_client.get("/api/catalogs/paris/images?status=failed&landmark=eiffel").json()
    assert [image["id"] for image in body["results"]] == [wanted.pk]
    assert body["results"][0]["file_url"] == f"http://testserver/images/{wanted.pk}/file"


def test_an_unknown_status_filter_gets_400(user_client: Client) -> None:
    CatalogFactory(name="paris")
    response = user_client.get("/api/catalogs/paris/images?status=lost")
    assert response.status_code == 400
    assert response.json() == {"error": "status must be one of pending, processing, indexed, failed."}


def test_an_unknown_catalog_gets_404(user_client: Client) -> None:
    response = user_client.get("/api/catalogs/nowhere/images")
    assert response.status_code == 404
    assert response.json() == {"error": "No catalog named nowhere."}
