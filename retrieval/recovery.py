"""The periodic sweep that finishes what faults left behind (celery beat, every
LANDMARKS_SWEEP_SECONDS; also safe to call by hand).

A row's task can be lost in three ways, each seen in the row itself:

- it never reached the broker (the broker was down): ``pending`` with ``queued_at``
  empty -> queue it;
- its message was lost with the broker's data: ``pending``, queued long ago, and its
  queue is empty -> queue it again;
- its worker was killed while working: ``processing``/``running`` with a claim that shows
  no progress for LANDMARKS_TASK_LEASE_SECONDS -> queue it again; the new task takes the
  stale claim over (``services.queueing.claim``), and gives up after LANDMARKS_TASK_MAX_ATTEMPTS.

Sending a task twice is harmless: every task claims its row before working.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from celery import Task
from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from retrieval import services, tasks
from retrieval.models import Catalog, CatalogImage, ImageDescriptor, ReindexJob, SearchQuery
from retrieval.services import queueing
from retrieval.services.catalogs import send_augmentation

logger = logging.getLogger(__name__)

# A row younger than this may still be between its commit and its on_commit send.
QUEUE_GRACE = timedelta(seconds=10)
# Rows sent per kind and sweep, so that one sweep never floods the broker.
BATCH = 1000


@dataclasses.dataclass
class SweepReport:
    images: int = 0
    searches: int = 0
    searches_given_up: int = 0
    reindex_jobs: int = 0
    augmentations: int = 0

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


def work_sweep(*, now: datetime | None = None) -> SweepReport:
    """Queue again every lost task; fail searches nobody will wait for any more."""
    now = now or timezone.now()
    lease = now - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS)
    report = SweepReport()

    give_up = now - timedelta(seconds=settings.LANDMARKS_SEARCH_GIVE_UP_SECONDS)
    # A search still being worked on (a fresh claim) is left to finish.
    unfinished = Q(status=SearchQuery.Status.PENDING) | (
        Q(status=SearchQuery.Status.RUNNING) & (Q(claimed_at__lt=lease) | Q(claimed_at__isnull=True))
    )
    report.searches_given_up = SearchQuery.objects.filter(unfinished, created_at__lt=give_up).update(
        status=SearchQuery.Status.FAILED,
        error="The search did not finish in time; please try again.",
        finished_at=now,
        claimed_by="",
        claimed_at=None,
    )
    report.searches = _resend(
        SearchQuery.objects.all(), tasks.search_execute_task, "search", busy=SearchQuery.Status.RUNNING, now=now, lease=lease
    )
    report.images = _resend(
        CatalogImage.objects.all(), tasks.image_index_task, "index", busy=CatalogImage.Status.PROCESSING, now=now, lease=lease
    )
    report.reindex_jobs = _resend(
        ReindexJob.objects.all(), tasks.reindex_run_task, "index", busy=ReindexJob.Status.RUNNING, now=now, lease=lease
    )
    report.augmentations = _request_stale_augmentations()
    if report:
        logger.warning("sweep: %s", report)
    return report


def _resend(rows: QuerySet, task: Task, queue: str, *, busy: str, now: datetime, lease: datetime) -> int:
    """Send ``task`` again for the rows whose task is lost; returns how many."""
    never_queued = Q(status="pending", queued_at__isnull=True, created_at__lt=now - QUEUE_GRACE)
    # Not again while the task sent for it may still wait its turn in the queue.
    not_sent_lately = Q(queued_at__isnull=True) | Q(queued_at__lt=lease)
    abandoned = Q(status=busy) & (Q(claimed_at__lt=lease) | Q(claimed_at__isnull=True)) & not_sent_lately
    lost = never_queued | abandoned
    if _queue_is_empty(queue):
        lost |= Q(status="pending", queued_at__lt=lease)
    sent = 0
    for pk in rows.filter(lost).order_by("pk").values_list("pk", flat=True)[:BATCH]:
        if not queueing.send(task, pk):
            break  # the broker is still away; the next sweep tries again
        sent += 1
    return sent


def _queue_is_empty(queue: str) -> bool:
    """Whether the broker holds no message for ``queue`` (False when unknown)."""
    from kombu.exceptions import ChannelError

    from searchsite.celery import app

    try:
        with app.connection_for_read() as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count == 0
    except ChannelError:  # Redis deletes an empty list: "no such queue" means empty
        return True
    except Exception as exc:  # noqa: BLE001 - any broker trouble means "do not know"
        logger.info("could not read the length of queue %s: %s", queue, exc)
        return False


def stale_augmentations() -> QuerySet[Catalog]:
    """Catalogs with descriptors newer than their last DBA refresh and none requested,
    leaving out those still indexing (their own request follows the import)."""
    busy = CatalogImage.objects.filter(
        catalog=OuterRef("pk"), status__in=[CatalogImage.Status.PENDING, CatalogImage.Status.PROCESSING]
    )
    # The catalog's newest row by one index probe (descriptor_catalog_updated): this runs
    # every LANDMARKS_SWEEP_SECONDS and must not read a large catalog's rows (bench/README.md).
    latest = ImageDescriptor.objects.filter(catalog=OuterRef("pk")).order_by("-updated_at").values("updated_at")[:1]
    changed = Q(latest__gt=F("augmented_at")) | Q(augmented_at__isnull=True, latest__isnull=False)
    return (
        Catalog.objects.filter(augment_pending=False)
        .annotate(latest=Subquery(latest))
        .filter(changed)
        .exclude(Exists(busy))
    )


def _request_stale_augmentations() -> int:
    """Ask for a DBA refresh of catalogs with descriptors newer than their last one (a
    refresh lost to a fault); catalogs still indexing are left to their own request."""
    if settings.LANDMARKS_DBA_NEIGHBOURS <= 1:
        return 0
    count = 0
    for catalog_id in stale_augmentations().values_list("pk", flat=True):
        services.catalog_request_augmentation(catalog_id=catalog_id)
        count += 1
    # A request whose task was lost (a broker restart, or the process killed between its
    # commit and the send) stays pending; its task, sent again, runs once.
    wait = timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS + settings.LANDMARKS_AUGMENT_DELAY_SECONDS)
    lost = Catalog.objects.filter(augment_pending=True).filter(
        Q(augment_requested_at__lt=timezone.now() - wait) | Q(augment_requested_at__isnull=True)
    )
    for catalog_id in lost.values_list("pk", flat=True):
        send_augmentation(catalog_id)
        count += 1
    return count
