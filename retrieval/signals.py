"""Stored files follow their rows: whatever deletes a catalog photo or a search (the
services, the admin's bulk delete, a catalog's cascade), its files go once the deletion
commits (a rollback keeps a working row)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from retrieval.models import CatalogImage, SearchQuery
from retrieval.services import ingest, thumbnails


@receiver(post_delete, sender=CatalogImage)
def _catalog_image_files(sender: type[CatalogImage], instance: CatalogImage, **_: Any) -> None:
    # The thumbnail by its name, not the field: the worker may write it after the row was read.
    names = [instance.file.name, thumbnails.thumbnail_name(image=instance)]
    storage = instance.file.storage
    transaction.on_commit(lambda: ingest.stored_files_delete(storage=storage, names=names))


@receiver(post_delete, sender=SearchQuery)
def _search_query_files(sender: type[SearchQuery], instance: SearchQuery, **_: Any) -> None:
    names = [instance.image.name]
    storage = instance.image.storage
    transaction.on_commit(lambda: ingest.stored_files_delete(storage=storage, names=names))
