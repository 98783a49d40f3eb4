"""Learning the product quantiser that compacts stored local descriptors
(``LANDMARKS_LOCAL_CODEBOOK``, ``vision/compact.py``) from a catalog's own photos."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from django.conf import settings

from retrieval import selectors
from retrieval.errors import InvalidInput
from retrieval.models import Catalog
from retrieval.vision import compact
from retrieval.vision.features import FeatureFormatError

logger = logging.getLogger(__name__)

# k-means needs a few dozen points per centroid; fewer and faiss warns and the codebook is poor.
MIN_CELLS_PER_CENTROID = 40


@dataclasses.dataclass(frozen=True)
class TrainedCodebook:
    codebook: compact.Codebook
    images: int
    cells: int
    model: str


def codebook_train(
    *, catalog: Catalog, spec: str, images: int = 500, max_cells: int = 400_000, seed: int = 0
) -> TrainedCodebook:
    """Learn a product quantiser (``spec``: ``pq30``, ``opq24``, ...) on the stored local
    features of up to ``images`` indexed photos of ``catalog`` (its serving model's rows),
    at most ``max_cells`` cells drawn evenly. Raises InvalidInput for a bad spec or too few
    cells."""
    try:
        parsed = compact.CodebookSpec.parse(spec)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    model, blobs = selectors.local_feature_sample(catalog=catalog, limit=images)
    if model is None:
        raise InvalidInput(f"catalog {catalog.name} has no indexed photos to learn from")
    if not blobs:
        raise InvalidInput(f"catalog {catalog.name} has no stored features of {model} to learn from")
    codec = compact.LocalCodec(library=settings.MODEL_DIR / "codebooks")
    try:
        cells = np.concatenate([codec.decode(blob).descriptors for blob in blobs])
    except FeatureFormatError as exc:
        raise InvalidInput(f"stored features of {catalog.name} cannot be read: {exc}") from None
    needed = MIN_CELLS_PER_CENTROID * 256
    if len(cells) < needed:
        raise InvalidInput(f"{len(cells)} local features in {len(blobs)} photos; a codebook needs at least {needed}")
    if cells.shape[1] % parsed.subquantizers:
        raise InvalidInput(f"{parsed.subquantizers} sub-quantisers do not divide {cells.shape[1]} dimensions")
    if len(cells) > max_cells:
        cells = cells[np.random.default_rng(seed).choice(len(cells), max_cells, replace=False)]
    logger.info("learning %s on %d cells of %d photos of %s (%s)", parsed, len(cells), len(blobs), catalog.name, model)
    codebook = compact.train_codebook(cells, parsed, seed=seed)
    return TrainedCodebook(codebook=codebook, images=len(blobs), cells=len(cells), model=str(model))
