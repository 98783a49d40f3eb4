"""Learn the product quantiser that stores local descriptors in ~32 kB a photo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import selectors
from retrieval.errors import InvalidInput
from retrieval.services.codebooks import codebook_train


class Command(BaseCommand):
    help = (
        "Learn a product quantiser for the local descriptors from a catalog's indexed photos "
        "and write it to a file; set LANDMARKS_LOCAL_CODEBOOK to that file (with, for the "
        "dense model, LANDMARKS_DENSE_FINE_CELLS=750 and LANDMARKS_DENSE_COARSE_CELLS=250 "
        "for ~32 kB a photo) and reindex."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--catalog", required=True, help="catalog whose photos to learn from")
        parser.add_argument("--spec", default="pq30", help="pq<M> or opq<M>: M bytes a descriptor (default pq30)")
        parser.add_argument("--images", type=int, default=500, help="photos to sample (default 500)")
        parser.add_argument(
            "--out", type=Path, help="file to write (default: var/models/codebooks/<catalog>-<spec>.npz)"
        )
        parser.add_argument("--seed", type=int, default=0)

    def handle(
        self, *args: Any, catalog: str, spec: str, images: int, out: Path | None, seed: int, **options: Any
    ) -> None:
        target = selectors.catalog_get(name=catalog)
        if target is None:
            raise CommandError(f"no catalog named {catalog!r}")
        if images < 1:
            raise CommandError("--images must be at least 1")
        try:
            trained = codebook_train(catalog=target, spec=spec, images=images, seed=seed)
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        path = out or settings.MODEL_DIR / "codebooks" / f"{target.name}-{spec}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        trained.codebook.save(path)
        self.stdout.write(
            f"{spec} learned on {trained.cells} cells of {trained.images} photos ({trained.model}): {path}\n"
            f"use it with LANDMARKS_LOCAL_CODEBOOK={path.resolve()}, then `manage.py reindex`"
        )
