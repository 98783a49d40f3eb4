"""Small typed helpers that read configuration from environment variables.

Every setting of the project has the prefix ``LANDMARKS_`` except the standard
``DATABASE_URL``, ``REDIS_URL``, ``PORT`` and ``DJANGO_*`` names. Malformed values raise
``ImproperlyConfigured`` at start-up instead of misbehaving later. ``NAME_FILE`` is read
instead of ``NAME`` when set (for Docker secrets).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def get_str(name: str, default: str) -> str:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def get_optional_str(name: str) -> str | None:
    value = get_str(name, "")
    return value or None


def get_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def get_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def get_optional_int(name: str, *, minimum: int | None = None) -> int | None:
    """An integer, or None when the variable is unset or empty."""
    if os.environ.get(name, "") == "":
        return None
    return get_int(name, 0, minimum=minimum)


def get_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def get_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def get_float_list(name: str, default: list[float], *, minimum: float | None = None) -> list[float]:
    """A comma-separated list of numbers, e.g. ``0.5,1,2``; at least one item."""
    items = get_list(name, [])
    if not items:
        return default
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be comma-separated numbers, got {item!r}") from None
    if minimum is not None and min(values) < minimum:
        raise ImproperlyConfigured(f"{name} values must be >= {minimum}, got {min(values)}")
    return values


def get_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def get_optional_path(name: str) -> Path | None:
    """The path in ``name``, or None when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else None


_RATE = re.compile(r"\d+/\d*[smhd]")


def get_rate(name: str, default: str) -> str:
    """A django-ratelimit rate: requests per period, e.g. ``30/m``, ``10/5m``, ``1000/d``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not _RATE.fullmatch(raw):
        raise ImproperlyConfigured(f"{name} must be a rate such as 30/m or 100/h (s, m, h, d), got {raw!r}")
    return raw


def get_optional_pair(name: str) -> tuple[str, str] | None:
    """Two comma-separated strings, e.g. ``HTTP_X_FORWARDED_PROTO,https``; None when unset."""
    items = get_list(name, [])
    if not items:
        return None
    if len(items) != 2:
        raise ImproperlyConfigured(f"{name} must be two comma-separated values, got {os.environ.get(name)!r}")
    return items[0], items[1]
