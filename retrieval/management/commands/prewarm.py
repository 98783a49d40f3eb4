"""Read the tables and indexes searches use into PostgreSQL's cache (``pg_prewarm``)."""

from __future__ import annotations

import json as _json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import services
from retrieval.errors import RetrievalError
from retrieval.management.commands.catalog_stats import human_bytes


class Command(BaseCommand):
    help = (
        "Read the search tables and their indexes (the HNSW indexes last) into PostgreSQL's "
        "shared buffers, as the search worker does when it starts: the first searches of a "
        "large catalog after a restart then do not wait on the disk."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the relations read as JSON")

    def handle(self, *args: Any, json: bool, **options: Any) -> None:
        start = time.perf_counter()
        try:
            relations = services.search_working_set_prewarm()
        except RetrievalError as exc:
            raise CommandError(exc.message) from None
        seconds = time.perf_counter() - start
        if json:
            self.stdout.write(_json.dumps({"relations": [vars(r) for r in relations], "seconds": round(seconds, 2)}))
            return
        for relation in relations:
            self.stdout.write(f"{relation.name}: {human_bytes(relation.bytes)} ({relation.blocks} blocks)")
        total = sum(r.bytes for r in relations)
        self.stdout.write(f"{len(relations)} relations, {human_bytes(total)} in {seconds:.1f} s")
