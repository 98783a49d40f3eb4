"""Convert the shipped weights into the model cache and register the feature model."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Prepare the configured feature extractor (weights conversion, checksum, index)."

    def handle(self, *args: Any, **options: Any) -> None:
        from retrieval.extraction import get_extractor
        from retrieval.services import feature_model_ensure

        start = time.perf_counter()
        extractor = get_extractor()
        model = feature_model_ensure(extractor=extractor)
        self.stdout.write(f"feature model {model} ready ({time.perf_counter() - start:.1f} s)")
