"""Writes: ingestion, indexing, search and reindexing. Keyword-only arguments."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from retrieval import extraction, selectors
from retrieval.errors import (
    DuplicateImage,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RetrievalError,
    ServiceUnavailable,
    from_image_error,
)
from retrieval.models import (
    Catalog,
    CatalogImage,
    FeatureModel,
    ImageDescriptor,
    Landmark,
    ReindexJob,
    SearchQuery,
    catalog_name_validator,
    image_suffix,
)
from retrieval.vision import preprocessing
from retrieval.vision.extractors.base import Extractor
from retrieval.vision.features import ImageFeatures, LocalFeatures
from retrieval.vision.ranking import answer_decided, recognise, rerank
from retrieval.vision.extractors import matching_config
from retrieval.vision.verification import Verification, verify_best

logger = logging.getLogger(__name__)

# What a task lets propagate so that Celery retries it (the row's claim stays its own).
DATABASE_ERRORS = (OperationalError, InterfaceError)

# Inlier correspondences kept per result for drawing (the top results only).
DRAWN_RESULTS = 10
DRAWN_MATCHES = 150


# --- catalogs ---------------------------------------------------------------------------


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


# --- images -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IngestResult:
    image: CatalogImage
    created: bool


def _check_upload_size(data: bytes) -> None:
    if len(data) > settings.LANDMARKS_MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(
            f"The file is {len(data):,} bytes; the limit is {settings.LANDMARKS_MAX_UPLOAD_BYTES:,}."
        )


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


def _stored_name(*, header: preprocessing.ImageHeader, sha256: str) -> str:
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
            _enqueue("index_image", existing.pk)  # stored while the broker was away
        return IngestResult(existing, created=False)
    image = CatalogImage(
        catalog=catalog,
        landmark=landmark,
        sha256=sha256,
        width=header.width,
        height=header.height,
        original_name=filename[-300:],
        external_id=external_id[:200],
    )
    image.file.save(_stored_name(header=header, sha256=sha256), ContentFile(data), save=False)
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
        _enqueue("index_image", image.pk)
    return IngestResult(image, created=True)


def image_ingest_unique(
    *, catalog: Catalog, data: bytes, filename: str, landmark: Landmark | None = None
) -> CatalogImage:
    """Like :func:`image_ingest` but a duplicate is an error (admin and API uploads)."""
    result = image_ingest(catalog=catalog, data=data, filename=filename, landmark=landmark)
    if not result.created:
        raise DuplicateImage(
            f"already in catalog {catalog.name} as image {result.image.pk} (same content)."
        )
    return result.image


def image_index(*, image_id: int, task_id: str = "") -> CatalogImage | None:
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
    specs = [catalog_extractor_spec(catalog=image.catalog)]
    active = image.catalog.active_model
    if active is not None and active.name not in specs and _buildable(active.name):
        specs.append(active.name)
    work = []
    for spec in specs:
        extractor = get_extractor(spec)
        model = feature_model_ensure(extractor=extractor)
        if image.status == CatalogImage.Status.INDEXED and image.descriptors.filter(model=model).exists():
            continue
        work.append((extractor, model))
    if not work:
        return image
    if not _claim(CatalogImage, image_id, task_id=task_id or uuid.uuid4().hex, busy=CatalogImage.Status.PROCESSING):
        return _refused_image(image_id)
    for extractor, model in work:
        if not _extract_and_store(image=image, extractor=extractor, model=model):
            break
        Catalog.objects.filter(pk=image.catalog_id, active_model__isnull=True).update(active_model=model)
        catalog_request_augmentation(catalog_id=image.catalog_id)
    image.refresh_from_db()
    return image


def _refused_image(image_id: int) -> CatalogImage | None:
    """The claim was refused: another live task has it, or it used up its attempts."""
    gave_up = _stale(CatalogImage, image_id, busy=CatalogImage.Status.PROCESSING).filter(
        attempts__gte=settings.LANDMARKS_TASK_MAX_ATTEMPTS
    )
    if gave_up.update(
        status=CatalogImage.Status.FAILED,
        failure_reason="Indexing was started several times and never finished (the worker died each time).",
        updated_at=timezone.now(),
        **_RELEASED,
    ):
        logger.warning("image %s failed: it used up its attempts", image_id)
    else:
        logger.info("image %s is claimed by another task; skipped", image_id)
    return CatalogImage.objects.filter(pk=image_id).first()


def catalog_extractor_spec(*, catalog: Catalog) -> str:
    """The extractor that indexes this catalog's new photos."""
    return catalog.extractor_spec or settings.LANDMARKS_EXTRACTOR


