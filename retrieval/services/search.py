"""Search: store a query, run it (extract -> shortlist -> verify -> rank), wait for it,
and purge old ones."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.utils import timezone

from retrieval import extraction, selectors, tasks
from retrieval.errors import InvalidInput, NotFound, RetrievalError, ServiceUnavailable
from retrieval.models import Catalog, CatalogImage, FeatureModel, ImageDescriptor, SearchQuery
from retrieval.services import catalogs, indexing, ingest, queueing
from retrieval.vision import preprocessing
from retrieval.vision.extractors import matching_config
from retrieval.vision.extractors.base import Extractor
from retrieval.vision.features import ImageFeatures, LocalFeatures
from retrieval.vision.shortlist import expanded_shortlist
from retrieval.vision.ranking import RankedResult, Recognition, answer_decided, recognise, rerank
from retrieval.vision.verification import Verification, verify_best

logger = logging.getLogger(__name__)


# Inlier correspondences kept per result for drawing (the top results only).
DRAWN_RESULTS = 10

DRAWN_MATCHES = 150


def search_create(
    *,
    catalog: Catalog,
    data: bytes,
    filename: str,
    top_k: int = 10,
    bbox: list[float] | None = None,
    enqueue: bool = True,
) -> SearchQuery:
    """Store a query photo and send its search at once (not on commit: a search whose task
    cannot be sent is failed and answered 503 while the user waits). The views call it in
    autocommit, so the row is committed before the worker looks for it.

    Only the header is read here (:func:`image_inspect`, ``LANDMARKS_MAX_QUERY_PIXELS``);
    the worker decodes the pixels and fails the search when they are corrupt.

    With ``enqueue=False`` nothing is sent to the broker: the caller runs
    :func:`search_execute` itself (``evaluate``). ``filename`` (the client's) is not
    kept: the stored name derives from the content.
    """
    header = ingest.image_inspect(data=data, max_pixels=settings.LANDMARKS_MAX_QUERY_PIXELS)
    if bbox is not None:
        try:
            preprocessing.bbox_window(header.width, header.height, tuple(bbox))  # type: ignore[arg-type]
        except preprocessing.ImageError as exc:
            raise InvalidInput(str(exc)) from None
    _check_searchable(catalog)
    sha256 = hashlib.sha256(data).hexdigest()
    stored_name = ingest.stored_name(header=header, sha256=sha256)
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
    if enqueue and not queueing.send(tasks.search_execute_task, query.pk):
        message = "The search queue cannot be reached right now; try again in a minute."
        _fail_search(query, message, {})
        raise ServiceUnavailable(message)
    return query


def _check_searchable(catalog: Catalog) -> None:
    """InvalidInput unless a photo of ``catalog`` is indexed or has stored descriptors
    (photos being indexed again keep theirs): a search of photos that are all still
    queued would only answer "no match"."""
    if (
        catalog.images.filter(status=CatalogImage.Status.INDEXED).exists()
        or ImageDescriptor.objects.filter(catalog=catalog).exists()
    ):
        return
    waiting = catalog.images.filter(status__in=[CatalogImage.Status.PENDING, CatalogImage.Status.PROCESSING]).count()
    if waiting:
        raise InvalidInput(
            f"Catalog {catalog.name} has no indexed images yet: {waiting} are being indexed; search again when they are."
        )
    if catalog.images.exists():
        raise InvalidInput(f"Catalog {catalog.name} has no indexed images: every photo failed to index.")
    raise InvalidInput(f"Catalog {catalog.name} has no images yet.")


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


def search_execute(*, query_id: int, task_id: str = "", retry: bool = False) -> SearchQuery | None:
    """Run one search (Celery worker): extract, shortlist, verify, rank, recognise.

    Idempotent: a finished search is left alone and a running one is skipped unless its
    claim is this task's (a redelivery resumes it) or has gone stale. Application errors
    fail the search with the reason; database errors propagate so that the task retries.
    """
    task_id = task_id or uuid.uuid4().hex
    if not queueing.claim(
        SearchQuery, query_id, task_id=task_id, busy=SearchQuery.Status.RUNNING, done=queueing.SEARCH_DONE, retry=retry
    ):
        queueing.stale_claim(SearchQuery, query_id, busy=SearchQuery.Status.RUNNING).filter(
            attempts__gte=settings.LANDMARKS_TASK_MAX_ATTEMPTS
        ).update(
            status=SearchQuery.Status.FAILED,
            error="The search was started several times and never finished.",
            finished_at=timezone.now(),
            **queueing.RELEASED,
        )
        return selectors.search_get(query_id=query_id)
    query = SearchQuery.objects.select_related("catalog", "catalog__active_model").get(pk=query_id)
    timer = StageTimer(queue_ms=(timezone.now() - query.created_at).total_seconds() * 1000)
    try:
        _search_stages(query, timer, task_id=task_id)
    except RetrievalError as exc:
        _fail_search(query, exc.message, timer.ms, task_id=task_id)
    except queueing.DATABASE_ERRORS:
        raise
    except Exception as exc:
        logger.exception("search %s failed", query_id)
        _fail_search(query, f"Search failed: {type(exc).__name__}: {exc}", timer.ms, task_id=task_id)
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


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What shapes one search, read from the settings once when it starts (the defaults
    live in searchsite/settings.py only)."""

    shortlist_size: int
    verify_top: int
    verify_early_stop: int
    verify_threads: int
    hnsw_ef_search: int
    qe_neighbours: int
    expansion_alpha: float
    max_query_pixels: int

    @classmethod
    def from_settings(cls) -> SearchConfig:
        return cls(
            shortlist_size=settings.LANDMARKS_SHORTLIST_SIZE,
            verify_top=settings.LANDMARKS_VERIFY_TOP,
            verify_early_stop=settings.LANDMARKS_VERIFY_EARLY_STOP,
            verify_threads=settings.LANDMARKS_VERIFY_THREADS,
            hnsw_ef_search=settings.LANDMARKS_HNSW_EF_SEARCH,
            qe_neighbours=settings.LANDMARKS_QE_NEIGHBOURS,
            expansion_alpha=settings.LANDMARKS_EXPANSION_ALPHA,
            max_query_pixels=settings.LANDMARKS_MAX_QUERY_PIXELS,
        )


class StageTimer:
    """Milliseconds per search stage, in the order they ran: the search's ``timings_ms``."""

    def __init__(self, *, queue_ms: float) -> None:
        self.ms: dict[str, float] = {"queue": round(queue_ms, 2)}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - start) * 1000, 2)

    def total(self) -> dict[str, float]:
        """All stages plus ``total`` (queue included)."""
        return {**self.ms, "total": round((time.perf_counter() - self._started) * 1000 + self.ms["queue"], 2)}


