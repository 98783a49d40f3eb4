"""Rebuild a catalog's database-side augmentation (DBA) in full, in a worker."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import selectors, services
from retrieval.models import Catalog


class Command(BaseCommand):
    help = (
        "Recompute every augmented descriptor of a catalog (new photos are augmented "
        "incrementally on their own; this is the full rebuild, e.g. after changing "
        "LANDMARKS_DBA_NEIGHBOURS). Runs in a Celery worker unless --here."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--catalog", required=True, help="catalog name")
        parser.add_argument("--here", action="store_true", help="run in this process instead of a worker")
        parser.add_argument("--no-wait", action="store_true", help="queue the rebuild and return")
        parser.add_argument("--timeout", type=float, default=24 * 3600.0)

    def handle(self, *args: Any, catalog: str, here: bool, no_wait: bool, timeout: float, **options: Any) -> None:
        target = selectors.catalog_get(name=catalog)
        if target is None:
            raise CommandError(f"no catalog named {catalog!r}")
        if settings.LANDMARKS_DBA_NEIGHBOURS <= 1:
            raise CommandError("augmentation is switched off (LANDMARKS_DBA_NEIGHBOURS <= 1)")
        if here:
            Catalog.objects.filter(pk=target.pk).update(augment_pending=True)
            written = services.catalog_augment(catalog_id=target.pk, full=True)
            if not Catalog.objects.get(pk=target.pk).augmented_at:
                raise CommandError(
                    f"catalog {target.name} still has images being indexed; run again when they are done"
                )
            self.stdout.write(f"catalog {target.name}: {written} descriptors augmented")
            return
        services.catalog_rebuild_augmentation(catalog=target)
        self.stdout.write(f"full augmentation of {target.name} queued")
        if no_wait:
            return
        deadline = time.monotonic() + timeout
        while not Catalog.objects.get(pk=target.pk).augmented_at:
            if time.monotonic() > deadline:
                raise CommandError(f"not done after {timeout:.0f} s; is a worker running?")
            time.sleep(0.5)
        self.stdout.write(f"catalog {target.name}: augmentation rebuilt")