def _buildable(spec: str) -> bool:
    from retrieval.vision.extractors import UnknownModelError, check_spec

    try:
        check_spec(spec, cache_dir=settings.MODEL_DIR)
    except UnknownModelError:
        return False
    return True


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


def _extract_and_store(*, image: CatalogImage, extractor: Extractor, model: FeatureModel) -> bool:
    """Extract ``image`` with ``extractor`` and upsert its descriptor row; sets the status."""
    try:
        with image.file.open("rb") as handle:
            data = handle.read()
        rgb = image_decode(data=data)
        features = extractor.extract(rgb)
    except FileNotFoundError:
        _fail_image(image, "The stored file is missing.")
        return False
    except RetrievalError as exc:
        _fail_image(image, exc.message)
        return False
    except Exception as exc:  # keep the worker alive; the reason is on the image
        logger.exception("extraction failed for image %s", image.pk)
        _fail_image(image, f"Feature extraction failed: {type(exc).__name__}: {exc}")
        return False
    descriptor_store(image=image, model=model, features=features, descriptor_dtype=extractor.descriptor_dtype)
    CatalogImage.objects.filter(pk=image.pk).update(
        status=CatalogImage.Status.INDEXED,
        **_RELEASED,
        failure_reason="",
        width=rgb.shape[1],
        height=rgb.shape[0],
        indexed_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return True


def _fail_image(image: CatalogImage, reason: str) -> None:
    logger.warning("image %s failed: %s", image.pk, reason)
    CatalogImage.objects.filter(pk=image.pk).update(
        status=CatalogImage.Status.FAILED, failure_reason=reason, updated_at=timezone.now(), **_RELEASED
    )


def descriptor_store(
    *, image: CatalogImage, model: FeatureModel, features: ImageFeatures, descriptor_dtype: str = "<f2"
) -> ImageDescriptor:
    descriptor, _ = ImageDescriptor.objects.update_or_create(
        image=image,
        model=model,
        defaults={
            "catalog_id": image.catalog_id,
            "embedding": features.global_descriptor.astype(np.float32),
            "local_features": features.local.to_bytes(descriptor_dtype=descriptor_dtype),
            "num_local": len(features.local),
        },
    )
    return descriptor


# --- feature models ---------------------------------------------------------------------

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
    with connection.cursor() as cursor:
        # Serves exactly selectors.shortlist_sql(model): same expression, same predicate.
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {model.hnsw_index_name} ON {table} "
            f"USING hnsw (({selectors.search_vector_sql(model)}) halfvec_cosine_ops) "
            f"WHERE model_id = {int(model.pk)}"
        )
    _ensured[key] = model
    return model


# --- search -----------------------------------------------------------------------------


def search_create(
    *,
    catalog: Catalog,
    data: bytes,
    filename: str,
    top_k: int = 10,
    bbox: list[float] | None = None,
    enqueue: bool = True,
) -> SearchQuery:
    """Store a query photo and enqueue its search once the transaction commits.

    Only the header is read here (:func:`image_inspect`, ``LANDMARKS_MAX_QUERY_PIXELS``);
    the worker decodes the pixels and fails the search when they are corrupt.

    With ``enqueue=False`` nothing is sent to the broker: the caller runs
    :func:`search_execute` itself (``evaluate``). ``filename`` (the client's) is not
    kept: the stored name derives from the content.
    """
    header = image_inspect(data=data, max_pixels=settings.LANDMARKS_MAX_QUERY_PIXELS)
    if bbox is not None:
        try:
            preprocessing.bbox_window(header.width, header.height, tuple(bbox))  # type: ignore[arg-type]
        except preprocessing.ImageError as exc:
            raise InvalidInput(str(exc)) from None
    if not catalog.images.exists():
        raise InvalidInput(f"Catalog {catalog.name} has no images yet.")
    sha256 = hashlib.sha256(data).hexdigest()
    stored_name = _stored_name(header=header, sha256=sha256)
    query = SearchQuery(
        catalog=catalog,
        sha256=sha256,
        width=header.width,
        height=header.height,
        bbox=bbox,
        top_k=top_k,
        created_at=timezone.now(),
    )
    query.image.save(stored_name, ContentFile(data), save=False)
    query.save()
    if enqueue and not _send("search_run", query.pk):
        message = "The search queue cannot be reached right now; try again in a minute."
        _fail_search(query, message, {})
        raise ServiceUnavailable(message)
    return query


