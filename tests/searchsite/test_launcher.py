"""`make run`'s launcher: starts its own databases, serves, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
def test_run_serves_the_site_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        LANDMARKS_DATA_DIR=str(tmp_path / "var"),
        LANDMARKS_EXTRACTOR="effnet-lite0-gem+rootsift",
        PORT=str(port),
        WEB_WORKERS="1",
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "searchsite.launcher", "run"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert launcher.poll() is None, launcher.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.status == 200
                    assert b"Which landmark is this?" in response.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, "the site did not come up"
                time.sleep(1)
        assert (tmp_path / "var" / "admin-password.txt").exists()
        assert (tmp_path / "var" / "run" / "services.env").exists()
        children = psutil.Process(launcher.pid).children(recursive=True)
        postgres = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
        assert len(children) >= 3 and postgres
        _assert_indexing_processes(launcher.pid)
    finally:
        os.kill(launcher.pid, signal.SIGINT)  # what Ctrl-C sends
        code = launcher.wait(60)
    assert code == 0
    gone, alive = psutil.wait_procs(children + postgres, timeout=20)
    assert not alive, [p.pid for p in alive]
    assert not (tmp_path / "var" / "run" / "services.env").exists()
    assert (tmp_path / "var" / "postgres" / "PG_VERSION").exists()  # data kept for the next run


def test_run_keeps_a_generated_secret_key_in_the_data_folder(tmp_path: Path) -> None:
    from searchsite.launcher import _ensure_secret_key

    first: dict[str, str] = {}
    _ensure_secret_key(first, tmp_path)
    key_file = tmp_path / "secret-key.txt"
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert len(first["DJANGO_SECRET_KEY"]) >= 50 and first["DJANGO_SECRET_KEY"] == key_file.read_text().strip()
    second: dict[str, str] = {}
    _ensure_secret_key(second, tmp_path)
    assert second["DJANGO_SECRET_KEY"] == first["DJANGO_SECRET_KEY"]


@pytest.mark.parametrize("variable", ["DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY_FILE"])
def test_run_keeps_a_secret_key_set_in_the_environment(tmp_path: Path, variable: str) -> None:
    from searchsite.launcher import _ensure_secret_key

    env = {variable: "from-the-operator"}
    _ensure_secret_key(env, tmp_path)
    assert env == {variable: "from-the-operator"}
    assert not (tmp_path / "secret-key.txt").exists()


def test_a_killed_embedded_redis_is_started_again_on_its_port_with_its_data(tmp_path: Path) -> None:
    import redis

    from searchsite.launcher import _supervise_redis
    from searchsite.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    redis.Redis.from_url(url).set("kept", "yes")
    redis.Redis.from_url(url).bgrewriteaof()
    time.sleep(1)
    os.kill(server._process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    server._process.wait()  # type: ignore[union-attr]
    try:
        _supervise_redis(server, {})
        assert redis.Redis.from_url(url).get("kept") == b"yes"
    finally:
        server.stop()


def test_a_child_that_keeps_dying_is_restarted_with_a_growing_delay(tmp_path: Path) -> None:
    from searchsite.launcher import Child

    marker = tmp_path / "starts"
    child = Child("flaky", [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"])
    env = dict(os.environ)
    child.start(env)
    delays = []
    for _ in range(3):
        child.process.wait(10)  # type: ignore[union-attr]
        child.supervise(env)  # notices the exit and schedules the restart
        assert child.restart_at is not None
        delays.append(child.restart_at - time.monotonic())
        child.restart_at = time.monotonic()  # skip the wait
        child.supervise(env)
    child.process.wait(10)  # type: ignore[union-attr]
    assert marker.read_text() == "xxxx"
    assert delays[0] < delays[1] < delays[2]


def _assert_indexing_processes(launcher_pid: int) -> None:
    """The index worker: one pool process per core (at most 4), TensorFlow on one thread
    each, below the search worker's priority."""
    deadline = time.monotonic() + 120
    while True:
        workers = [p for p in psutil.Process(launcher_pid).children() if {"worker", "index"} <= set(p.cmdline())]
        pool = workers[0].children() if workers else []
        if len(pool) == min(4, os.cpu_count() or 1):
            break
        assert time.monotonic() < deadline, f"index worker processes: {workers}, pool {pool}"
        time.sleep(1)
    (worker,) = workers
    lower = min(19, psutil.Process(launcher_pid).nice() + 10)
    assert worker.nice() == lower
    assert all(process.nice() == lower for process in pool)
    assert worker.environ()["TF_NUM_INTRAOP_THREADS"] == "1"
    assert worker.environ()["TF_NUM_INTEROP_THREADS"] == "1"