@dataclasses.dataclass
class _Shortlist:
    """The candidates in shortlist order, their plain cosine to the query, their rows."""

    candidates: list[selectors.Candidate]
    cosines: dict[int, float]
    images: dict[int, CatalogImage]
    labels: dict[int, str | None]


@dataclasses.dataclass
class _Verified:
    """image id -> (index of the query's feature set that matched best, verification)."""

    best: dict[int, tuple[int, Verification]]
    stored: dict[int, LocalFeatures]
    stopped_early: bool

    @property
    def inliers(self) -> dict[int, int]:
        return {image_id: v.inliers for image_id, (_, v) in self.best.items()}


def _search_stages(query: SearchQuery, timer: StageTimer, *, task_id: str) -> None:
    """load -> extract -> shortlist -> verify -> rank -> results, then store the answer."""
    config = SearchConfig.from_settings()
    with timer.stage("decode"):  # first: a corrupt upload fails without loading a model
        crop, offset = _load(query, max_pixels=config.max_query_pixels)
    extractor, model = _model_for(query.catalog)
    with timer.stage("extract"):
        features = _extract(extractor, crop, offset=offset)
    outcome = search_rank(
        catalog=query.catalog, model=model, extractor=extractor, features=features, top_k=query.top_k,
        config=config, timer=timer,
    )  # fmt: skip
    results = _results(outcome.ranked[: query.top_k], outcome.shortlist, outcome.verified, features)
    recognition = outcome.recognition
    # Only the claim holder writes the answer (a takeover may have happened meanwhile).
    SearchQuery.objects.filter(pk=query.pk, claimed_by=task_id, status=SearchQuery.Status.RUNNING).update(
        status=SearchQuery.Status.DONE,
        **queueing.RELEASED,
        model=model,
        results=results,
        landmark_name=recognition.landmark if recognition else "",
        landmark_confidence=recognition.confidence if recognition else None,
        timings_ms=timer.total(),
        finished_at=timezone.now(),
    )


@dataclasses.dataclass
class SearchOutcome:
    shortlist: _Shortlist
    verified: _Verified
    ranked: list[RankedResult]
    recognition: Recognition | None


def search_rank(
    *,
    catalog: Catalog,
    model: FeatureModel,
    extractor: Extractor,
    features: ImageFeatures,
    top_k: int,
    config: SearchConfig,
    timer: StageTimer,
) -> SearchOutcome:
    """Shortlist -> verify -> rank -> recognise for extracted query features (the search
    worker, and ``bench/scale.py`` on synthetic catalogs). Stage times go to ``timer``."""
    with timer.stage("shortlist"):
        shortlist = _shortlist(
            catalog=catalog, model=model, descriptor=features.global_descriptor,
            limit=max(config.shortlist_size, top_k), config=config,
        )  # fmt: skip
    min_inliers = extraction.min_inliers(extractor.model_name)
    with timer.stage("verify"):
        verified = _verify(
            features, shortlist, model=model, extractor=extractor, min_inliers=min_inliers, config=config
        )
    if verified.stopped_early:
        timer.ms["verify_stopped_early"] = 1
    timer.ms["verify_depth"] = len(verified.best)
    ranked = rerank(
        [(c.image_id, c.similarity) for c in shortlist.candidates], verified.inliers, min_inliers=min_inliers
    )
    recognition = recognise(ranked, shortlist.labels, min_inliers=min_inliers)
    return SearchOutcome(shortlist, verified, ranked, recognition)


