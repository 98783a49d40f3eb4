"""The request-body limit answers 413 from Content-Length, without reading the body."""

from __future__ import annotations

import io
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.handlers.wsgi import WSGIHandler

pytestmark = pytest.mark.django_db

HALF_A_GIGABYTE = 500 * 1024 * 1024


class UnreadableBody(io.RawIOBase):
    """A body that fails the test if anything reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        raise AssertionError("the request body was read")


def _call(path: str, content_length: int, method: str = "POST") -> tuple[str, dict[str, str], bytes]:
    """One raw WSGI request, as gunicorn would make it, with a body nobody may read."""
    environ: dict[str, object] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_TYPE": "multipart/form-data; boundary=xyz",
        "CONTENT_LENGTH": str(content_length),
        "wsgi.input": UnreadableBody(),
    }
    setup_testing_defaults(environ)
    answer: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(WSGIHandler()(environ, start_response))
    return answer["status"], answer["headers"], body  # type: ignore[return-value]


def test_an_api_request_over_the_limit_gets_413_json_without_reading_the_body() -> None:
    status, headers, body = _call("/api/search", HALF_A_GIGABYTE)
    assert status.startswith("413")
    assert headers["Content-Type"] == "application/json"
    assert b'"error": "The request is 524,288,000 bytes; the limit is' in body


def test_a_page_request_over_the_limit_gets_a_plain_413_page() -> None:
    status, headers, body = _call("/", HALF_A_GIGABYTE)
    assert status.startswith("413")
    assert headers["Content-Type"].startswith("text/html")
    assert b"Request too large" in body


def test_the_limit_is_one_upload_plus_the_form_overhead(settings) -> None:
    settings.LANDMARKS_MAX_UPLOAD_BYTES = 10_000
    settings.LANDMARKS_FORM_OVERHEAD_BYTES = 1_000
    assert _call("/api/search", 11_001)[0].startswith("413")


def test_admin_pages_have_their_own_larger_limit(settings) -> None:
    settings.LANDMARKS_MAX_UPLOAD_BYTES = 10_000
    settings.LANDMARKS_FORM_OVERHEAD_BYTES = 1_000
    settings.LANDMARKS_MAX_REQUEST_BYTES = 1_000_000
    assert _call("/api/search", 50_000)[0].startswith("413")
    # Within the admin limit: passes on (and the admin redirects an anonymous user to log in).
    assert _call("/admin/", 50_000, method="GET")[0].startswith("302")
    assert _call("/admin/", 1_000_001, method="GET")[0].startswith("413")


def test_a_request_within_the_limit_reaches_the_view(client) -> None:
    response = client.get("/")
    assert response.status_code == 200