def search_wait(*, query_id: int, timeout: float, poll: float = 0.05) -> SearchQuery:
    """Wait until the search finished or ``timeout`` seconds passed; returns its row."""
    deadline = time.monotonic() + timeout
    while True:
        query = selectors.search_get(query_id=query_id)
        if query is None:
            raise NotFound(f"No search with id {query_id}.")
        if query.status in (SearchQuery.Status.DONE, SearchQuery.Status.FAILED) or time.monotonic() >= deadline:
            return query
        time.sleep(poll)


def search_execute(*, query_id: int, task_id: str = "") -> SearchQuery | None:
    """Run one search (Celery worker): extract, shortlist, verify, rank, recognise.

    Idempotent: a finished search is left alone and a running one is skipped unless its
    claim is this task's (a redelivery resumes it) or has gone stale. Application errors
    fail the search with the reason; database errors propagate so that the task retries.
    """
    task_id = task_id or uuid.uuid4().hex
    if not _claim(SearchQuery, query_id, task_id=task_id, busy=SearchQuery.Status.RUNNING, done=_SEARCH_DONE):
        _stale(SearchQuery, query_id, busy=SearchQuery.Status.RUNNING).filter(
            attempts__gte=settings.LANDMARKS_TASK_MAX_ATTEMPTS
        ).update(
            status=SearchQuery.Status.FAILED,
            error="The search was started several times and never finished.",
            finished_at=timezone.now(),
            **_RELEASED,
        )
        return selectors.search_get(query_id=query_id)
    query = SearchQuery.objects.select_related("catalog", "catalog__active_model").get(pk=query_id)
    timings: dict[str, float] = {"queue": (timezone.now() - query.created_at).total_seconds() * 1000}
    try:
        _search_stages(query, timings, task_id=task_id)
    except RetrievalError as exc:
        _fail_search(query, exc.message, timings)
    except DATABASE_ERRORS:
        raise
    except Exception as exc:
        logger.exception("search %s failed", query_id)
        _fail_search(query, f"Search failed: {type(exc).__name__}: {exc}", timings)
    return query


def search_purge_expired(*, now: datetime | None = None, batch_size: int = 500) -> int:
    """Delete the searches older than ``LANDMARKS_QUERY_RETENTION_DAYS`` and their query
    photos (Celery beat, hourly); 0 days keeps everything. Returns how many went.

    Each batch's files go before its rows: an interrupted run leaves rows whose file is
    missing, which the next run deletes, rather than files no row points to any more.
    """
    days = settings.LANDMARKS_QUERY_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    storage = SearchQuery._meta.get_field("image").storage
    purged = 0
    while True:
        batch = list(
            SearchQuery.objects.filter(created_at__lt=cutoff).order_by("pk").values_list("pk", "image")[:batch_size]
        )
        if not batch:
            break
        for _, name in batch:
            if name:
                try:
                    storage.delete(name)
                except FileNotFoundError:  # already gone: the row still goes
                    pass
        _, per_model = SearchQuery.objects.filter(pk__in=[pk for pk, _ in batch]).delete()
        purged += per_model.get(SearchQuery._meta.label, 0)
    if purged:
        logger.info("purged %d searches older than %d days", purged, days)
    return purged


def _timed(timings: dict[str, float], stage: str, func: Callable[[], object]) -> object:
    start = time.perf_counter()
    value = func()
    timings[stage] = round((time.perf_counter() - start) * 1000, 2)
    return value


