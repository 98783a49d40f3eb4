"""Training data from a catalog (``manage.py train_model``): its labelled photos, decoded.

Reads only; no TensorFlow. A photo counts when it has a landmark and is not ``failed``,
whatever its index status (the stored file is read directly, so a freshly imported
catalog can be trained on before any worker has indexed it). Landmarks with fewer than
``min_per_landmark`` usable photos are left out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable

import numpy as np

from retrieval.errors import InvalidInput, RetrievalError
from retrieval.models import Catalog, CatalogImage
from retrieval.services import image_decode

logger = logging.getLogger(__name__)

MIN_LANDMARKS = 2
MIN_PER_LANDMARK = 2


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """Attributes:
    images: (H, W, 3) uint8 RGB photos, each shrunk to at most ``max_side``.
    labels: the landmark name of each photo.
    image_ids: the CatalogImage id of each photo.
    skipped: "id: reason" for photos that could not be read.
    dropped_landmarks: landmarks left out for having too few photos.
    """

    images: list[np.ndarray]
    labels: list[str]
    image_ids: list[int]
    skipped: list[str]
    dropped_landmarks: list[str]


def catalog_training_set(
    *,
    catalog: Catalog,
    max_side: int,
    min_per_landmark: int = MIN_PER_LANDMARK,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingSet:
    """The catalog's labelled photos, decoded like uploads and shrunk to ``max_side``.

    Raises:
        InvalidInput: fewer than two landmarks in the catalog, or fewer than two
            landmarks with ``min_per_landmark`` readable photos.
    """
    import cv2

    rows = list(
        CatalogImage.objects.filter(catalog=catalog, landmark__isnull=False)
        .exclude(status=CatalogImage.Status.FAILED)
        .values_list("pk", "file", "landmark__name")
        .order_by("pk")
    )
    names = {name for _, _, name in rows}
    if len(names) < MIN_LANDMARKS:
        raise InvalidInput(
            f"catalog {catalog.name!r} has labelled photos of {len(names)} landmark(s); training needs at least "
            f"{MIN_LANDMARKS} (import photos in one folder per landmark)"
        )
    storage = CatalogImage._meta.get_field("file").storage
    images, labels, ids, skipped = [], [], [], []
    for done, (pk, path, name) in enumerate(rows, start=1):
        try:
            with storage.open(path, "rb") as handle:
                rgb = image_decode(data=handle.read())
        except (OSError, RetrievalError) as exc:
            skipped.append(f"{pk}: {getattr(exc, 'message', exc)}")
            continue
        factor = max_side / max(rgb.shape[:2])
        if factor < 1:
            size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        images.append(rgb)
        labels.append(name)
        ids.append(pk)
        if progress is not None:
            progress(done, len(rows))
    counts = Counter(labels)
    dropped = sorted(name for name in names if counts[name] < min_per_landmark)
    if len(names) - len(dropped) < MIN_LANDMARKS:
        raise InvalidInput(
            f"too few labelled photos in catalog {catalog.name!r}: training needs at least {MIN_LANDMARKS} landmarks "
            f"with {min_per_landmark} readable photos each; found {dict(sorted(counts.items()))}"
        )
    keep = [i for i, label in enumerate(labels) if label not in dropped]
    return TrainingSet(
        images=[images[i] for i in keep],
        labels=[labels[i] for i in keep],
        image_ids=[ids[i] for i in keep],
        skipped=skipped,
        dropped_landmarks=dropped,
    )
