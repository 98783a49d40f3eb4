"""The OpenAPI schema is valid, documents every error with the error shape and the real
payloads; the interactive docs work under the site's Content-Security-Policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource

from retrieval.models import SearchQuery
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory
from tests.retrieval.test_security_headers import POLICY

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client: Client) -> dict:
    response = client.get("/api/schema/")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return response.json()


def _validator(schema: dict, component: str) -> OAS30Validator:
    registry = Registry().with_resource("urn:api", Resource.opaque(schema))  # type: ignore[call-arg]
    return OAS30Validator({"$ref": f"urn:api#/components/schemas/{component}"}, registry=registry)


def test_the_schema_is_valid_openapi_3(schema: dict) -> None:
    assert schema["openapi"].startswith("3.")
    validate(schema)


def test_the_schema_generates_without_warnings(tmp_path: Path) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_the_schema_covers_search_and_the_catalog_api(schema: dict) -> None:
    assert {
        "/api/search", "/api/search/{public_id}", "/api/catalogs", "/api/catalogs/{name}", "/api/catalogs/{name}/images",
        "/api/catalogs/{name}/landmarks", "/api/catalogs/{name}/reindex", "/api/images/{image_id}", "/api/jobs",
        "/api/jobs/imports/{job_id}", "/api/jobs/reindex/{job_id}",
    } <= set(schema["paths"])  # fmt: skip


def test_every_error_response_in_the_schema_has_the_error_shape(schema: dict) -> None:
    components = schema["components"]["schemas"]
    errors = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                ref = response["content"]["application/json"]["schema"]["$ref"]
                component = components[ref.rsplit("/", 1)[1]]
                assert "error" in component["required"], (method, path, status)
                assert component["properties"]["error"]["type"] == "string", (method, path, status)
                assert not component["properties"]["error"].get("nullable"), (method, path, status)
                errors += 1
    assert errors > 50


def test_a_finished_search_matches_its_schema(client: Client, schema: dict) -> None:
    catalog = CatalogFactory(name="paris")
    image = CatalogImageFactory(catalog=catalog)
    upload = SimpleUploadedFile("q.jpg", encode(load_photo("coffee.png")))
    body = client.post("/api/search", {"image": upload, "wait": "0"}).json()
    result = {
        "rank": 1,
        "image_id": image.pk,
        "landmark": None,
        "score": 61.2,
        "similarity": 0.9,
        "global_score": 0.8,
        "inliers": 60,
        "verified": True,
        "checked": True,
        "width": 640,
        "height": 480,
        "name": "a.jpg",
        "external_id": "",
        "matches": [[1.0, 2.0, 3.0, 4.0]],
    }  # fmt: skip: what services.search stores
    SearchQuery.objects.filter(public_id=body["id"]).update(
        status="done", results=[result], landmark_name="eiffel", landmark_confidence=0.5, timings_ms={"total": 9.5}
    )
    done = client.get(f"/api/search/{body['id']}")
    assert done.status_code == 200
    _validator(schema, "Search").validate(done.json())
    SearchQuery.objects.filter(public_id=body["id"]).update(status="failed", error="The photo is truncated.")
    failed = client.get(f"/api/search/{body['id']}")
    assert failed.status_code == 422
    _validator(schema, "FailedSearch").validate(failed.json())


def test_the_docs_page_renders_with_scripts_and_styles_from_our_static_files(client: Client) -> None:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert {part.strip() for part in response["Content-Security-Policy"].split(";")} == POLICY
    scripts = re.findall(r'<script src="([^"]+)"', html)
    styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert "<script>" not in html and "<style>" not in html and "style=" not in html
    assert any(src.endswith("swagger-ui-bundle.js") for src in scripts)
    for url in [*scripts, *styles]:
        assert url.startswith("/static/") or url.startswith("/api/docs/?"), url
        served = client.get(url)
        assert served.status_code == 200, url
        body = b"".join(served.streaming_content) if served.streaming else served.content
        assert body, url


def test_the_docs_script_points_at_the_schema(client: Client) -> None:
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert b'url: "/api/schema/"' in script.content
