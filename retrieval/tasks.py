"""Celery tasks: thin wrappers that take ids and call one service each.

Each is named after its service (``image_index_task`` runs ``services.image_index``); the
services import this module and send these objects. The names on the wire stay the ones
queued messages and the beat schedule use (``retrieval.tasks.index_image`` ...). The
services are imported inside the tasks: they import this module at load time.

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


@shared_task(bind=True, **RETRY, name="retrieval.tasks.index_image")
def image_index_task(self: Any, image_id: int) -> None:
    from retrieval.services import image_index

    image_index(image_id=image_id, task_id=self.request.id or "", retry=bool(self.request.retries))


@shared_task(bind=True, **RETRY, name="retrieval.tasks.search_run")
def search_execute_task(self: Any, query_id: int) -> None:
    from retrieval.services import search_execute

    search_execute(query_id=query_id, task_id=self.request.id or "", retry=bool(self.request.retries))


@shared_task(**RETRY, name="retrieval.tasks.catalog_augment")
def catalog_augment_task(catalog_id: int) -> None:
    from retrieval.services import catalog_augment as augment

    augment(catalog_id=catalog_id)


@shared_task(bind=True, **RETRY, name="retrieval.tasks.reindex_run")
def reindex_run_task(self: Any, job_id: int) -> None:
    from retrieval.services import reindex_run as run

    run(job_id=job_id, task_id=self.request.id or "")


@shared_task(ignore_result=True, name="retrieval.tasks.work_sweep")
def work_sweep_task() -> None:
    """Periodic (celery beat): queue again what a fault left pending or half done."""
    from retrieval.recovery import work_sweep as sweep

    sweep()


@shared_task(**RETRY, name="retrieval.tasks.search_purge_expired")
def search_purge_expired_task() -> int:
    """Periodic (celery beat): delete searches older than the retention period."""
    from retrieval.services import search_purge_expired as purge

    return purge()
