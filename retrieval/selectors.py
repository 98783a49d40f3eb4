"""Reads: the pgvector shortlist and listings."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import numpy as np
from django.core.paginator import Page, Paginator
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from retrieval.models import (
    Catalog,
    CatalogImage,
    DescriptorAugmentation,
    FeatureModel,
    ImageDescriptor,
    ImportJob,
    Landmark,
    ReindexJob,
    SearchQuery,
)
from retrieval.vision.compact import LocalCodec
from retrieval.vision.features import FeatureFormatError, LocalFeatures

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Candidate:
    image_id: int
    similarity: float


def search_vector_sql(model: FeatureModel, alias: str = "") -> str:
    """The indexed expression: the plain descriptor at the model's width (``alias``: the
    table's alias in the query, if it has one)."""
    prefix = f"{alias}." if alias else ""
    return f"({prefix}embedding::halfvec({int(model.global_dim)}))"


def shortlist_sql(model: FeatureModel) -> str:
    """The nearest-neighbour query: the model's partial HNSW index proposes the
    ``%(pool)s`` nearest rows by the plain descriptor, which are re-ranked by their DBA
    descriptor where one is set (``DescriptorAugmentation``).

    The inner ORDER BY expression and the ``model_id`` predicate match the index
    definition in ``services.feature_model_ensure`` exactly; otherwise PostgreSQL cannot
    use it.
    """
    dim = int(model.global_dim)
    table = ImageDescriptor._meta.db_table
    augmentation = DescriptorAugmentation._meta.db_table
    vector = search_vector_sql(model)
    return (
        f"SELECT p.image_id, COALESCE(a.embedding, p.embedding)::halfvec({dim}) <=> %(q)s::halfvec({dim}) AS distance "
        f"FROM (SELECT id, image_id, embedding FROM {table} WHERE model_id = {int(model.pk)} AND catalog_id = %(catalog)s "
        f"ORDER BY {vector} <=> %(q)s::halfvec({dim}) LIMIT %(pool)s) p "
        f"LEFT JOIN {augmentation} a ON a.descriptor_id = p.id "
        f"ORDER BY distance, p.image_id LIMIT %(limit)s"
    )


def plain_similarities(*, model: FeatureModel, image_ids: list[int], query: np.ndarray) -> dict[int, float]:
    """Cosine similarity of ``query`` (D,) to the plain (not augmented) descriptors, in SQL."""
    if not image_ids:
        return {}
    dim = int(model.global_dim)
    vector = "[" + ",".join(f"{float(v):.6g}" for v in query) + "]"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT image_id, 1 - ((embedding::halfvec({dim})) <=> %s::halfvec({dim})) "
            f"FROM {ImageDescriptor._meta.db_table} WHERE model_id = %s AND image_id = ANY(%s)",
            [vector, model.pk, list(image_ids)],
        )
        return {image_id: float(similarity) for image_id, similarity in cursor.fetchall()}


def descriptor_vectors(*, model: FeatureModel, image_ids: list[int], augmented: bool) -> dict[int, np.ndarray]:
    """Global descriptors by image id: (D,) float32; ``augmented`` prefers the DBA ones.

    Read in pgvector's binary form: parsing the text form of 1280 numbers costs ~1 ms a
    row, which the incremental DBA would pay for every neighbour it reads.
    """
    if not image_ids:
        return {}
    table = ImageDescriptor._meta.db_table
    if augmented:
        source = f"halfvec_send(COALESCE(a.embedding, d.embedding)) FROM {table} d LEFT JOIN "
        source += f"{DescriptorAugmentation._meta.db_table} a ON a.descriptor_id = d.id"
    else:
        source = f"halfvec_send(d.embedding) FROM {table} d"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT d.image_id, {source} WHERE d.model_id = %s AND d.image_id = ANY(%s)", [model.pk, list(image_ids)]
        )
        return {image_id: halfvec_from_binary(data) for image_id, data in cursor.fetchall()}


def halfvec_from_binary(data: bytes | memoryview) -> np.ndarray:
    """A ``halfvec_send`` value (int16 dim, int16 unused, big-endian float16s) as (D,) float32."""
    return np.frombuffer(bytes(data), ">f2", offset=4).astype(np.float32)


def halfvec_literal(vector: np.ndarray) -> str:
    """(D,) floats as a pgvector text literal, rounded to float16 first (what a halfvec
    keeps), each printed in the fewest digits that read back the same float16."""
    return "[" + ",".join(map(str, vector.astype(np.float16))) + "]"