def _search_stages(query: SearchQuery, timings: dict[str, float], *, task_id: str) -> None:
    from retrieval.extraction import get_extractor

    started = time.perf_counter()

    def decode() -> np.ndarray:
        with query.image.open("rb") as handle:
            rgb = image_decode(data=handle.read(), max_pixels=settings.LANDMARKS_MAX_QUERY_PIXELS)
        crop, _ = preprocessing.crop_bbox(rgb, tuple(query.bbox) if query.bbox else None)  # type: ignore[arg-type]
        return crop

    # First, so that a corrupt upload fails the search without loading a model.
    crop = _timed(timings, "decode", decode)
    # Search with the model that serves the catalog (its rows are complete), which during
    # a switch is the old one; fall back to the catalog's configured extractor.
    active = query.catalog.active_model
    spec = active.name if active is not None and _buildable(active.name) else catalog_extractor_spec(catalog=query.catalog)
    extractor = get_extractor(spec)
    model = feature_model_ensure(extractor=extractor)
    if query.catalog.active_model_id not in (None, model.pk):
        logger.warning(
            "catalog %s is served by %s but this code builds %s: searching the rows of %s; run `manage.py reindex`",
            query.catalog.name, query.catalog.active_model, model, model,
        )  # fmt: skip

    features: ImageFeatures = _timed(timings, "extract", lambda: extractor.extract_query(crop))  # type: ignore[assignment]
    if query.bbox:
        offset = np.array(query.bbox[:2], np.float32).round()
        moved = [dataclasses.replace(local, keypoints=local.keypoints + offset) for local in features.local_sets]
        features = dataclasses.replace(features, local=moved[0], local_rescaled=tuple(moved[1:]))
    shortlisted: tuple[list[selectors.Candidate], dict[int, float]] = _timed(  # type: ignore[assignment]
        timings,
        "shortlist",
        lambda: _shortlist(
            catalog=query.catalog,
            model=model,
            descriptor=features.global_descriptor,
            limit=max(settings.LANDMARKS_SHORTLIST_SIZE, query.top_k),
        ),
    )
    candidates, cosines = shortlisted

    stored: dict[int, LocalFeatures] = {}
    matching = matching_config(extractor.model_name)
    min_inliers = extraction.min_inliers(extractor.model_name)
    images = {
        image.pk: image
        for image in CatalogImage.objects.select_related("landmark").filter(pk__in=[c.image_id for c in candidates])
    }
    labels = {pk: (image.landmark.name if image.landmark else None) for pk, image in images.items()}

    def verify() -> dict[int, tuple[int, Verification]]:
        """image id -> (the query's local feature set that matched best, its verification),
        in shortlist order, stopping early once the answer is decided."""
        ids = [c.image_id for c in candidates[: settings.LANDMARKS_VERIFY_TOP]]
        early = settings.LANDMARKS_VERIFY_EARLY_STOP
        chunk = early or len(ids) or 1
        done: dict[int, tuple[int, Verification]] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            stored.update(selectors.local_features_for(model=model, image_ids=part))
            for image_id in part:
                if image_id in stored:
                    done[image_id] = verify_best(features.local_sets, stored[image_id], matching)
            if early and start + chunk < len(ids) and answer_decided(
                [v.inliers for _, v in done.values()], [labels.get(i) for i in done], min_inliers=min_inliers
            ):
                timings["verify_stopped_early"] = 1
                break
        timings["verify_depth"] = len(done)
        return done

    best: dict[int, tuple[int, Verification]] = _timed(timings, "verify", verify)  # type: ignore[assignment]
    verifications = {image_id: verification for image_id, (_, verification) in best.items()}
    ranked = rerank(
        [(c.image_id, c.similarity) for c in candidates],
        {image_id: v.inliers for image_id, v in verifications.items()},
        min_inliers=min_inliers,
    )
    recognition = recognise(ranked, labels, min_inliers=min_inliers)
    results = []
    for rank, result in enumerate(ranked[: query.top_k], start=1):
        image = images.get(result.image_id)
        if image is None:  # deleted meanwhile
            continue
        entry: dict[str, object] = {
            "rank": rank,
            "image_id": result.image_id,
            "landmark": labels.get(result.image_id),
            "score": round(result.score, 4),
            "similarity": round(result.global_score, 4),
            "global_score": round(cosines.get(result.image_id, result.global_score), 4),
            "inliers": result.inliers,
            "verified": result.verified,
            # Whether its local features were matched (early stopping leaves the rest).
            "checked": result.image_id in verifications,
            "width": image.width,
            "height": image.height,
            "name": image.original_name,
            "external_id": image.external_id,
        }
        verification = verifications.get(result.image_id)
        if rank <= DRAWN_RESULTS and verification is not None and result.verified:
            stored_kp = stored[result.image_id]
            pairs = verification.matches[:DRAWN_MATCHES]
            q = features.local_sets[best[result.image_id][0]].keypoints[pairs[:, 0]]
            c = stored_kp.keypoints[pairs[:, 1]]
            entry["matches"] = np.round(np.concatenate([q, c], axis=1), 1).tolist()
        results.append(entry)
    timings["total"] = round((time.perf_counter() - started) * 1000 + timings["queue"], 2)
    timings["queue"] = round(timings["queue"], 2)
    # Only the claim holder writes the answer (a takeover may have happened meanwhile).
    SearchQuery.objects.filter(pk=query.pk, claimed_by=task_id, status=SearchQuery.Status.RUNNING).update(
        status=SearchQuery.Status.DONE,
        **_RELEASED,
        model=model,
        results=results,
        landmark_name=recognition.landmark if recognition else "",
        landmark_confidence=recognition.confidence if recognition else None,
        timings_ms=timings,
        finished_at=timezone.now(),
    )


