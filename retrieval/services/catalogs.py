"""Catalogs and landmarks: creation, the extractor a catalog uses, and scheduling its
database-side augmentation (DBA; the work itself: ``services.augmentation``)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from retrieval import tasks
from retrieval.errors import Conflict, InvalidInput
from retrieval.models import Catalog, Landmark, catalog_name_validator
from retrieval.services import queueing

logger = logging.getLogger(__name__)


def _check_catalog_name(name: str) -> None:
    try:
        catalog_name_validator(name)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid catalog name {name!r}: {exc.messages[0]}") from None


def catalog_get_or_create(*, name: str) -> Catalog:
    _check_catalog_name(name)
    catalog, _ = Catalog.objects.get_or_create(name=name)
    return catalog


def catalog_create(*, name: str, description: str = "", public: bool = True) -> Catalog:
    """A new catalog; a name in use is a :class:`Conflict` (the API's 409)."""
    _check_catalog_name(name)
    try:
        with transaction.atomic():
            return Catalog.objects.create(name=name, description=description, public=public)
    except IntegrityError:
        raise Conflict(f"A catalog named {name} exists already.") from None


def catalog_update(*, catalog: Catalog, description: str | None = None, public: bool | None = None) -> Catalog:
    """Change what describes a catalog and who may search it (None: unchanged)."""
    fields = {"description": description, "public": public}
    changed = [field for field, value in fields.items() if value is not None]
    for field in changed:
        setattr(catalog, field, fields[field])
    if changed:
        catalog.save(update_fields=changed)
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
    if Catalog.objects.filter(pk=catalog_id, augment_pending=False).update(
        augment_pending=True, augment_requested_at=timezone.now()
    ):
        transaction.on_commit(lambda: send_augmentation(catalog_id))


def send_augmentation(catalog_id: int) -> None:
    """Send the catalog's DBA refresh (in LANDMARKS_AUGMENT_DELAY_SECONDS), stamping when."""
    if not queueing.send(tasks.catalog_augment_task, catalog_id, countdown=settings.LANDMARKS_AUGMENT_DELAY_SECONDS):
        # Withdraw the request: the sweep asks again once the broker is back.
        Catalog.objects.filter(pk=catalog_id).update(augment_pending=False)
        return
    Catalog.objects.filter(pk=catalog_id, augment_pending=True).update(augment_requested_at=timezone.now())


def catalog_rebuild_augmentation(*, catalog: Catalog) -> None:
    """Schedule a full DBA rebuild (``manage.py augment``): forgetting when the catalog was
    last augmented makes the next run augment every row, not only the changed ones."""
    Catalog.objects.filter(pk=catalog.pk).update(augmented_at=None)
    catalog_request_augmentation(catalog_id=catalog.pk)
