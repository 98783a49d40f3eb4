"""Every error of the API is ``{"error": message}`` with its status, whatever raised it."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import CatalogFactory

pytestmark = pytest.mark.django_db


def test_an_unknown_api_url_gets_a_json_404(client: Client) -> None:
    response = client.get("/api/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"error": "No API endpoint at /api/nothing/here."}


def test_an_unknown_api_url_gets_the_json_404_for_any_method(staff_client: Client) -> None:
    """Found by the schema fuzzing: a DELETE to /api/images/1.5 got the CSRF check's HTML 403."""
    browser = Client(enforce_csrf_checks=True)
    response = browser.delete("/api/images/1.5", headers={"Cookie": "sessionid=x"})
    assert response.status_code == 404
    assert response.json() == {"error": "No API endpoint at /api/images/1.5."}


def test_a_method_the_endpoint_does_not_take_gets_405(staff_client: Client) -> None:
    response = staff_client.put("/api/catalogs", {}, content_type="application/json")
    assert response.status_code == 405
    assert response.json() == {"error": 'Method "PUT" not allowed.'}


def test_a_get_on_the_search_endpoint_gets_405(client: Client) -> None:
    response = client.get("/api/search")
    assert response.status_code == 405
    assert "not allowed" in response.json()["error"]


def test_malformed_json_gets_400(staff_client: Client) -> None:
    response = staff_client.post("/api/catalogs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"].startswith("JSON parse error")


@pytest.mark.parametrize("url", ["/api/catalogs", "/api/search"])
def test_json_nested_too_deeply_to_parse_gets_400(staff_client: Client, url: str) -> None:
    response = staff_client.post(url, "[" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": "JSON parse error - the body is nested too deeply."}


def test_a_body_type_the_endpoint_does_not_read_gets_415(staff_client: Client) -> None:
    response = staff_client.post("/api/catalogs", "name=paris", content_type="text/plain")
    assert response.status_code == 415
    assert response.json() == {"error": 'Unsupported media type "text/plain" in request.'}


def test_a_wrongly_typed_field_gets_400_naming_it(staff_client: Client) -> None:
    CatalogFactory(name="paris")
    response = staff_client.patch("/api/catalogs/paris", {"public": "perhaps"}, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": "public: Must be a valid boolean."}


def test_a_nul_character_in_a_catalog_name_gets_404_not_a_database_error(user_client: Client) -> None:
    response = user_client.get("/api/catalogs/a%00b/images")
    assert response.status_code == 404
    assert "No catalog named" in response.json()["error"]