def _shortlist(
    *, catalog: Catalog, model: FeatureModel, descriptor: np.ndarray, limit: int
) -> tuple[list[selectors.Candidate], dict[int, float]]:
    """pgvector shortlist with alpha query expansion over the DBA descriptors.

    Round 1 takes the nearest catalog images; with ``LANDMARKS_QE_NEIGHBOURS`` > 0 the query
    is expanded with the top ones and round 2 takes the final shortlist (ranked by
    similarity to the expanded query). Also returns each candidate's plain cosine
    similarity to the query (the global-only score).
    """
    from retrieval.vision.expansion import alpha_query_expansion

    candidates = selectors.descriptor_shortlist(
        catalog=catalog, model=model, query=descriptor, limit=limit, ef_search=settings.LANDMARKS_HNSW_EF_SEARCH
    )
    qe = settings.LANDMARKS_QE_NEIGHBOURS
    if qe > 0 and candidates:
        top = candidates[:qe]
        vectors = selectors.descriptor_vectors(model=model, image_ids=[c.image_id for c in top], augmented=True)
        expanded = alpha_query_expansion(
            descriptor,
            np.stack([vectors[c.image_id] for c in top]),
            np.array([c.similarity for c in top], np.float32),
            alpha=settings.LANDMARKS_EXPANSION_ALPHA,
        )
        candidates = selectors.descriptor_shortlist(
            catalog=catalog, model=model, query=expanded, limit=limit, ef_search=settings.LANDMARKS_HNSW_EF_SEARCH
        )
    cosines = selectors.plain_similarities(
        model=model, image_ids=[c.image_id for c in candidates], query=descriptor
    )
    return candidates, cosines


def catalog_request_augmentation(*, catalog_id: int) -> None:
    """Schedule a DBA refresh of the catalog (once; it waits for indexing to finish)."""
    if settings.LANDMARKS_DBA_NEIGHBOURS <= 1:
        return
    if Catalog.objects.filter(pk=catalog_id, augment_pending=False).update(augment_pending=True):
        transaction.on_commit(lambda: _send_augmentation(catalog_id))


def _send_augmentation(catalog_id: int) -> None:
    if not _send("catalog_augment", catalog_id, countdown=settings.LANDMARKS_AUGMENT_DELAY_SECONDS):
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


def _fail_search(query: SearchQuery, reason: str, timings: dict[str, float]) -> None:
    SearchQuery.objects.filter(pk=query.pk).update(
        status=SearchQuery.Status.FAILED, error=reason, timings_ms=timings, finished_at=timezone.now(), **_RELEASED
    )


# --- reindexing -------------------------------------------------------------------------


