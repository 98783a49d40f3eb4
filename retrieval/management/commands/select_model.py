"""Switch a catalog to another feature extractor (starts a background reindex)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import selectors
from retrieval.management.jobs import select_model_and_follow


class Command(BaseCommand):
    help = (
        "Use SPEC (e.g. effnet-lite0-gem+rootsift) for a catalog. Its images are re-extracted "
        "in a worker; searches use the old model until the job finishes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("spec")
        parser.add_argument("--catalog", required=True)
        parser.add_argument("--no-wait", action="store_true")
        parser.add_argument("--timeout", type=float, default=24 * 3600.0)

    def handle(self, *args: Any, spec: str, catalog: str, no_wait: bool, timeout: float, **options: Any) -> None:
        target = selectors.catalog_get(name=catalog)
        if target is None:
            raise CommandError(f"no catalog named {catalog!r}")
        select_model_and_follow(target, spec, stdout=self.stdout, no_wait=no_wait, timeout=timeout)
