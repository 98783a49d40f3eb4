"""Schema fuzzing: schemathesis generates requests for every operation of the schema
and sends them to the running test server (pytest-django's ``live_server``) with a staff
token; no answer may be a 5xx, and every answer must be documented and match the schema.

Three kinds of requests per operation: valid ones, invalid ones, and valid ones aimed at
objects that exist (catalog ``paris`` with indexed images, its jobs, a search; real photos
in the multipart bodies), so that the success paths are fuzzed too; each operation must
answer at least one of those with a 2xx. Bounded: ``EXAMPLES`` requests per operation,
derandomized, about a minute in all. The operations are listed here (one test each, a
fresh database each) and checked against the served schema, so that a new endpoint cannot
go unfuzzed.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from retrieval import services
from retrieval.services import queueing
from retrieval.models import ImportJob, ReindexJob
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory, ImageDescriptorFactory

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 45

OPERATIONS = [
    ("POST", "/api/search"),
    ("GET", "/api/search/{public_id}"),
    ("GET", "/api/catalogs"),
    ("POST", "/api/catalogs"),
    ("GET", "/api/catalogs/{name}"),
    ("PATCH", "/api/catalogs/{name}"),
    ("GET", "/api/catalogs/{name}/landmarks"),
    ("GET", "/api/catalogs/{name}/images"),
    ("POST", "/api/catalogs/{name}/images"),
    ("POST", "/api/catalogs/{name}/reindex"),
    ("GET", "/api/images/{image_id}"),
    ("DELETE", "/api/images/{image_id}"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/imports/{job_id}"),
    ("GET", "/api/jobs/reindex/{job_id}"),
]


@pytest.fixture
def staff_headers(transactional_db: None) -> dict[str, str]:
    token = Token.objects.create(user=User.objects.create_user("fuzzer", password="x", is_staff=True))
    return {"Authorization": f"Token {token.key}"}


@pytest.fixture
def existing(transactional_db: None, settings, monkeypatch) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Objects to aim valid requests at: path parameters by path."""
    settings.LANDMARKS_SEARCH_WAIT_SECONDS = 0  # searches answer 202 at once
    settings.LANDMARKS_SEARCH_RATE = "100000/m"
    # Nothing reaches the broker: a Celery worker of the end-to-end tests may still be
    # consuming it, and a task it ran on this test's rows after the test (a loaded machine)
    # deadlocked with the database flush of the teardown. The contract of the answers is
    # what is fuzzed here; the tasks have tests of their own.
    monkeypatch.setattr(queueing, "send", lambda task, object_id, countdown=None: True)
    paris = CatalogFactory(name="paris")
    images = [ImageDescriptorFactory(image=CatalogImageFactory(catalog=paris)).image for _ in range(2)]
    ImageDescriptorFactory(image=CatalogImageFactory(catalog=CatalogFactory(name="vault", public=False)))
    search = services.search_create(
        catalog=paris, data=encode(load_photo("coffee.png")), filename="q.jpg", enqueue=False
    )
    imports = ImportJob.objects.create(catalog=paris, source="api", submitted=2)
    reindex = ReindexJob.objects.create(catalog=paris)
    return {
        "/api/search/{public_id}": {"public_id": str(search.public_id)},
        "/api/images/{image_id}": {"image_id": images[0].pk},
        "/api/jobs/imports/{job_id}": {"job_id": imports.pk},
        "/api/jobs/reindex/{job_id}": {"job_id": reindex.pk},
        **{path: {"name": "paris"} for _, path in OPERATIONS if "{name}" in path},
    }


@pytest.fixture
def api_schema(live_server, existing: dict[str, dict[str, Any]]):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{live_server.url}/api/schema/")


PHOTO = encode(load_photo("rocket.jpg"))


def _with_real_photo(case: Any) -> Any:
    """A multipart body with a real photo where the schema only says "binary"."""
    if isinstance(case.body, dict) and "image" in case.body:
        case.body = {**{k: v for k, v in case.body.items() if k != "bbox"}, "image": PHOTO, "catalog": "paris"}
    elif isinstance(case.body, dict) and "files" in case.body:
        case.body = {**case.body, "files": [PHOTO]}
    return case


def test_every_operation_of_the_schema_is_fuzzed(api_schema) -> None:  # type: ignore[no-untyped-def]
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_documented_answers_and_no_server_error(  # type: ignore[no-untyped-def]
    api_schema, existing: dict[str, dict[str, Any]], staff_headers: dict[str, str], method: str, path: str
) -> None:
    operation = api_schema[path][method]
    aimed = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=existing.get(path)).map(_with_real_photo)
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE), aimed
    )
    statuses: list[int] = []

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=cases)
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(headers=staff_headers, checks=CHECKS, timeout=30)
        statuses.append(response.status_code)

    fuzz()
    assert any(200 <= status < 300 for status in statuses), sorted(set(statuses))