def reindex_start(*, catalog: Catalog | None = None, stale_only: bool = False) -> ReindexJob:
    """Create a reindex job and enqueue it; the worker resolves the current model."""
    job = ReindexJob.objects.create(catalog=catalog, stale_only=stale_only)
    _enqueue("reindex_run", job.pk)
    return job


def reindex_run(*, job_id: int, task_id: str = "") -> ReindexJob | None:
    """Re-extract the job's images with the current model (Celery worker).

    New descriptor rows are written next to the old model's; each catalog switches its
    ``active_model`` only when every image has been processed. Every image renews the
    job's claim; a job whose worker died is taken over by the sweep's next task, which
    skips the images already re-extracted since the job started.
    """
    task_id = task_id or uuid.uuid4().hex
    if not _claim(
        ReindexJob, job_id, task_id=task_id, busy=ReindexJob.Status.RUNNING, done=_JOB_DONE, resume_own=False
    ):
        return selectors.reindex_job_get(job_id=job_id)
    ReindexJob.objects.filter(pk=job_id).update(started_at=Coalesce(F("started_at"), timezone.now()))
    job = ReindexJob.objects.select_related("catalog").get(pk=job_id)
    try:
        from retrieval.extraction import get_extractor

        catalogs = [job.catalog] if job.catalog else list(Catalog.objects.order_by("pk"))
        plan = []  # (catalog, extractor, model, image ids)
        for catalog in catalogs:
            extractor = get_extractor(catalog_extractor_spec(catalog=catalog))
            model = feature_model_ensure(extractor=extractor)
            images = (
                selectors.stale_images(model=model, catalog=catalog)
                if job.stale_only
                else CatalogImage.objects.filter(catalog=catalog)
            )
            plan.append((catalog, extractor, model, list(images.order_by("pk").values_list("pk", flat=True))))
        if job.total == 0:
            ReindexJob.objects.filter(pk=job.pk).update(
                model=plan[-1][2] if plan else None, total=sum(len(ids) for *_, ids in plan)
            )
        processed, failed = job.processed, job.failed
        for catalog, extractor, model, ids in plan:
            # A resumed job: what was re-extracted since it started is done already.
            done = set(
                ImageDescriptor.objects.filter(model=model, image_id__in=ids, updated_at__gte=job.started_at)
                .values_list("image_id", flat=True)
            ) if processed else set()  # fmt: skip
            for image in CatalogImage.objects.filter(pk__in=ids).order_by("pk").iterator(chunk_size=100):
                if image.pk in done:
                    continue
                if not _reindex_image(image=image, extractor=extractor, model=model, task_id=task_id):
                    failed += 1
                processed += 1
                renewed = ReindexJob.objects.filter(pk=job.pk, claimed_by=task_id).update(
                    processed=processed, failed=failed, claimed_at=timezone.now()
                )
                if not renewed:
                    logger.warning("reindex job %s was taken over by another task; this one stops", job_id)
                    return selectors.reindex_job_get(job_id=job_id)
            Catalog.objects.filter(pk=catalog.pk).update(active_model=model)
            catalog_request_augmentation(catalog_id=catalog.pk)
        ReindexJob.objects.filter(pk=job.pk, claimed_by=task_id).update(
            status=ReindexJob.Status.DONE, finished_at=timezone.now(), claimed_by="", claimed_at=None
        )
    except DATABASE_ERRORS:
        raise
    except Exception as exc:
        logger.exception("reindex job %s failed", job_id)
        ReindexJob.objects.filter(pk=job.pk).update(
            status=ReindexJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now(),
            claimed_by="", claimed_at=None,
        )  # fmt: skip
    job.refresh_from_db()
    return job


def _reindex_image(*, image: CatalogImage, extractor: Extractor, model: FeatureModel, task_id: str) -> bool:
    """Re-extract one image under the job's claim; an image that was in flight when the
    worker died LANDMARKS_TASK_MAX_ATTEMPTS times fails instead of killing it again."""
    claimed = CatalogImage.objects.filter(pk=image.pk, attempts__lt=settings.LANDMARKS_TASK_MAX_ATTEMPTS).update(
        status=CatalogImage.Status.PROCESSING, claimed_by=task_id, claimed_at=timezone.now(), attempts=F("attempts") + 1
    )
    if not claimed:
        _fail_image(image, "Indexing was started several times and never finished (the worker died each time).")
        return False
    return _extract_and_store(image=image, extractor=extractor, model=model)