def descriptor_shortlist(
    *, catalog: Catalog, model: FeatureModel, query: np.ndarray, limit: int, ef_search: int = 200
) -> list[Candidate]:
    """The ``limit`` catalog images whose global descriptors are closest (cosine) to ``query``.

    Args:
        query: (D,) float32, L2-normalised, D == model.global_dim.
    The index proposes ``max(limit, ef_search)`` rows by the plain descriptor and they
    are re-ranked by the DBA descriptors (:func:`shortlist_sql`). Uses pgvector's
    iterative index scan so that filtering by catalog still fills the pool when several
    catalogs share the index.
    """
    if query.shape != (model.global_dim,):
        raise ValueError(f"query descriptor must be ({model.global_dim},), got {query.shape}")
    vector = "[" + ",".join(f"{float(v):.6g}" for v in query) + "]"
    with transaction.atomic(), connection.cursor() as cursor:
        # ef_search is capped at pgvector's maximum (1000); the iterative scan returns
        # more rows than ef_search when the limit asks for them.
        pool = max(ef_search, limit)
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [min(1000, pool)])
        cursor.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        cursor.execute(shortlist_sql(model), {"q": vector, "catalog": catalog.pk, "limit": limit, "pool": pool})
        rows = cursor.fetchall()
    return [Candidate(image_id=row[0], similarity=1.0 - float(row[1])) for row in rows]


def nearest_earlier_image(
    *, catalog: Catalog, model: FeatureModel, image_id: int, query: np.ndarray, limit: int = 10
) -> Candidate | None:
    """The image of the catalog whose plain descriptor is most similar (cosine) to
    ``query`` among the ``limit`` nearest by the HNSW index, leaving out ``image_id``
    and images added after it (a near duplicate points at the earlier photo).

    Two cheap queries: the shortlist (whose order follows the augmented descriptors where
    they exist) and the plain cosine of its few rows.
    """
    found = descriptor_shortlist(catalog=catalog, model=model, query=query, limit=limit + 1)
    ids = [c.image_id for c in found if c.image_id < image_id]
    cosines = plain_similarities(model=model, image_ids=ids, query=query)
    if not cosines:
        return None
    best = max(cosines, key=lambda i: (cosines[i], -i))
    return Candidate(image_id=best, similarity=cosines[best])


def local_features_for(
    *, model: FeatureModel, image_ids: list[int], codec: LocalCodec | None = None
) -> dict[int, LocalFeatures]:
    """The stored local features of ``image_ids`` (one query), decoded with ``codec``
    (any blob version; product-quantised rows need the codec's codebook library).

    A row that cannot be decoded (a truncated blob, a codebook missing from the library)
    is left out with a warning, as a row that does not exist: the search ranks that
    image by similarity alone instead of failing for every query that shortlists it.
    """
    rows = ImageDescriptor.objects.filter(model=model, image_id__in=image_ids).values_list("image_id", "local_features")
    codec = codec or LocalCodec()
    decoded: dict[int, LocalFeatures] = {}
    for image_id, blob in rows:
        try:
            decoded[image_id] = codec.decode(bytes(blob))
        except FeatureFormatError as exc:
            logger.warning("local features of image %s (%s) cannot be read: %s", image_id, model, exc)
    return decoded


def local_feature_sample(*, catalog: Catalog, limit: int) -> tuple[FeatureModel | None, list[bytes]]:
    """Up to ``limit`` stored local-feature blobs of ``catalog``, spread over its rows, of
    the model serving it (else the model with the most rows): (model, blobs)."""
    model = catalog.active_model
    if model is None:
        top = (
            ImageDescriptor.objects.filter(catalog=catalog)
            .values("model").annotate(rows=Count("id")).order_by("-rows").first()
        )  # fmt: skip
        model = FeatureModel.objects.get(pk=top["model"]) if top else None
    if model is None:
        return None, []
    rows = ImageDescriptor.objects.filter(catalog=catalog, model=model)
    ids = list(rows.order_by("image_id").values_list("image_id", flat=True))
    if len(ids) > limit:
        ids = [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, limit).round().astype(int))]
    blobs = rows.filter(image_id__in=ids).order_by("image_id").values_list("local_features", flat=True)
    return model, [bytes(blob) for blob in blobs]


def catalog_get(*, name: str) -> Catalog | None:
    return Catalog.objects.filter(name=name).first()


def catalog_status_counts(*, catalog: Catalog) -> dict[str, int]:
    counts = {status: 0 for status in CatalogImage.Status.values}
    for row in catalog.images.values("status").order_by().annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def search_get(*, query_id: int) -> SearchQuery | None:
    return SearchQuery.objects.select_related("catalog").filter(pk=query_id).first()


def search_get_public(*, public_id: uuid.UUID) -> SearchQuery | None:
    """The search behind a URL: by its unguessable id, never by the sequential one."""
    return SearchQuery.objects.select_related("catalog").filter(public_id=public_id).first()


def reindex_job_get(*, job_id: int) -> ReindexJob | None:
    return ReindexJob.objects.filter(pk=job_id).first()