def _load(query: SearchQuery, *, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The query photo decoded and cropped to its bbox: (H, W, 3) uint8 RGB, and the
    crop's top-left corner (x, y) in the photo (the bbox's, clipped to the photo)."""
    with query.image.open("rb") as handle:
        rgb = ingest.image_decode(data=handle.read(), max_pixels=max_pixels)
    return preprocessing.crop_bbox(rgb, tuple(query.bbox) if query.bbox else None)  # type: ignore[arg-type]


def _model_for(catalog: Catalog) -> tuple[Extractor, FeatureModel]:
    """The extractor of the model that serves the catalog (its rows are complete), which
    during a switch is the old one; else the catalog's configured extractor."""
    from retrieval.extraction import get_extractor

    active = catalog.active_model
    buildable = active is not None and catalogs.extractor_buildable(active.name)
    extractor = get_extractor(active.name if buildable else catalogs.catalog_extractor_spec(catalog=catalog))  # type: ignore[union-attr]
    model = indexing.feature_model_ensure(extractor=extractor)
    if catalog.active_model_id not in (None, model.pk):
        logger.warning(
            "catalog %s is served by %s but this code builds %s: searching the rows of %s; run `manage.py reindex`",
            catalog.name, catalog.active_model, model, model,
        )  # fmt: skip
    return extractor, model


def _extract(extractor: Extractor, crop: np.ndarray, *, offset: tuple[int, int]) -> ImageFeatures:
    """The query's features, keypoints moved by the crop's ``offset`` (x, y) back into
    the full photo's pixels."""
    features = extractor.extract_query(crop)
    if offset == (0, 0):
        return features
    shift = np.array(offset, np.float32)
    moved = [dataclasses.replace(local, keypoints=local.keypoints + shift) for local in features.local_sets]
    return dataclasses.replace(features, local=moved[0], local_rescaled=tuple(moved[1:]))


def _verify(
    features: ImageFeatures,
    shortlist: _Shortlist,
    *,
    model: FeatureModel,
    extractor: Extractor,
    min_inliers: int,
    config: SearchConfig,
) -> _Verified:
    """RANSAC-verify candidates in shortlist order, LANDMARKS_VERIFY_EARLY_STOP at a time
    (their blobs read in one query a chunk), until one landmark leads decisively. After the
    first chunk, candidates are verified on LANDMARKS_VERIFY_THREADS threads while this
    one reads the next chunk's blobs."""
    matching = matching_config(extractor.model_name)
    ids = [c.image_id for c in shortlist.candidates[: config.verify_top]]
    early = config.verify_early_stop
    size = early or _VERIFY_CHUNK
    chunks = [ids[start : start + size] for start in range(0, len(ids), size)]
    verified = _Verified(best={}, stored={}, stopped_early=False)
    pool = _verify_pool(config.verify_threads, os.getpid())

    def read(part: list[int]) -> dict[int, LocalFeatures]:
        return selectors.local_features_for(model=model, image_ids=part, codec=extractor.codec)

    def check(image_id: int) -> tuple[int, Verification]:
        return verify_best(features.local_sets, verified.stored[image_id], matching)

    prefetched: dict[int, LocalFeatures] | None = None
    for index, part in enumerate(chunks):
        verified.stored.update(read(part) if prefetched is None else prefetched)
        present = [image_id for image_id in part if image_id in verified.stored]
        # Most searches are decided on the first chunk, verified in this thread: under load
        # the threads cost more than they save (bench/README.md). A search still undecided
        # verifies on the pool while this thread reads the next chunk.
        threads = pool if index > 0 else None
        pending = [threads.submit(check, image_id) for image_id in present] if threads else None
        prefetched = read(chunks[index + 1]) if threads and index + 1 < len(chunks) else None
        results = [future.result() for future in pending] if pending is not None else list(map(check, present))
        # Each pair's RANSAC has its own seed: the same results on any thread, in any order.
        verified.best.update(zip(present, results, strict=True))
        if early and index + 1 < len(chunks):
            labels = [shortlist.labels.get(i) for i in verified.best]
            if answer_decided(list(verified.inliers.values()), labels, min_inliers=min_inliers):
                verified.stopped_early = True
                break
    return verified


