"""Start a background reindex job and follow its progress."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval import selectors, services
from retrieval.models import ReindexJob


class Command(BaseCommand):
    help = (
        "Re-extract catalog images with the current feature model in a Celery worker. "
        "Searches keep using the old rows until the job finishes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--catalog", help="only this catalog (default: all)")
        parser.add_argument("--stale-only", action="store_true", help="only images with no row from the current model")
        parser.add_argument("--no-wait", action="store_true", help="start the job and return")
        parser.add_argument("--timeout", type=float, default=24 * 3600.0)

    def handle(self, *args: Any, catalog: str | None, stale_only: bool, no_wait: bool, timeout: float, **options: Any) -> None:
        target = None
        if catalog:
            target = selectors.catalog_get(name=catalog)
            if target is None:
                raise CommandError(f"no catalog named {catalog!r}")
        job = services.reindex_start(catalog=target, stale_only=stale_only)
        self.stdout.write(f"reindex job {job.pk} queued")
        if no_wait:
            return
        deadline = time.monotonic() + timeout
        with tqdm(desc=f"reindex job {job.pk}", unit="img") as bar:
            while True:
                job.refresh_from_db()
                bar.total = job.total or None
                bar.n = job.processed
                bar.refresh()
                if job.status in (ReindexJob.Status.DONE, ReindexJob.Status.FAILED):
                    break
                if time.monotonic() > deadline:
                    raise CommandError(f"job {job.pk} still {job.status} after {timeout:.0f} s; is a worker running?")
                time.sleep(0.5)
        if job.status == ReindexJob.Status.FAILED:
            raise CommandError(f"reindex job {job.pk} failed: {job.error}")
        self.stdout.write(f"reindex job {job.pk} done: {job.processed} processed, {job.failed} failed, model {job.model}")
