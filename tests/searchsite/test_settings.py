"""Production settings come from the environment: `check --deploy` is clean with the
variables the README documents, and local http stays the default."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_deploy(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LANDMARKS_"))}
    port = _closed_port()  # no database or broker is needed: nothing listens there
    env.update(DATABASE_URL=f"postgres://landmarks@127.0.0.1:{port}/landmarks", REDIS_URL=f"redis://127.0.0.1:{port}/0")
    env.update(variables)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# README, "Production (Docker)": the variables to set behind a TLS proxy.
PRODUCTION = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "landmarks.example.org",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://landmarks.example.org",
    "DJANGO_HTTPS": "true",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "LANDMARKS_CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR",
}


def test_check_deploy_is_clean_with_the_documented_production_variables() -> None:
    result = _check_deploy(**PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_names_what_is_missing_without_https() -> None:
    result = _check_deploy(**{**PRODUCTION, "DJANGO_HTTPS": "false"})
    assert result.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):
        assert warning in result.stderr


def test_each_secure_setting_can_be_set_alone() -> None:
    result = _check_deploy(**{**PRODUCTION, "DJANGO_SECURE_HSTS_SECONDS": "3600", "DJANGO_SECURE_HSTS_PRELOAD": "false"})
    assert "W021" in result.stderr and "W004" not in result.stderr


def test_local_http_is_the_default(settings) -> None:
    assert not (settings.SECURE_SSL_REDIRECT or settings.SESSION_COOKIE_SECURE or settings.CSRF_COOKIE_SECURE)
    assert settings.SECURE_HSTS_SECONDS == 0 and settings.SECURE_PROXY_SSL_HEADER is None
