"""Reindexing: re-extracting catalogs with another model in the background."""

from __future__ import annotations

import dataclasses
import logging
import uuid

from django.conf import settings
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from retrieval import selectors, tasks
from retrieval.errors import InvalidInput
from retrieval.models import Catalog, CatalogImage, FeatureModel, ImageDescriptor, ReindexJob
from retrieval.services import catalogs, indexing, queueing
from retrieval.vision.extractors.base import Extractor

logger = logging.getLogger(__name__)


def catalog_select_model(*, catalog: Catalog, spec: str) -> ReindexJob:
    """Switch a catalog to another extractor: new rows are made in the background and
    searches keep using the current ones until the reindex job finishes."""
    from retrieval.vision.extractors import UnknownModelError, check_spec

    try:
        check_spec(spec, cache_dir=settings.MODEL_DIR)
    except UnknownModelError as exc:
        raise InvalidInput(str(exc)) from None
    Catalog.objects.filter(pk=catalog.pk).update(extractor_spec=spec)
    catalog.extractor_spec = spec
    return reindex_start(catalog=catalog, stale_only=True)


def reindex_start(*, catalog: Catalog | None = None, stale_only: bool = False) -> ReindexJob:
    """Create a reindex job and enqueue it; the worker resolves the current model."""
    job = ReindexJob.objects.create(catalog=catalog, stale_only=stale_only)
    queueing.enqueue(tasks.reindex_run_task, job.pk)
    return job


def reindex_run(*, job_id: int, task_id: str = "") -> ReindexJob | None:
    """Re-extract the job's images with the current model (Celery worker).

    New descriptor rows are written next to the old model's; each catalog switches its
    ``active_model`` only when every image has been processed. Every image renews the
    job's claim; a job whose worker died is taken over by the sweep's next task, which
    skips the images already re-extracted since the job started.
    """
    task_id = task_id or uuid.uuid4().hex
    if not queueing.claim(
        ReindexJob, job_id, task_id=task_id, busy=ReindexJob.Status.RUNNING, done=queueing.JOB_DONE, resume_own=False
    ):
        return selectors.reindex_job_get(job_id=job_id)
    ReindexJob.objects.filter(pk=job_id).update(started_at=Coalesce(F("started_at"), timezone.now()))
    job = ReindexJob.objects.select_related("catalog").get(pk=job_id)
    try:
        held = _reindex(job, task_id=task_id)
        if held is not None:
            ReindexJob.objects.filter(pk=job.pk, claimed_by=task_id).update(
                status=ReindexJob.Status.FAILED if held else ReindexJob.Status.DONE,
                error="; ".join(held),
                finished_at=timezone.now(),
                claimed_by="",
                claimed_at=None,
            )
    except queueing.DATABASE_ERRORS:
        raise
    except Exception as exc:
        logger.exception("reindex job %s failed", job_id)
        ReindexJob.objects.filter(pk=job.pk, claimed_by=task_id).update(
            status=ReindexJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now(),
            claimed_by="", claimed_at=None,
        )  # fmt: skip
    job.refresh_from_db()
    return job


@dataclasses.dataclass
class _Step:
    """One catalog of a reindex job: its extractor, model and image ids."""

    catalog: Catalog
    spec: str
    extractor: Extractor
    model: FeatureModel
    image_ids: list[int]


def _reindex_plan(job: ReindexJob) -> list[_Step]:
    from retrieval.extraction import get_extractor

    steps = []
    for catalog in [job.catalog] if job.catalog else list(Catalog.objects.order_by("pk")):
        spec = catalogs.catalog_extractor_spec(catalog=catalog)
        extractor = get_extractor(spec)
        model = indexing.feature_model_ensure(extractor=extractor)
        images = (
            selectors.stale_images(model=model, catalog=catalog)
            if job.stale_only
            else CatalogImage.objects.filter(catalog=catalog)
        )
        steps.append(_Step(catalog, spec, extractor, model, list(images.order_by("pk").values_list("pk", flat=True))))
    return steps


