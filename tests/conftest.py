"""Shared fixtures: real photos, a real Celery worker on the real Redis, test settings.

`make test` starts throw-away PostgreSQL and Redis servers and points DATABASE_URL and
REDIS_URL at them; pytest-django creates the test database there (pgvector included).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Small, fast settings for the extractor in tests (real model, real weights).
TEST_EXTRACTOR = os.environ.get("LANDMARKS_TEST_EXTRACTOR", "effnet-lite0-gem+rootsift")

REAL_PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "motorcycle_left.png", "rocket.jpg", "retina.jpg",
]  # fmt: skip
DATASETS_DIR = Path(
    os.environ.get("LANDMARKS_DATASETS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
)


def pytest_configure(config: pytest.Config) -> None:
    """Process-wide test settings, applied before any fixture (the Celery worker thread
    and the extractor singleton read them too)."""
    if not config.pluginmanager.hasplugin("django"):  # plain `-p no:django` vision runs
        return
    import tempfile

    from django.conf import settings

    os.environ["LANDMARKS_WARM_EXTRACTOR"] = "0"
    settings.LANDMARKS_EXTRACTOR = TEST_EXTRACTOR
    settings.LANDMARKS_GLOBAL_IMAGE_SIZE = 384
    settings.MEDIA_ROOT = tempfile.mkdtemp(prefix="landmarks-media-")


@pytest.fixture(autouse=True)
def fresh_rate_limits(request: pytest.FixtureRequest) -> None:
    """Every test starts with no request counted against the rate limits (Redis cache)."""
    if request.config.pluginmanager.hasplugin("django"):
        from django.core.cache import cache

        cache.clear()


def photo_path(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def load_photo(name: str) -> np.ndarray:
    """A real photograph shipped with scikit-image, as (H, W, 3) uint8 RGB."""
    image = Image.open(photo_path(name))
    return np.asarray(image.convert("RGB"))


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def real_photos() -> dict[str, np.ndarray]:
    return {name.split(".")[0]: load_photo(name) for name in REAL_PHOTOS}


@pytest.fixture(scope="session")
def celery_worker_session(django_db_blocker: object) -> Iterator[object]:
    """A real Celery worker (solo pool, in a thread) consuming both queues from Redis."""
    from celery.contrib.testing.worker import start_worker

    from searchsite.celery import app

    with app.connection_for_write() as connection:
        for queue in ("index", "search"):
            channel = connection.default_channel
            channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            channel.queue_purge(queue)
    with django_db_blocker.unblock(), start_worker(  # type: ignore[attr-defined]
        app, pool="solo", perform_ping_check=False, queues=["index", "search"], shutdown_timeout=60
    ) as worker:
        yield worker


@pytest.fixture
def celery_worker(celery_worker_session: object, transactional_db: None) -> object:
    """The worker, with a database whose writes are committed (the worker has its own connection)."""
    return celery_worker_session
