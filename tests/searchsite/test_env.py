"""The typed environment helpers refuse malformed values at start-up."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from searchsite import env


@pytest.mark.parametrize("rate", ["30/m", "10/5m", "1000/d", "5/s"])
def test_get_rate_accepts_a_django_ratelimit_rate(monkeypatch: pytest.MonkeyPatch, rate: str) -> None:
    monkeypatch.setenv("X_RATE", rate)
    assert env.get_rate("X_RATE", "1/m") == rate


@pytest.mark.parametrize("rate", ["30", "30 per minute", "m/30", "30/y"])
def test_get_rate_refuses_anything_else(monkeypatch: pytest.MonkeyPatch, rate: str) -> None:
    monkeypatch.setenv("X_RATE", rate)
    with pytest.raises(ImproperlyConfigured, match="X_RATE must be a rate"):
        env.get_rate("X_RATE", "1/m")
