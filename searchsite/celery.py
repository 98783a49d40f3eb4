"""The Celery app, configured from Django settings (``CELERY_*``)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from searchsite import env

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")

app = Celery("searchsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger(__name__)


@worker_process_init.connect
def _warm_extractor(**_: object) -> None:
    """Load the feature extractor once per worker process, not on the first task."""
    if not env.get_bool("LANDMARKS_WARM_EXTRACTOR", True):
        return
    from retrieval.extraction import get_extractor

    try:
        # One small photo through both paths: TensorFlow traces a function on its first
        # call (~1.5 s), which would otherwise land on the first photo or search.
        get_extractor().warm_up()
    except Exception:  # the first task reports the error on the image itself
        logger.exception("could not load the feature extractor at worker start")


@worker_ready.connect
def _prewarm_search_tables(sender: Any, **_: object) -> None:
    """A search worker reads the search tables and indexes into PostgreSQL's cache when it
    starts (``services.search_working_set_prewarm``), in a thread: it takes seconds to
    minutes at a million photos, and searches are served meanwhile."""
    from django.conf import settings

    if "search" not in (sender.app.amqp.queues.consume_from or {}) or not settings.LANDMARKS_PREWARM:
        return
    threading.Thread(target=_prewarm, name="prewarm", daemon=True).start()


def _prewarm() -> None:
    from django.db import connection

    from retrieval.services import search_working_set_prewarm

    try:
        search_working_set_prewarm()
    except Exception:  # a cache that stays cold costs time, not results
        logger.warning("could not prewarm the search tables", exc_info=True)
    finally:
        connection.close()
