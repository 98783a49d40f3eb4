"""Convert the shipped weights into the model cache and register the feature model."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Prepare the configured feature extractor (weights conversion and checksum, model row, HNSW index)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--weights-only", action="store_true", help="only convert the weights (no database needed; Docker build)"
        )

    def handle(self, *args: Any, weights_only: bool, **options: Any) -> None:
        from retrieval.extraction import get_extractor

        start = time.perf_counter()
        extractor = get_extractor()
        if weights_only:
            self.stdout.write(f"weights for {extractor.model_name} ready ({time.perf_counter() - start:.1f} s)")
            return
        from retrieval.services import feature_model_ensure

        model = feature_model_ensure(extractor=extractor)
        self.stdout.write(f"feature model {model} ready ({time.perf_counter() - start:.1f} s)")
