"""The Celery app, configured from Django settings (``CELERY_*``)."""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_process_init

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
        get_extractor()
    except Exception:  # the first task reports the error on the image itself
        logger.exception("could not load the feature extractor at worker start")
