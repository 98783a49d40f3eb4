"""Celery tasks: thin wrappers that take ids and call one service each.

Each passes its Celery task id to the service, which claims the row with it: a message
that is redelivered (its worker was killed) or retried keeps its id, so it resumes the
work instead of finding the row busy. Database errors retry with backoff; everything
else is handled by the service (the row fails with a reason).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

# Up to ~20 minutes of database outage (backoff capped at 30 s); a task that still fails
# leaves its row to the sweep.
RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 40,
}


@shared_task(bind=True, **RETRY)
def index_image(self: Any, image_id: int) -> None:
    from retrieval.services import image_index

    image_index(image_id=image_id, task_id=self.request.id or "")


@shared_task(bind=True, **RETRY)
def search_run(self: Any, query_id: int) -> None:
    from retrieval.services import search_execute

    search_execute(query_id=query_id, task_id=self.request.id or "")


@shared_task(**RETRY)
def catalog_augment(catalog_id: int) -> None:
    from retrieval.services import catalog_augment as augment

    augment(catalog_id=catalog_id)


@shared_task(bind=True, **RETRY)
def reindex_run(self: Any, job_id: int) -> None:
    from retrieval.services import reindex_run as run

    run(job_id=job_id, task_id=self.request.id or "")


@shared_task(ignore_result=True)
def work_sweep() -> None:
    """Periodic (celery beat): queue again what a fault left pending or half done."""
    from retrieval.recovery import work_sweep as sweep

    sweep()


@shared_task(**RETRY)
def search_purge_expired() -> int:
    """Periodic (celery beat): delete searches older than the retention period."""
    from retrieval.services import search_purge_expired as purge

    return purge()