# Blobs read per query when every candidate is verified (LANDMARKS_VERIFY_EARLY_STOP=0),
# so that reading overlaps verifying.
_VERIFY_CHUNK = 20


@functools.cache
def _verify_pool(threads: int, _pid: int) -> ThreadPoolExecutor | None:
    """The process's verification threads (None for one: verify in the calling thread).
    Keyed by process id: a forked child has none of its parent's threads."""
    return ThreadPoolExecutor(threads, thread_name_prefix="verify") if threads > 1 else None


def _results(
    ranked: list[RankedResult], shortlist: _Shortlist, verified: _Verified, features: ImageFeatures
) -> list[dict[str, object]]:
    """The stored JSON of the top results, with drawn matches for the first DRAWN_RESULTS."""
    results = []
    for rank, result in enumerate(ranked, start=1):
        image = shortlist.images.get(result.image_id)
        if image is None:  # deleted meanwhile
            continue
        entry: dict[str, object] = {
            "rank": rank,
            "image_id": result.image_id,
            "landmark": shortlist.labels.get(result.image_id),
            "score": round(result.score, 4),
            "similarity": round(result.global_score, 4),
            "global_score": round(shortlist.cosines.get(result.image_id, result.global_score), 4),
            "inliers": result.inliers,
            "verified": result.verified,
            # Whether its local features were matched (early stopping leaves the rest).
            "checked": result.image_id in verified.best,
            "width": image.width,
            "height": image.height,
            "name": image.original_name,
            "external_id": image.external_id,
            # Flagged at indexing (services.indexing.image_near_duplicate); null when not.
            "near_duplicate_of": image.near_duplicate_of_id,
        }
        if rank <= DRAWN_RESULTS and result.verified and result.image_id in verified.best:
            entry["matches"] = _drawn_matches(result.image_id, verified, features)
        results.append(entry)
    return results


def _drawn_matches(image_id: int, verified: _Verified, features: ImageFeatures) -> list[list[float]]:
    """Up to DRAWN_MATCHES inlier pairs as [xq, yq, xc, yc] in original pixels."""
    feature_set, verification = verified.best[image_id]
    pairs = verification.matches[:DRAWN_MATCHES]
    q = features.local_sets[feature_set].keypoints[pairs[:, 0]]
    c = verified.stored[image_id].keypoints[pairs[:, 1]]
    return np.round(np.concatenate([q, c], axis=1), 1).tolist()


def _shortlist(
    *, catalog: Catalog, model: FeatureModel, descriptor: np.ndarray, limit: int, config: SearchConfig
) -> _Shortlist:
    """pgvector shortlist (an HNSW pool ranked by the DBA descriptors) with alpha query expansion, plus
    each candidate's plain cosine similarity to the query (the global-only score)."""

    def nearest(vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        found = selectors.descriptor_shortlist(
            catalog=catalog, model=model, query=vector, limit=k, ef_search=config.hnsw_ef_search
        )
        return [(c.image_id, c.similarity) for c in found]

    def vectors_of(ids: list[int]) -> np.ndarray:
        vectors = selectors.descriptor_vectors(model=model, image_ids=ids, augmented=True)
        # A photo deleted since the first round adds nothing to the expanded query.
        missing = np.zeros_like(descriptor, dtype=np.float32)
        return np.stack([vectors.get(image_id, missing) for image_id in ids])

    shortlisted = expanded_shortlist(
        descriptor,
        nearest=nearest,
        vectors_of=vectors_of,
        limit=limit,
        expansion_neighbours=config.qe_neighbours,
        alpha=config.expansion_alpha,
    )
    candidates = [selectors.Candidate(image_id, similarity) for image_id, similarity in shortlisted.ranked]
    ids = [c.image_id for c in candidates]
    cosines = selectors.plain_similarities(model=model, image_ids=ids, query=descriptor)
    images = {image.pk: image for image in CatalogImage.objects.select_related("landmark").filter(pk__in=ids)}
    labels = {pk: (image.landmark.name if image.landmark else None) for pk, image in images.items()}
    return _Shortlist(candidates, cosines, images, labels)


def _fail_search(query: SearchQuery, reason: str, timings: dict[str, float], *, task_id: str | None = None) -> None:
    """Mark the search failed with ``reason``. A worker (``task_id``) writes only while
    it still holds the claim, as the answer is written: a task that was taken over must
    not overwrite what the new holder stored."""
    rows = SearchQuery.objects.filter(pk=query.pk)
    if task_id is not None:
        rows = rows.filter(claimed_by=task_id, status=SearchQuery.Status.RUNNING)
    rows.update(
        status=SearchQuery.Status.FAILED,
        error=reason,
        timings_ms=timings,
        finished_at=timezone.now(),
        **queueing.RELEASED,
    )
