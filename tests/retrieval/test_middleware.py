"""Infrastructure faults answer 503 with a message instead of a 500 page."""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError
from django.test import RequestFactory
from kombu.exceptions import OperationalError as BrokerError

from retrieval.middleware import ServiceUnavailableMiddleware


def _answer(path: str, exception: Exception):  # type: ignore[no-untyped-def]
    middleware = ServiceUnavailableMiddleware(lambda request: None)  # type: ignore[arg-type, return-value]
    return middleware.process_exception(RequestFactory().get(path), exception)


def test_a_database_outage_answers_503_json_under_the_api() -> None:
    response = _answer("/api/search", OperationalError("connection refused"))
    assert response.status_code == 503 and response["Retry-After"]
    assert "database is unavailable" in json.loads(response.content)["error"]


def test_a_broker_outage_answers_a_503_page_elsewhere() -> None:
    response = _answer("/", BrokerError("Error 111 connecting"))
    assert response.status_code == 503 and response["Content-Type"].startswith("text/html")
    assert b"task queue is unavailable" in response.content


@pytest.mark.parametrize("exception", [ValueError("a bug"), KeyError("x")])
def test_other_errors_are_left_to_django(exception: Exception) -> None:
    assert _answer("/", exception) is None