def stale_images(*, model: FeatureModel, catalog: Catalog | None = None) -> QuerySet[CatalogImage]:
    """Images with no descriptor row from ``model``."""
    images = CatalogImage.objects.exclude(descriptors__model=model)
    return images.filter(catalog=catalog) if catalog is not None else images


def catalogs_searchable(*, user: object) -> QuerySet[Catalog]:
    """The catalogs this user may search: public ones for anyone, all for a signed-in or
    token-authenticated user."""
    catalogs = Catalog.objects.all()
    if getattr(user, "is_authenticated", False):
        return catalogs
    return catalogs.filter(public=True)


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """What a progress bar shows; ``rate`` in images per second over the last minutes of
    work, ``eta_seconds`` None while no rate is known or nothing is left."""

    total: int
    done: int
    failed: int
    remaining: int
    percent: float
    rate: float | None
    eta_seconds: float | None
    running: bool


def _rate(count: int, seconds: float) -> float | None:
    return count / seconds if count > 0 and seconds > 0 else None


def _progress(*, total: int, done: int, failed: int, rate: float | None, running: bool) -> JobProgress:
    remaining = max(0, total - done - failed)
    eta = remaining / rate if rate and remaining else None
    percent = 100.0 * (done + failed) / total if total else 100.0
    return JobProgress(total, done, failed, remaining, round(percent, 1), rate, eta, running)


# Rates are measured over the most recent images finished, so an import resumed after a
# pause does not report the pause as slowness.
RATE_WINDOW = 50


def import_job_progress(*, job: ImportJob) -> JobProgress:
    """Indexing progress of an import batch, counted from its images' statuses."""
    counts = {row["status"]: row["n"] for row in job.images.values("status").order_by().annotate(n=Count("id"))}
    done = counts.get(CatalogImage.Status.INDEXED, 0)
    failed = counts.get(CatalogImage.Status.FAILED, 0)
    total = sum(counts.values())
    recent = list(
        job.images.filter(indexed_at__isnull=False)
        .order_by("-indexed_at")
        .values_list("indexed_at", flat=True)[:RATE_WINDOW]
    )
    rate = _rate(len(recent) - 1, (recent[0] - recent[-1]).total_seconds()) if len(recent) >= 2 else None
    running = done + failed < total or job.finished_at is None
    return _progress(total=total, done=done, failed=failed, rate=rate, running=running)


def import_job_failures(*, job: ImportJob, limit: int = 100) -> list[dict[str, object]]:
    """Images of the batch that failed to index, with the reason (refused files are in
    ``job.refused``)."""
    rows = job.images.filter(status=CatalogImage.Status.FAILED).order_by("id")[:limit]
    return [{"image_id": i.pk, "name": i.original_name, "error": i.failure_reason} for i in rows]


def reindex_job_progress(*, job: ReindexJob) -> JobProgress:
    """Progress of a reindex job from its counters; the rate over its whole run."""
    running = job.status in (ReindexJob.Status.PENDING, ReindexJob.Status.RUNNING)
    rate = None
    if job.started_at is not None:
        rate = _rate(job.processed, ((job.finished_at or timezone.now()) - job.started_at).total_seconds())
    done = max(0, job.processed - job.failed)
    return _progress(total=job.total, done=done, failed=job.failed, rate=rate, running=running)


# --- Web pages: catalogs, landmarks, images, jobs -------------------------------------


def catalog_searchable_get(*, user: object, name: str) -> Catalog | None:
    """The catalog of that name if this user may search it (else None: a 404, which does
    not tell a private catalog from a missing one). A name with a NUL, which PostgreSQL
    refuses in a query and no catalog has, is None too."""
    if "\x00" in name:
        return None
    return catalogs_searchable(user=user).filter(name=name).first()


@dataclasses.dataclass(frozen=True)
class LandmarkSummary:
    """One landmark of a catalog page (``landmark`` None: the images without one)."""

    landmark: Landmark | None
    image_count: int
    samples: list[CatalogImage]


def catalog_landmarks_page(
    *, catalog: Catalog, page: object, name_contains: str = "", per_page: int = 24, samples: int = 4
) -> Page:
    """One page of the catalog's landmarks (name order; ``name_contains`` filters them)
    with image counts and the first ``samples`` images of each; the images without a
    landmark come after the last one when no filter is given.

    ``page`` is whatever the query string said: invalid numbers give the first page, too
    large ones the last (``Paginator.get_page``).
    """
    landmarks = catalog_landmarks(catalog=catalog)
    if name_contains:
        landmarks = landmarks.filter(name__icontains=name_contains)
    paginator = Paginator(landmarks, per_page)
    current = paginator.get_page(page)
    ids = [landmark.pk for landmark in current.object_list]
    by_landmark: dict[int | None, list[CatalogImage]] = {}
    numbered = CatalogImage.objects.filter(catalog=catalog).annotate(
        row=Window(RowNumber(), partition_by=[F("landmark_id")], order_by=[F("id").asc()])
    )
    if ids:
        for image in numbered.filter(landmark_id__in=ids, row__lte=samples):
            by_landmark.setdefault(image.landmark_id, []).append(image)
    rows = [LandmarkSummary(lm, lm.image_count, by_landmark.get(lm.pk, [])) for lm in current.object_list]
    if not current.has_next() and not name_contains:
        orphans = catalog.images.filter(landmark__isnull=True)
        count = orphans.count()
        if count:
            rows.append(LandmarkSummary(None, count, list(numbered.filter(landmark__isnull=True, row__lte=samples))))
    current.object_list = rows
    return current


