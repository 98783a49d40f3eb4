"""Indexing: extracting a catalog photo's features and storing its descriptor row."""

from __future__ import annotations

import logging
import uuid

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from retrieval import extraction, selectors
from retrieval.errors import RetrievalError
from retrieval.models import Catalog, CatalogImage, FeatureModel, ImageDescriptor
from retrieval.services import catalogs, ingest, queueing, thumbnails
from retrieval.vision.compact import LocalCodec
from retrieval.vision.extractors import matching_config
from retrieval.vision.extractors.base import Extractor
from retrieval.vision.features import ImageFeatures

logger = logging.getLogger(__name__)


def image_index(*, image_id: int, task_id: str = "", retry: bool = False) -> CatalogImage | None:
    """Extract and store the features of one catalog image (Celery worker).

    Idempotent: an image already indexed with the current model is left alone, and an
    image another live task has claimed is skipped (``task_id``: the Celery task's id, so
    that a redelivered task resumes its own claim). Extraction failures mark the image
    ``failed`` with the reason; database errors propagate so that the task retries.
    """
    image = CatalogImage.objects.select_related("catalog", "catalog__active_model").filter(pk=image_id).first()
    if image is None:
        logger.info("image %s was deleted before it was indexed", image_id)
        return None
    from retrieval.extraction import get_extractor

    # The catalog's model, and while a switch is under way also the model that still
    # serves its searches, so that a new photo is findable before and after the switch.
    specs = [catalogs.catalog_extractor_spec(catalog=image.catalog)]
    active = image.catalog.active_model
    if active is not None and active.name not in specs and catalogs.extractor_buildable(active.name):
        specs.append(active.name)
    work = []
    task_id = task_id or uuid.uuid4().hex
    try:
        for spec in specs:
            extractor = get_extractor(spec)
            model = feature_model_ensure(extractor=extractor)
            if image.status == CatalogImage.Status.INDEXED and image.descriptors.filter(model=model).exists():
                continue
            work.append((extractor, model))
    except queueing.DATABASE_ERRORS:
        raise
    except Exception as exc:  # a model that cannot be built (weights missing, a bad setting)
        logger.exception("could not build the feature extractor for image %s", image_id)
        if queueing.claim(CatalogImage, image_id, task_id=task_id, busy=CatalogImage.Status.PROCESSING, retry=retry):
            image_fail(image, f"The feature extractor could not be loaded: {type(exc).__name__}: {exc}")
        return CatalogImage.objects.filter(pk=image_id).first()
    if not work:
        return image
    if not queueing.claim(CatalogImage, image_id, task_id=task_id, busy=CatalogImage.Status.PROCESSING, retry=retry):
        return _refused_image(image_id)
    for position, (extractor, model) in enumerate(work):
        # The catalog's own model (the first) also checks for near duplicates.
        if not _extract_and_store(image=image, extractor=extractor, model=model, check_duplicates=position == 0):
            break
        Catalog.objects.filter(pk=image.catalog_id, active_model__isnull=True).update(active_model=model)
        catalogs.catalog_request_augmentation(catalog_id=image.catalog_id)
    return CatalogImage.objects.filter(pk=image_id).first()  # None when deleted meanwhile


def image_near_duplicate(
    *, image: CatalogImage, extractor: Extractor, model: FeatureModel, features: ImageFeatures
) -> dict[str, object]:
    """The near-duplicate fields of ``image`` (its descriptor row is stored): the most
    similar earlier photo of its catalog when their plain global cosine is at least
    ``LANDMARKS_NEAR_DUPLICATE_SIMILARITY`` and one similarity transform carries
    ``LANDMARKS_NEAR_DUPLICATE_SHARE`` of their matches, at least the model's "same place"
    inliers (``vision.duplicates``; calibrated in bench/near_duplicates.py); else all None.

    One shortlist query, one plain-cosine query and, above the cosine only, one match and
    fit: small next to the extraction.
    """
    from retrieval.vision.duplicates import picture_match

    nearest = selectors.nearest_earlier_image(
        catalog=image.catalog, model=model, image_id=image.pk, query=features.global_descriptor
    )
    flag: dict[str, object] = {
        "near_duplicate_of": None,
        "near_duplicate_similarity": None,
        "near_duplicate_inliers": None,
    }
    if nearest is None or nearest.similarity < settings.LANDMARKS_NEAR_DUPLICATE_SIMILARITY:
        return flag
    stored = selectors.local_features_for(model=model, image_ids=[nearest.image_id], codec=extractor.codec).get(
        nearest.image_id
    )
    if stored is None:
        return flag
    match = picture_match(features.local, stored, matching_config(extractor.model_name))
    if match.share >= settings.LANDMARKS_NEAR_DUPLICATE_SHARE and match.inliers >= extraction.min_inliers(
        extractor.model_name
    ):
        flag = {
            "near_duplicate_of": nearest.image_id,
            "near_duplicate_similarity": round(nearest.similarity, 4),
            "near_duplicate_inliers": match.inliers,
        }
        logger.info("image %s is a near duplicate of image %s (%s)", image.pk, nearest.image_id, flag)
    return flag


def _near_duplicate_fields(
    *, image: CatalogImage, extractor: Extractor, model: FeatureModel, features: ImageFeatures
) -> dict[str, object]:
    """:func:`image_near_duplicate`, or no change when it fails: the image is indexed
    anyway (database errors still propagate, so that the task retries)."""
    try:
        return image_near_duplicate(image=image, extractor=extractor, model=model, features=features)
    except queueing.DATABASE_ERRORS:
        raise
    except Exception:
        logger.exception("near-duplicate check failed for image %s", image.pk)
        return {}