# --- claims and queueing ---------------------------------------------------------------

# Field values that clear a claim when a row reaches a final state.
_RELEASED = {"claimed_by": "", "claimed_at": None, "attempts": 0}
_SEARCH_DONE = (SearchQuery.Status.DONE, SearchQuery.Status.FAILED)
_JOB_DONE = (ReindexJob.Status.DONE, ReindexJob.Status.FAILED)


def _claim(
    model: type[CatalogImage] | type[SearchQuery] | type[ReindexJob],
    pk: int,
    *,
    task_id: str,
    busy: str,
    done: tuple[str, ...] = (),
    max_attempts: int | None = None,
    resume_own: bool = True,
) -> bool:
    """Take a row for ``task_id`` with one conditional UPDATE; True if taken.

    A row in a ``done`` state is never taken. A ``busy`` row is taken only when the claim
    is this task's own (Celery redelivers and retries under the same id, so the work
    resumes), or when its holder has shown no progress for LANDMARKS_TASK_LEASE_SECONDS
    (a killed worker). Each claim counts an attempt; ``max_attempts`` refuses more.
    ``resume_own=False`` is for tasks that may outlive the broker's visibility timeout: its
    redelivery arrives under the same id while the first delivery still works.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS)
    takeable = ~Q(status=busy) | Q(claimed_at__lt=stale) | Q(claimed_at__isnull=True)
    if resume_own:
        takeable |= Q(claimed_by=task_id)
    rows = model.objects.filter(pk=pk).exclude(status__in=done).filter(takeable)
    updates: dict[str, object] = {"status": busy, "claimed_by": task_id, "claimed_at": now}
    if hasattr(model, "attempts"):
        rows = rows.filter(attempts__lt=max_attempts or settings.LANDMARKS_TASK_MAX_ATTEMPTS)
        updates["attempts"] = F("attempts") + 1
    return rows.update(**updates) == 1


def _stale(model: type[CatalogImage] | type[SearchQuery] | type[ReindexJob], pk: int, *, busy: str):  # type: ignore[no-untyped-def]
    """The row as a queryset if it is ``busy`` under a claim without recent progress."""
    stale = timezone.now() - timedelta(seconds=settings.LANDMARKS_TASK_LEASE_SECONDS)
    return model.objects.filter(pk=pk, status=busy).filter(Q(claimed_at__lt=stale) | Q(claimed_at__isnull=True))


# Which row's ``queued_at`` a task's message stamps.
_QUEUED_ROWS = {"index_image": CatalogImage, "search_run": SearchQuery, "reindex_run": ReindexJob}


def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import RedisError

    return (KombuOperationalError, RedisError, OSError)


# After a failed publish, skip the broker for this long: a bulk import during an outage
# stores its photos at full speed instead of waiting out a timeout per photo.
BROKER_BACKOFF_SECONDS = 5.0
_broker_down_until = 0.0


def _send(task_name: str, object_id: int, *, countdown: float | None = None) -> bool:
    """Publish a task now; False (logged) when the broker cannot be reached.

    Nothing is lost then: the row keeps ``queued_at`` empty and the periodic sweep
    (``retrieval.recovery.work_sweep``) sends it once the broker is back.
    """
    global _broker_down_until
    from retrieval import tasks

    if time.monotonic() < _broker_down_until:
        return False
    try:
        getattr(tasks, task_name).apply_async((object_id,), countdown=countdown)
    except _broker_errors() as exc:
        _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
        logger.warning("could not queue %s(%s); the sweep will once the broker is back: %s", task_name, object_id, exc)
        return False
    model = _QUEUED_ROWS.get(task_name)
    if model is not None:
        model.objects.filter(pk=object_id).update(queued_at=timezone.now())
    return True


def _enqueue(task_name: str, object_id: int, *, countdown: float | None = None) -> None:
    """Send the task after the current transaction commits (a worker never sees a row
    that does not exist yet)."""
    transaction.on_commit(lambda: _send(task_name, object_id, countdown=countdown))