def _reindex(job: ReindexJob, *, task_id: str) -> list[str] | None:
    """Run the job's plan. Returns why catalogs kept their serving model (empty: every
    catalog switched), or None when another task took the job over meanwhile."""
    plan = _reindex_plan(job)
    if job.total == 0:
        ReindexJob.objects.filter(pk=job.pk).update(
            model=plan[-1].model if plan else None, total=sum(len(step.image_ids) for step in plan)
        )
    processed, failed = job.processed, job.failed
    held: list[str] = []
    for step in plan:
        # A resumed job: what was re-extracted since it started is done already.
        done = set(
            ImageDescriptor.objects.filter(model=step.model, image_id__in=step.image_ids, updated_at__gte=job.started_at)
            .values_list("image_id", flat=True)
        ) if processed else set()  # fmt: skip
        for image in CatalogImage.objects.filter(pk__in=step.image_ids).order_by("pk").iterator(chunk_size=100):
            if image.pk in done:
                continue
            if not _reindex_image(image=image, extractor=step.extractor, model=step.model, task_id=task_id):
                failed += 1
            processed += 1
            if not ReindexJob.objects.filter(pk=job.pk, claimed_by=task_id).update(
                processed=processed, failed=failed, claimed_at=timezone.now()
            ):
                logger.warning("reindex job %s was taken over by another task; this one stops", job.pk)
                return None
        reason = _catalog_switch(step)
        if reason:
            logger.warning("reindex job %s: %s", job.pk, reason)
            held.append(reason)
    return held


def _catalog_switch(step: _Step) -> str:
    """Serve ``step.catalog`` with ``step.model`` once it has all the rows the current
    model has; returns why not ("" when switched or nothing to switch).

    Held while a photo that the serving model has a row for has none of the new model's
    (it failed under the new one: a switch would drop it from every search), and when
    the catalog was given another extractor since the job was planned (a later job
    switches it)."""
    catalog = Catalog.objects.get(pk=step.catalog.pk)
    if catalog.active_model_id in (None, step.model.pk):
        Catalog.objects.filter(pk=catalog.pk).update(active_model=step.model)
        catalogs.catalog_request_augmentation(catalog_id=catalog.pk)
        return ""
    if catalogs.catalog_extractor_spec(catalog=catalog) != step.spec:
        return f"catalog {catalog.name} now asks for {catalogs.catalog_extractor_spec(catalog=catalog)}; not switched to {step.model}"
    rows = ImageDescriptor.objects.filter(catalog=catalog)
    renewed = rows.filter(model=step.model).values("image_id")
    missing = rows.filter(model_id=catalog.active_model_id).exclude(image_id__in=renewed).count()
    if missing:
        return (
            f"{missing} photos of catalog {catalog.name} failed with {step.model}; it keeps {catalog.active_model}"
            " (the reasons are on the photos; reindex again to retry)"
        )
    Catalog.objects.filter(pk=catalog.pk, active_model_id=catalog.active_model_id).update(active_model=step.model)
    catalogs.catalog_request_augmentation(catalog_id=catalog.pk)
    return ""


def _reindex_image(*, image: CatalogImage, extractor: Extractor, model: FeatureModel, task_id: str) -> bool:
    """Re-extract one image under the job's claim; an image that was in flight when the
    worker died LANDMARKS_TASK_MAX_ATTEMPTS times fails instead of killing it again."""
    claimed = CatalogImage.objects.filter(pk=image.pk, attempts__lt=settings.LANDMARKS_TASK_MAX_ATTEMPTS).update(
        status=CatalogImage.Status.PROCESSING, claimed_by=task_id, claimed_at=timezone.now(), attempts=F("attempts") + 1
    )
    if not claimed:
        indexing.image_fail(image, "Indexing was started several times and never finished (the worker died each time).")
        return False
    return indexing.image_extract(image=image, extractor=extractor, model=model)