def catalog_image_get(*, user: object, image_id: int) -> CatalogImage | None:
    """A catalog photo for its page, if its catalog is one this user may search."""
    return (
        CatalogImage.objects.select_related("catalog", "landmark", "near_duplicate_of", "import_job")
        .filter(pk=image_id, catalog__in=catalogs_searchable(user=user))
        .first()
    )


def catalog_image_for_file(*, image_id: int) -> CatalogImage | None:
    """A catalog photo by id for its file and thumbnail (served as the file view always
    has: the results pages of any search link to them)."""
    return CatalogImage.objects.filter(pk=image_id).first()


@dataclasses.dataclass(frozen=True)
class JobRow:
    """One line of the jobs page: an import or a reindex with its progress and failures."""

    kind: str  # "import" or "reindex"
    job: ImportJob | ReindexJob
    progress: JobProgress
    failures: list[dict[str, object]]

    @property
    def anchor(self) -> str:
        return f"{self.kind}-{self.job.pk}"


def jobs_recent(*, limit: int = 15) -> list[JobRow]:
    """The running imports and reindexes and the latest finished ones (``limit`` of each
    kind), newest first."""
    imports = ImportJob.objects.select_related("catalog").order_by("-created_at")[:limit]
    reindexes = ReindexJob.objects.select_related("catalog", "model").order_by("-created_at")[:limit]
    rows = [
        JobRow("import", job, import_job_progress(job=job), [*job.refused, *import_job_failures(job=job, limit=20)])
        for job in imports
    ]
    for reindex in reindexes:
        failures: list[dict[str, object]] = [{"name": "job", "error": reindex.error}] if reindex.error else []
        rows.append(JobRow("reindex", reindex, reindex_job_progress(job=reindex), failures))
    rows.sort(key=lambda row: row.job.created_at, reverse=True)
    return rows


# --- The catalog API ----------------------------------------------------------------


def catalogs_with_counts(*, catalogs: QuerySet[Catalog]) -> QuerySet[Catalog]:
    """``catalogs`` with ``images_<status>``, ``image_count`` and ``landmark_count``
    annotated (one query; the API and the catalog pages)."""
    per_status = {
        f"images_{status}": Count("images", filter=Q(images__status=status), distinct=True)
        for status in CatalogImage.Status.values
    }
    return catalogs.select_related("active_model").annotate(
        **per_status,
        landmark_count=Count("landmarks", distinct=True),
        image_count=Count("images", distinct=True),
    )


def catalog_landmarks(*, catalog: Catalog) -> QuerySet[Landmark]:
    """The catalog's landmarks by name, with ``image_count`` annotated."""
    return catalog.landmarks.annotate(image_count=Count("images")).order_by("name", "id")


def catalog_images(
    *, catalog: Catalog, status: str | None = None, landmark: str | None = None
) -> QuerySet[CatalogImage]:
    """The catalog's images by id, optionally of one status and one landmark (by name)."""
    images = catalog.images.select_related("catalog", "landmark").order_by("id")
    if status:
        images = images.filter(status=status)
    if landmark:
        images = images.filter(landmark__name=landmark)
    return images


def image_get(*, image_id: int) -> CatalogImage | None:
    return CatalogImage.objects.select_related("catalog", "landmark").filter(pk=image_id).first()


def import_job_get(*, job_id: int) -> ImportJob | None:
    return ImportJob.objects.select_related("catalog").filter(pk=job_id).first()


def jobs_latest(*, catalog: Catalog | None = None, limit: int = 20) -> tuple[list[ImportJob], list[ReindexJob]]:
    """The latest import batches and reindex jobs, newest first (of one catalog, or all)."""
    imports = ImportJob.objects.select_related("catalog").order_by("-created_at", "-id")
    reindex = ReindexJob.objects.select_related("catalog", "model").order_by("-created_at", "-id")
    if catalog is not None:
        imports, reindex = imports.filter(catalog=catalog), reindex.filter(catalog=catalog)
    return list(imports[:limit]), list(reindex[:limit])
