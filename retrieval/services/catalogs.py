"""Catalogs and landmarks: creation, the extractor a catalog uses, and its database-side
augmentation (DBA)."""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from retrieval import tasks
from retrieval.errors import InvalidInput
from retrieval.models import Catalog, CatalogImage, ImageDescriptor, Landmark, catalog_name_validator
from retrieval.services import queueing

logger = logging.getLogger(__name__)


def catalog_get_or_create(*, name: str) -> Catalog:
    try:
        catalog_name_validator(name)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid catalog name {name!r}: {exc.messages[0]}") from None
    catalog, _ = Catalog.objects.get_or_create(name=name)
    return catalog


def landmark_get_or_create(*, catalog: Catalog, name: str | None) -> Landmark | None:
    name = (name or "").strip()
    if not name:
        return None
    landmark, _ = Landmark.objects.get_or_create(catalog=catalog, name=name[:200])
    return landmark


def catalog_extractor_spec(*, catalog: Catalog) -> str:
    """The extractor that indexes this catalog's new photos."""
    return catalog.extractor_spec or settings.LANDMARKS_EXTRACTOR


def extractor_buildable(spec: str) -> bool:
    from retrieval.vision.extractors import UnknownModelError, check_spec

    try:
        check_spec(spec, cache_dir=settings.MODEL_DIR)
    except UnknownModelError:
        return False
    return True


def catalog_request_augmentation(*, catalog_id: int) -> None:
    """Schedule a DBA refresh of the catalog (once; it waits for indexing to finish)."""
    if settings.LANDMARKS_DBA_NEIGHBOURS <= 1:
        return
    if Catalog.objects.filter(pk=catalog_id, augment_pending=False).update(augment_pending=True):
        transaction.on_commit(lambda: _send_augmentation(catalog_id))


def _send_augmentation(catalog_id: int) -> None:
    if not queueing.send(tasks.catalog_augment_task, catalog_id, countdown=settings.LANDMARKS_AUGMENT_DELAY_SECONDS):
        # Withdraw the request: the sweep asks again once the broker is back.
        Catalog.objects.filter(pk=catalog_id).update(augment_pending=False)


def catalog_augment(*, catalog_id: int) -> int:
    """Recompute the database-side augmented descriptors of a catalog (Celery worker).

    Waits (re-schedules itself) while images of the catalog are still being indexed, so
    a bulk import is augmented once at its end. Returns the number of rows updated.
    """
    from retrieval.vision.expansion import database_side_augmentation

    catalog = Catalog.objects.filter(pk=catalog_id).select_related("active_model").first()
    if catalog is None:
        return 0
    busy = catalog.images.filter(status__in=[CatalogImage.Status.PENDING, CatalogImage.Status.PROCESSING])
    if busy.exists():
        transaction.on_commit(lambda: _send_augmentation(catalog_id))
        return 0
    # The sweep may send this task too (after a broker outage): only one run takes it.
    if not Catalog.objects.filter(pk=catalog_id, augment_pending=True).update(augment_pending=False):
        return 0
    updated = 0
    for model_id in ImageDescriptor.objects.filter(catalog=catalog).values_list("model_id", flat=True).distinct():
        rows = list(ImageDescriptor.objects.filter(catalog=catalog, model_id=model_id).values_list("pk", "embedding"))
        if not rows:
            continue
        matrix = np.stack([np.asarray(vector, np.float32) for _, vector in rows])
        augmented = database_side_augmentation(
            matrix, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS, alpha=settings.LANDMARKS_EXPANSION_ALPHA
        )
        objects = [ImageDescriptor(pk=pk, embedding_aug=augmented[i]) for i, (pk, _) in enumerate(rows)]
        with transaction.atomic():
            ImageDescriptor.objects.bulk_update(objects, ["embedding_aug"], batch_size=500)
        updated += len(objects)
    Catalog.objects.filter(pk=catalog_id).update(augmented_at=timezone.now())
    logger.info("catalog %s: augmented %d descriptors", catalog.name, updated)
    return updated
