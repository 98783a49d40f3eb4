"""Start a background reindex job and follow its progress."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import selectors, services
from retrieval.management.jobs import follow_job


class Command(BaseCommand):
    help = (
        "Re-extract catalog images with each catalog's feature model in a Celery worker. "
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
        if not no_wait:
            follow_job(job, stdout=self.stdout, timeout=timeout)
