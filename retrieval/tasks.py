"""Celery tasks: thin wrappers that take ids and call one service each."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, retry_jitter=True, max_retries=5)
def index_image(image_id: int) -> None:
    from retrieval.services import image_index

    image_index(image_id=image_id)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def search_run(query_id: int) -> None:
    from retrieval.services import search_execute

    search_execute(query_id=query_id)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def catalog_augment(catalog_id: int) -> None:
    from retrieval.services import catalog_augment as augment

    augment(catalog_id=catalog_id)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def reindex_run(job_id: int) -> None:
    from retrieval.services import reindex_run as run

    run(job_id=job_id)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def search_purge_expired() -> int:
    from retrieval.services import search_purge_expired as purge

    return purge()
