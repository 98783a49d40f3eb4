"""Searches and admin logins are rate limited per client; with Redis away the limits fail open."""

from __future__ import annotations

import socket

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings

from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog():
    catalog = CatalogFactory(name="paris")
    CatalogImageFactory(catalog=catalog)
    return catalog


@pytest.fixture(autouse=True)
def no_waiting(settings) -> None:
    settings.LANDMARKS_SEARCH_WAIT_SECONDS = 0  # the form's wait for the (absent) worker


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(load_photo("coffee.png"))


# Rates per hour in tests: a window boundary (django-ratelimit aligns windows to the
# period) between two requests of one test is then very unlikely.


def _search(client: Client, photo: bytes, path: str = "/api/search", **extra: str):
    return client.post(path, {"image": SimpleUploadedFile("q.jpg", photo), "wait": "0"}, **extra)


def _login(client: Client, username: str, **extra: str):
    return client.post("/admin/login/", {"username": username, "password": "wrong"}, **extra)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket closes


def test_api_searches_over_the_rate_get_429_with_a_message(client: Client, catalog, photo: bytes, settings) -> None:
    settings.LANDMARKS_SEARCH_RATE = "2/h"
    assert [_search(client, photo).status_code for _ in range(2)] == [202, 202]
    response = _search(client, photo)
    assert response.status_code == 429
    assert "Too many searches (limit 2/h)" in response.json()["error"]


def test_the_search_form_over_the_rate_shows_the_page_with_a_message(
    client: Client, catalog, photo: bytes, settings
) -> None:
    settings.LANDMARKS_SEARCH_RATE = "1/h"
    assert _search(client, photo, path="/").status_code == 302
    response = _search(client, photo, path="/")
    assert response.status_code == 429
    assert b"Too many searches" in response.content and b"<form" in response.content


def test_the_search_rate_is_counted_per_client_ip(client: Client, catalog, photo: bytes, settings) -> None:
    settings.LANDMARKS_SEARCH_RATE = "1/h"
    assert _search(client, photo, REMOTE_ADDR="10.0.0.1").status_code == 202
    assert _search(client, photo, REMOTE_ADDR="10.0.0.2").status_code == 202
    assert _search(client, photo, REMOTE_ADDR="10.0.0.1").status_code == 429


def test_admin_logins_over_the_rate_per_ip_get_429(client: Client, settings) -> None:
    settings.LANDMARKS_LOGIN_RATE = "3/h"
    assert [_login(client, f"user{i}").status_code for i in range(3)] == [200, 200, 200]
    response = _login(client, "user4")
    assert response.status_code == 429
    assert b"Too many login attempts" in response.content


def test_admin_logins_over_the_rate_per_username_get_429_from_any_ip(client: Client, settings) -> None:
    settings.LANDMARKS_LOGIN_RATE = "2/h"
    assert _login(client, "admin", REMOTE_ADDR="10.0.0.1").status_code == 200
    assert _login(client, "admin", REMOTE_ADDR="10.0.0.2").status_code == 200
    assert _login(client, "admin", REMOTE_ADDR="10.0.0.3").status_code == 429


def test_the_admin_login_page_still_logs_in(client: Client, admin_user) -> None:
    response = client.post("/admin/login/", {"username": "admin", "password": "password", "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_with_redis_unreachable_the_limits_fail_open_and_the_site_answers(
    client: Client, catalog, photo: bytes, settings
) -> None:
    settings.LANDMARKS_SEARCH_RATE = "1/h"
    settings.LANDMARKS_LOGIN_RATE = "1/h"
    unreachable = {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{_closed_port()}/1"}
    with override_settings(CACHES={"default": unreachable}):
        assert [_search(client, photo).status_code for _ in range(3)] == [202, 202, 202]
        assert [_search(client, photo, path="/").status_code for _ in range(2)] == [302, 302]
        assert [_login(client, "admin").status_code for _ in range(3)] == [200, 200, 200]


def test_behind_a_proxy_the_client_ip_comes_from_the_configured_header(
    client: Client, catalog, photo: bytes, settings
) -> None:
    settings.LANDMARKS_SEARCH_RATE = "1/h"
    settings.LANDMARKS_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    settings.RATELIMIT_IP_META_KEY = "searchsite.middleware.client_ip"
    assert _search(client, photo, HTTP_X_FORWARDED_FOR="6.6.6.6, 10.0.0.1").status_code == 202
    assert _search(client, photo, HTTP_X_FORWARDED_FOR="6.6.6.6, 10.0.0.2").status_code == 202
    assert _search(client, photo, HTTP_X_FORWARDED_FOR="7.7.7.7, 10.0.0.1").status_code == 429
