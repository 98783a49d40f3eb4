"""Claims on rows and sending tasks: the two halves of "never lose work".

A task claims its row with one conditional UPDATE (:func:`claim`); :func:`send` publishes
a task and stamps the row's ``queued_at``, or leaves it empty for the sweep
(``retrieval.recovery``) when the broker cannot be reached.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from celery import Task
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from retrieval import tasks
from retrieval.models import CatalogImage, ReindexJob, SearchQuery

logger = logging.getLogger(__name__)


# What a task lets propagate so that Celery retries it (the row's claim stays its own).
DATABASE_ERRORS = (OperationalError, InterfaceError)

# Field values that clear a claim when a row reaches a final state.
RELEASED = {"claimed_by": "", "claimed_at": None, "attempts": 0}

SEARCH_DONE = (SearchQuery.Status.DONE, SearchQuery.Status.FAILED)

JOB_DONE = (ReindexJob.Status.DONE, ReindexJob.Status.FAILED)


def claim(
    model: type[CatalogImage] | type[SearchQuery] | type[ReindexJob],
    pk: int,
    *,
    task_id: str,
    busy: str,
    done: tuple[str, ...] = (),
    max_attempts: int | None = None,
    resume_own: bool = True,
    retry: bool = False,
) -> bool:
    """Take a row for ``task_id`` with one conditional UPDATE; True if taken.

    A row in a ``done`` state is never taken. A ``busy`` row is taken only when the claim
    is this task's own (Celery redelivers and retries under the same id, so the work
    resumes), or when its holder has shown no progress for LANDMARKS_TASK_LEASE_SECONDS
    (a killed worker). Each claim counts an attempt, except a ``retry`` after a database
    error (Celery's autoretry: the worker did not die); ``max_attempts`` refuses more.
    ``resume_own=False`` is for tasks that may outlive the broker's visibility timeout: its
    redelivery arrives under the same id while the first delivery still works.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS)
    takeable = ~Q(status=busy) | Q(claimed_at__lt=stale) | Q(claimed_at__isnull=True)
    if resume_own:
        takeable |= Q(claimed_by=task_id)
    rows = model.objects.filter(pk=pk).exclude(status__in=done).filter(takeable)
    updates: dict[str, object] = {"status": busy, "claimed_by": task_id, "claimed_at": now}
    if hasattr(model, "attempts") and not retry:
        rows = rows.filter(attempts__lt=max_attempts or settings.LANDMARKS_TASK_MAX_ATTEMPTS)
        updates["attempts"] = F("attempts") + 1
    return rows.update(**updates) == 1


def stale_claim(model: type[CatalogImage] | type[SearchQuery] | type[ReindexJob], pk: int, *, busy: str):  # type: ignore[no-untyped-def]
    """The row as a queryset if it is ``busy`` under a claim without recent progress."""
    stale = timezone.now() - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS)
    return model.objects.filter(pk=pk, status=busy).filter(Q(claimed_at__lt=stale) | Q(claimed_at__isnull=True))


# Which row's ``queued_at`` a task's message stamps (by task name).
_QUEUED_ROWS = {
    tasks.image_index_task.name: CatalogImage,
    tasks.search_execute_task.name: SearchQuery,
    tasks.reindex_run_task.name: ReindexJob,
}


def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import RedisError

    return (KombuOperationalError, RedisError, OSError)


# After a failed publish, skip the broker for this long: a bulk import during an outage
# stores its photos at full speed instead of waiting out a timeout per photo.
BROKER_BACKOFF_SECONDS = 5.0

_broker_down_until = 0.0


def send(task: Task, object_id: int, *, countdown: float | None = None) -> bool:
    """Publish a task now; False (logged) when the broker cannot be reached.

    Nothing is lost then: the row keeps ``queued_at`` empty and the periodic sweep
    (``retrieval.recovery.work_sweep``) sends it once the broker is back.
    """
    global _broker_down_until

    if time.monotonic() < _broker_down_until:
        return False
    try:
        task.apply_async((object_id,), countdown=countdown)
    except _broker_errors() as exc:
        _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
        logger.warning("could not queue %s(%s); the sweep will once the broker is back: %s", task.name, object_id, exc)
        return False
    model = _QUEUED_ROWS.get(task.name)
    if model is not None:
        model.objects.filter(pk=object_id).update(queued_at=timezone.now())
    return True


def enqueue(task: Task, object_id: int, *, countdown: float | None = None) -> None:
    """Send the task after the current transaction commits (a worker never sees a row
    that does not exist yet)."""
    transaction.on_commit(lambda: send(task, object_id, countdown=countdown))