def _refused_image(image_id: int) -> CatalogImage | None:
    """The claim was refused: another live task has it, or it used up its attempts."""
    gave_up = queueing.stale_claim(CatalogImage, image_id, busy=CatalogImage.Status.PROCESSING).filter(
        attempts__gte=settings.LANDMARKS_TASK_MAX_ATTEMPTS
    )
    if gave_up.update(
        status=CatalogImage.Status.FAILED,
        failure_reason="Indexing was started several times and never finished (the worker died each time).",
        updated_at=timezone.now(),
        **queueing.RELEASED,
    ):
        logger.warning("image %s failed: it used up its attempts", image_id)
    else:
        logger.info("image %s is claimed by another task; skipped", image_id)
    return CatalogImage.objects.filter(pk=image_id).first()


def image_extract(*, image: CatalogImage, extractor: Extractor, model: FeatureModel) -> bool:
    """Extract ``image`` with ``extractor`` and upsert its descriptor row; sets the status."""
    return _extract_and_store(image=image, extractor=extractor, model=model)


def _extract_and_store(
    *, image: CatalogImage, extractor: Extractor, model: FeatureModel, check_duplicates: bool = False
) -> bool:
    """:func:`image_extract`; with ``check_duplicates`` the near-duplicate fields are
    written with the ``indexed`` status, so that an indexed image is always checked."""
    try:
        with image.file.open("rb") as handle:
            data = handle.read()
        rgb = ingest.image_decode(data=data)
        features = extractor.extract(rgb)
    except FileNotFoundError:
        image_fail(image, "The stored file is missing.")
        return False
    except RetrievalError as exc:
        image_fail(image, exc.message)
        return False
    except Exception as exc:  # keep the worker alive; the reason is on the image
        logger.exception("extraction failed for image %s", image.pk)
        image_fail(image, f"Feature extraction failed: {type(exc).__name__}: {exc}")
        return False
    # The image row is locked while its descriptor is written: a deletion meanwhile
    # (which would fail the insert on its foreign key) either waits or is seen here.
    # ``image_delete`` takes the same lock first, so the two never deadlock.
    with transaction.atomic():
        if not CatalogImage.objects.select_for_update(no_key=True).filter(pk=image.pk).exists():
            logger.info("image %s was deleted while it was extracted", image.pk)
            return False
        descriptor_store(image=image, model=model, features=features, codec=extractor.codec)
    if not image.thumbnail.name:
        _thumbnail_store(image=image, rgb=rgb)
    flag = (
        _near_duplicate_fields(image=image, extractor=extractor, model=model, features=features)
        if check_duplicates
        else {}
    )
    CatalogImage.objects.filter(pk=image.pk).update(
        **flag,
        status=CatalogImage.Status.INDEXED,
        **queueing.RELEASED,
        failure_reason="",
        width=rgb.shape[1],
        height=rgb.shape[0],
        indexed_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return True


def _thumbnail_store(*, image: CatalogImage, rgb: np.ndarray) -> None:
    """The thumbnail from the pixels decoded anyway; a failure here (a full disk) leaves
    it to be made on first request rather than failing the indexing."""
    try:
        thumbnails.thumbnail_store(image=image, rgb=rgb)
    except Exception:
        logger.exception("thumbnail of image %s not made", image.pk)


def image_fail(image: CatalogImage, reason: str) -> None:
    logger.warning("image %s failed: %s", image.pk, reason)
    CatalogImage.objects.filter(pk=image.pk).update(
        status=CatalogImage.Status.FAILED, failure_reason=reason, updated_at=timezone.now(), **queueing.RELEASED
    )


def descriptor_store(
    *, image: CatalogImage, model: FeatureModel, features: ImageFeatures, codec: LocalCodec | None = None
) -> ImageDescriptor:
    descriptor, _ = ImageDescriptor.objects.update_or_create(
        image=image,
        model=model,
        defaults={
            "catalog_id": image.catalog_id,
            "embedding": features.global_descriptor.astype(np.float32),
            "local_features": (codec or LocalCodec()).encode(features.local),
            "num_local": len(features.local),
        },
    )
    return descriptor


_ensured: dict[tuple[str, str], FeatureModel] = {}


def feature_model_ensure(*, extractor: Extractor) -> FeatureModel:
    """The FeatureModel row for ``extractor`` and its partial HNSW index (created once)."""
    key = (extractor.model_name, extractor.model_version)
    cached = _ensured.get(key)
    if cached is not None and FeatureModel.objects.filter(pk=cached.pk).exists():
        return cached
    model, _ = FeatureModel.objects.get_or_create(
        name=extractor.model_name,
        version=extractor.model_version,
        defaults={"global_dim": extractor.global_dim, "local_dim": getattr(extractor, "local_dim", 0)},
    )
    table = ImageDescriptor._meta.db_table
    # Workers starting on a new model at once: IF NOT EXISTS does not guard two concurrent
    # CREATE INDEX of one name (the loser fails on the catalog's unique name), so they queue.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"landmarks-hnsw-{model.pk}"])
        # Serves exactly selectors.shortlist_sql(model): same expression, same predicate.
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {model.hnsw_index_name} ON {table} "
            f"USING hnsw (({selectors.search_vector_sql(model)}) halfvec_cosine_ops) "
            f"WITH (m = {int(settings.LANDMARKS_HNSW_M)}, ef_construction = {int(settings.LANDMARKS_HNSW_EF_CONSTRUCTION)}) "
            f"WHERE model_id = {int(model.pk)}"
        )
    _ensured[key] = model
    return model
