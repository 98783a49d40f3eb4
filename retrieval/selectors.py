"""Reads: the pgvector shortlist and listings."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
from django.db import connection, transaction
from django.db.models import Count, QuerySet

from retrieval.models import Catalog, CatalogImage, FeatureModel, ImageDescriptor, ReindexJob, SearchQuery
from retrieval.vision.features import LocalFeatures


@dataclasses.dataclass(frozen=True)
class Candidate:
    image_id: int
    similarity: float


def search_vector_sql(model: FeatureModel) -> str:
    """The indexed expression: the DBA descriptor where computed, else the plain one."""
    return f"(COALESCE(embedding_aug, embedding)::halfvec({int(model.global_dim)}))"


def shortlist_sql(model: FeatureModel) -> str:
    """The nearest-neighbour query served by the model's partial HNSW index.

    The ORDER BY expression and the ``model_id`` predicate match the index definition in
    ``services.feature_model_ensure`` exactly; otherwise PostgreSQL cannot use it.
    """
    dim = int(model.global_dim)
    table = ImageDescriptor._meta.db_table
    vector = search_vector_sql(model)
    return (
        f"SELECT image_id, {vector} <=> %(q)s::halfvec({dim}) AS distance "
        f"FROM {table} WHERE model_id = {int(model.pk)} AND catalog_id = %(catalog)s "
        f"ORDER BY {vector} <=> %(q)s::halfvec({dim}) LIMIT %(limit)s"
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
    """Global descriptors by image id: (D,) float32; ``augmented`` prefers the DBA ones."""
    rows = ImageDescriptor.objects.filter(model=model, image_id__in=image_ids).values_list(
        "image_id", "embedding", "embedding_aug"
    )
    return {
        image_id: np.asarray(aug if (augmented and aug is not None) else plain, np.float32)
        for image_id, plain, aug in rows
    }


def descriptor_shortlist(
    *, catalog: Catalog, model: FeatureModel, query: np.ndarray, limit: int, ef_search: int = 200
) -> list[Candidate]:
    """The ``limit`` catalog images whose global descriptors are closest (cosine) to ``query``.

    Args:
        query: (D,) float32, L2-normalised, D == model.global_dim.
    Uses pgvector's iterative index scan so that filtering by catalog still returns
    ``limit`` rows when several catalogs share the index.
    """
    if query.shape != (model.global_dim,):
        raise ValueError(f"query descriptor must be ({model.global_dim},), got {query.shape}")
    vector = "[" + ",".join(f"{float(v):.6g}" for v in query) + "]"
    with transaction.atomic(), connection.cursor() as cursor:
        # ef_search is capped at pgvector's maximum (1000); the iterative scan returns
        # more rows than ef_search when the limit asks for them.
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [min(1000, max(ef_search, limit))])
        cursor.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        cursor.execute(shortlist_sql(model), {"q": vector, "catalog": catalog.pk, "limit": limit})
        rows = cursor.fetchall()
    return [Candidate(image_id=row[0], similarity=1.0 - float(row[1])) for row in rows]


def local_features_for(*, model: FeatureModel, image_ids: list[int]) -> dict[int, LocalFeatures]:
    rows = ImageDescriptor.objects.filter(model=model, image_id__in=image_ids).values_list(
        "image_id", "local_features"
    )
    return {image_id: LocalFeatures.from_bytes(bytes(blob)) for image_id, blob in rows}


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
