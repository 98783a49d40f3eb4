"""Ingest: validating an upload from its header and storing a catalog photo."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.db import IntegrityError, transaction
from django.utils import timezone

from retrieval import tasks
from retrieval.errors import DuplicateImage, PayloadTooLarge, RetrievalError, from_image_error
from retrieval.models import Catalog, CatalogImage, ImportJob, Landmark, image_suffix
from retrieval.services import augmentation, catalogs, queueing
from retrieval.vision import preprocessing

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IngestResult:
    image: CatalogImage
    created: bool


def _check_upload_size(data: bytes) -> None:
    if len(data) > settings.LANDMARKS_MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The file is {len(data):,} bytes; the limit is {settings.LANDMARKS_MAX_UPLOAD_BYTES:,}.")


def image_inspect(*, data: bytes, max_pixels: int | None = None) -> preprocessing.ImageHeader:
    """Validate an upload from its header alone (web process): bytes, format, upright
    size, pixel cap (default ``LANDMARKS_MAX_IMAGE_PIXELS``) and minimum side.

    The pixels are not decoded here, so a 49-megapixel PNG of a few KB costs the web
    process nothing; the worker decodes (:func:`image_decode`) and fails the row with the
    reason when the data turns out truncated or corrupt.
    """
    _check_upload_size(data)
    try:
        return preprocessing.read_header(
            data,
            max_pixels=max_pixels or settings.LANDMARKS_MAX_IMAGE_PIXELS,
            min_side=settings.LANDMARKS_MIN_IMAGE_SIDE,
        )
    except preprocessing.ImageError as exc:
        raise from_image_error(exc) from None


def image_decode(*, data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Validate and decode an upload (workers, commands); returns (H, W, 3) uint8 RGB or
    raises an InvalidImage. ``max_pixels`` defaults to ``LANDMARKS_MAX_IMAGE_PIXELS``."""
    _check_upload_size(data)
    try:
        return preprocessing.decode_image(
            data,
            max_pixels=max_pixels or settings.LANDMARKS_MAX_IMAGE_PIXELS,
            min_side=settings.LANDMARKS_MIN_IMAGE_SIDE,
        )
    except preprocessing.ImageError as exc:
        raise from_image_error(exc) from None


def image_rendition(*, data: bytes) -> bytes:
    """A JPEG of a stored photo whose format browsers cannot show (HEIC, TIFF), made on
    request (web process) and not stored: a full decode within
    ``LANDMARKS_MAX_IMAGE_PIXELS`` (the cap every stored photo passed), longest side at
    most 2048 px. Raises an InvalidImage when the pixels cannot be decoded."""
    try:
        return preprocessing.jpeg_rendition(data, max_pixels=settings.LANDMARKS_MAX_IMAGE_PIXELS)
    except preprocessing.ImageError as exc:
        raise from_image_error(exc) from None


def stored_name(*, header: preprocessing.ImageHeader, sha256: str) -> str:
    """The stored file's name: its hash and the extension of its decoded format (never
    the client's name, which could make a PNG be served as HTML)."""
    return f"{sha256}{image_suffix(header.format)}"


def image_ingest(
    *,
    catalog: Catalog,
    data: bytes,
    filename: str,
    landmark: Landmark | None = None,
    external_id: str = "",
    import_job: ImportJob | None = None,
    enqueue: bool = True,
    decode: bool = False,
) -> IngestResult:
    """Store a catalog photo and enqueue its indexing once the transaction commits.

    A file already in the catalog (same sha256) is not stored or indexed again: the
    existing image comes back with ``created=False``. With ``enqueue=False`` nothing is
    sent to the broker: the caller runs :func:`image_index` itself (``evaluate``).

    Only the header is read (web process); the worker decodes and fails the image when
    its pixels are corrupt. ``decode=True`` decodes them now, so that a command can
    report a corrupt file at once (``import_catalog``).
    """
    header = image_inspect(data=data)
    if decode:
        image_decode(data=data)
    sha256 = hashlib.sha256(data).hexdigest()
    existing = CatalogImage.objects.filter(catalog=catalog, sha256=sha256).first()
    if existing is not None:
        if enqueue and existing.status == CatalogImage.Status.PENDING and existing.queued_at is None:
            queueing.enqueue(tasks.image_index_task, existing.pk)  # stored while the broker was away
        return IngestResult(existing, created=False)
    image = CatalogImage(
        catalog=catalog,
        landmark=landmark,
        sha256=sha256,
        width=header.width,
        height=header.height,
        original_name=filename[-300:],
        external_id=external_id[:200],
        import_job=import_job,
    )
    image.file.save(stored_name(header=header, sha256=sha256), ContentFile(data), save=False)
    try:
        with transaction.atomic():
            image.save()
    except IntegrityError:  # the same file raced in through another request
        image.file.delete(save=False)
        existing = CatalogImage.objects.filter(catalog=catalog, sha256=sha256).first()
        if existing is None:
            raise
        return IngestResult(existing, created=False)
    if enqueue:
        queueing.enqueue(tasks.image_index_task, image.pk)
    return IngestResult(image, created=True)


def image_ingest_unique(
    *,
    catalog: Catalog,
    data: bytes,
    filename: str,
    landmark: Landmark | None = None,
    import_job: ImportJob | None = None,
) -> CatalogImage:
    """Like :func:`image_ingest` but a duplicate is an error (admin and API uploads)."""
    result = image_ingest(catalog=catalog, data=data, filename=filename, landmark=landmark, import_job=import_job)
    if not result.created:
        raise DuplicateImage(f"already in catalog {catalog.name} as image {result.image.pk} (same content).")
    return result.image


@dataclasses.dataclass
class UploadReport:
    """What :func:`images_upload` did with a batch of files."""

    job: ImportJob
    created: list[CatalogImage]
    duplicates: list[dict[str, object]]  # {"name", "image_id"}: already in the catalog
    refused: list[dict[str, str]]  # {"name", "error"}: not stored
    refused_status: int = 400  # the HTTP status of the first refusal


def images_upload(
    *, catalog: Catalog, files: Sequence[File], landmark: str = "", source: str, created_by: str = ""
) -> UploadReport:
    """Store a batch of uploaded photos (the catalog API) as one :class:`ImportJob`: each
    file is stored and queued for indexing, reported as a duplicate (same content already
    in the catalog) or refused with the reason (nothing stored)."""
    job = import_job_start(catalog=catalog, source=source, submitted=len(files), created_by=created_by)
    landmark_row = catalogs.landmark_get_or_create(catalog=catalog, name=landmark)
    report = UploadReport(job=job, created=[], duplicates=[], refused=[])
    for upload in files:
        name = upload.name or "upload"
        try:
            result = image_ingest(
                catalog=catalog, data=upload.read(), filename=name, landmark=landmark_row, import_job=job
            )
        except RetrievalError as exc:
            if not report.refused:
                report.refused_status = exc.http_status
            report.refused.append({"name": name, "error": exc.message})
            continue
        if result.created:
            report.created.append(result.image)
        else:
            report.duplicates.append({"name": name, "image_id": result.image.pk})
    import_job_finish(job=job, duplicates=len(report.duplicates), refused=report.refused)
    logger.info(
        "import job %s into %s: %d stored, %d duplicates, %d refused",
        job.pk, catalog.name, len(report.created), len(report.duplicates), len(report.refused),
    )  # fmt: skip
    return report


def image_delete(*, image_id: int) -> bool:
    """Delete a catalog image: its row and descriptors, then (once committed) its stored
    file and thumbnail; the augmented descriptors of its neighbours are refreshed without
    it. Returns False when there was no such image."""
    image = CatalogImage.objects.select_related("catalog").filter(pk=image_id).first()
    if image is None:
        return False
    with transaction.atomic():  # the files go once this commits (retrieval/signals.py)
        # The image row first, as a worker storing its descriptor locks it: no deadlock.
        if not CatalogImage.objects.select_for_update().filter(pk=image_id).exists():
            return False
        augmentation.descriptors_touch_neighbours(image=image)
        image.delete()
        catalogs.catalog_request_augmentation(catalog_id=image.catalog_id)
    logger.info("deleted catalog image %s (%s) from catalog %s", image_id, image.original_name, image.catalog_id)
    return True


def stored_files_delete(*, storage: object, names: list[str]) -> None:
    """Delete stored files by name (a missing one is skipped, a failure logged)."""
    for name in names:
        if not name:
            continue
        try:
            storage.delete(name)  # type: ignore[attr-defined]
        except OSError:
            logger.warning("could not delete the stored file %s", name, exc_info=True)


def images_requeue(*, image_ids: list[int]) -> int:
    """Index these images again (the admin's "Index again"); returns how many."""
    count = CatalogImage.objects.filter(pk__in=image_ids).update(
        status=CatalogImage.Status.PENDING, failure_reason="", queued_at=None, **queueing.RELEASED
    )
    for image_id in image_ids:
        queueing.enqueue(tasks.image_index_task, image_id)
    return count


def import_job_start(*, catalog: Catalog, source: str, submitted: int, created_by: str = "") -> ImportJob:
    """A batch that the following :func:`image_ingest` calls pass as ``import_job``."""
    return ImportJob.objects.create(catalog=catalog, source=source[:300], submitted=submitted, created_by=created_by)


def import_job_finish(*, job: ImportJob, duplicates: int, refused: list[dict[str, str]]) -> ImportJob:
    """Record what was not stored (``refused``: ``[{"name", "error"}]``); the indexing
    progress itself is counted from the images (``selectors.import_job_progress``)."""
    job.duplicates = duplicates
    job.refused = refused
    job.finished_at = timezone.now()
    job.save(update_fields=["duplicates", "refused", "finished_at"])
    return job
