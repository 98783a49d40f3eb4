"""Database-side augmentation (DBA) of a catalog's stored global descriptors.

Each row's DBA descriptor (``DescriptorAugmentation``, a table apart from the indexed
rows) is the weighted mean of its k nearest plain descriptors (``vision.expansion``). Two
ways to keep it current:

- **incremental** (new or re-extracted rows, the usual case): each changed row finds its
  neighbours through the model's HNSW index, and the rows it joined as a neighbour are
  recomputed the same way, in bounded batches. The cost grows with the rows changed, not
  with the catalog.
- **full** (a catalog's first augmentation, a change of more than a tenth of its rows, or
  ``manage.py augment``): rows are streamed from a server-side cursor; up to
  ``LANDMARKS_DBA_EXACT_MAX_ROWS`` the kNN is exact (numpy blocks), above it every row
  goes through the index like the incremental path.

The HNSW index is on the plain descriptor, which is what DBA is defined on, and writing a
DBA descriptor never touches it: the cost of a new photo is its neighbours' queries and a
few small row writes, not graph inserts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from retrieval import selectors
from retrieval.models import Catalog, CatalogImage, DescriptorAugmentation, FeatureModel, ImageDescriptor

logger = logging.getLogger(__name__)

# Before a deletion, the rows within this multiple of k of the deleted one are refreshed.
POOL_FACTOR = 3
# Rows per batched kNN query and per write.
BATCH_ROWS = 200
# A recomputed descriptor this close to the stored one is the same up to halfvec rounding.
UNCHANGED_COSINE = 0.99995
# A change of more than this share of a catalog's rows is augmented in full.
INCREMENTAL_MAX_SHARE = 0.1


def catalog_augment(*, catalog_id: int, full: bool = False) -> int:
    """Bring a catalog's augmented descriptors up to date (Celery worker).

    Waits (re-schedules itself) while images of the catalog are still being indexed, so a
    bulk import is augmented once at its end. Returns the number of rows written.
    """
    from retrieval.services.catalogs import send_augmentation

    catalog = Catalog.objects.filter(pk=catalog_id).first()
    if catalog is None:
        return 0
    busy = catalog.images.filter(status__in=[CatalogImage.Status.PENDING, CatalogImage.Status.PROCESSING])
    if busy.exists():
        transaction.on_commit(lambda: send_augmentation(catalog_id))
        return 0
    # The sweep may send this task too (after a broker outage): only one run takes it.
    if not Catalog.objects.filter(pk=catalog_id, augment_pending=True).update(augment_pending=False):
        return 0
    # Rows written while this runs are newer than the mark, so the next run takes them.
    started = timezone.now()
    since = None if full else catalog.augmented_at
    k = settings.LANDMARKS_DBA_NEIGHBOURS
    written = 0
    for model in FeatureModel.objects.filter(descriptors__catalog=catalog).distinct():
        written += descriptors_augment(catalog=catalog, model=model, since=since, neighbours=k)
    Catalog.objects.filter(pk=catalog_id).update(augmented_at=started)
    logger.info("catalog %s: augmented %d descriptors", catalog.name, written)
    return written


def descriptors_augment(*, catalog: Catalog, model: FeatureModel, since: object, neighbours: int) -> int:
    """Augment the rows of one model in one catalog changed after ``since`` (a datetime;
    None: all rows). Chooses the incremental or the full way; returns rows written."""
    rows = ImageDescriptor.objects.filter(catalog=catalog, model=model)
    total = rows.count()
    if since is None:
        return _augment_full(catalog=catalog, model=model, neighbours=neighbours, total=total)
    changed = list(
        rows.filter(Q(augmentation__isnull=True) | Q(updated_at__gt=since)).values_list("image_id", flat=True)
    )
    if not changed:
        return 0
    if len(changed) > INCREMENTAL_MAX_SHARE * total:
        return _augment_full(catalog=catalog, model=model, neighbours=neighbours, total=total)
    return descriptors_augment_incremental(catalog=catalog, model=model, image_ids=changed, neighbours=neighbours)


def descriptors_augment_incremental(
    *, catalog: Catalog, model: FeatureModel, image_ids: list[int], neighbours: int
) -> int:
    """Augment these rows from their index neighbours, then refresh the rows they joined
    (each changed row's own neighbours: at most k per changed row). Returns rows written."""
    joined: set[int] = set()
    for batch in _batches(image_ids):
        joined |= _augment_rows(catalog=catalog, model=model, image_ids=batch, neighbours=neighbours)
    refreshed = sorted(joined - set(image_ids))
    for batch in _batches(refreshed):
        _augment_rows(catalog=catalog, model=model, image_ids=batch, neighbours=neighbours)
    return len(image_ids) + len(refreshed)


def _augment_full(*, catalog: Catalog, model: FeatureModel, neighbours: int, total: int) -> int:
    if total <= settings.LANDMARKS_DBA_EXACT_MAX_ROWS:
        return _augment_exact(catalog=catalog, model=model, neighbours=neighbours)
    written = 0
    for batch in _stream_ids(catalog=catalog, model=model):
        _augment_rows(catalog=catalog, model=model, image_ids=batch, neighbours=neighbours)
        written += len(batch)
    return written


def _augment_exact(*, catalog: Catalog, model: FeatureModel, neighbours: int) -> int:
    """Exact kNN over every row (numpy blocks), rows read through a server-side cursor."""
    from retrieval.vision.expansion import database_side_augmentation

    pks: list[int] = []
    vectors: list[np.ndarray] = []
    with transaction.atomic():
        rows = ImageDescriptor.objects.filter(catalog=catalog, model=model).values_list("pk", "embedding")
        for pk, vector in rows.iterator(chunk_size=2000):
            pks.append(pk)
            vectors.append(np.asarray(vector, np.float32))
    if not pks:
        return 0
    augmented = database_side_augmentation(
        np.stack(vectors), neighbours=neighbours, alpha=settings.LANDMARKS_EXPANSION_ALPHA
    )
    _write(pks, augmented)
    return len(pks)


def _augment_rows(*, catalog: Catalog, model: FeatureModel, image_ids: list[int], neighbours: int) -> set[int]:
    """Recompute the DBA descriptors of these rows from their k nearest plain descriptors
    found through the index; returns the neighbours' image ids."""
    from retrieval.vision.expansion import augment_from_neighbours

    nearest = nearest_plain(catalog=catalog, model=model, image_ids=image_ids, neighbours=neighbours)
    members = {i for pairs in nearest.values() for i, _ in pairs}
    # The plain descriptors only (parsing a halfvec costs more than fetching it), and the
    # rows' primary keys for the write, in one query.
    rows = ImageDescriptor.objects.filter(model=model, image_id__in=sorted(members | set(nearest)))
    plain, pk_of = {}, {}
    for image_id, pk, vector in rows.values_list("image_id", "pk", "embedding"):
        plain[image_id] = np.asarray(vector, np.float32)
        pk_of[image_id] = pk
    order = [i for i in image_ids if i in nearest and i in pk_of and all(j in plain for j, _ in nearest[i])]
    if not order:
        return members
    dim = int(model.global_dim)
    stack = np.zeros((len(order), neighbours, dim), np.float32)
    sims = np.zeros((len(order), neighbours), np.float32)  # padding weighs nothing
    for row, image_id in enumerate(order):
        for col, (other, similarity) in enumerate(nearest[image_id]):
            stack[row, col] = plain[other]
            sims[row, col] = similarity
    augmented = augment_from_neighbours(stack, sims, alpha=settings.LANDMARKS_EXPANSION_ALPHA)
    # A row that the new one did not enter keeps its neighbours and so its descriptor:
    # no write for it.
    current = dict(
        DescriptorAugmentation.objects.filter(pk__in=[pk_of[i] for i in order]).values_list("pk", "embedding")
    )
    changed = [
        row for row, image_id in enumerate(order)
        if current.get(pk_of[image_id]) is None
        or float(np.asarray(current[pk_of[image_id]], np.float32) @ augmented[row]) < UNCHANGED_COSINE
    ]  # fmt: skip
    _write([pk_of[order[row]] for row in changed], augmented[changed])
    return members


def nearest_plain(
    *, catalog: Catalog, model: FeatureModel, image_ids: list[int], neighbours: int
) -> dict[int, list[tuple[int, float]]]:
    """For each row, its ``neighbours`` nearest rows of the catalog by plain cosine (itself
    first), through the model's HNSW index: one query for the whole batch."""
    if not image_ids:
        return {}
    dim = int(model.global_dim)
    table = ImageDescriptor._meta.db_table
    indexed = selectors.search_vector_sql(model, alias="d")  # the index's expression
    sql = (
        f"SELECT q.image_id, n.image_id, n.similarity FROM {table} q CROSS JOIN LATERAL ("
        f" SELECT d.image_id, 1 - ({indexed} <=> q.embedding::halfvec({dim})) AS similarity"
        f" FROM {table} d WHERE d.model_id = {int(model.pk)} AND d.catalog_id = %(catalog)s"
        f" ORDER BY {indexed} <=> q.embedding::halfvec({dim}) LIMIT %(neighbours)s) n"
        f" WHERE q.model_id = {int(model.pk)} AND q.image_id = ANY(%(ids)s)"
    )
    found: dict[int, list[tuple[int, float]]] = {image_id: [] for image_id in image_ids}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [min(1000, max(40, neighbours))])
        cursor.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        cursor.execute(sql, {"catalog": catalog.pk, "neighbours": neighbours, "ids": list(image_ids)})
        for image_id, other, similarity in cursor.fetchall():
            found[image_id].append((other, float(similarity)))
    result = {}
    for image_id, pairs in found.items():
        if not pairs:
            continue  # no descriptor of this model (deleted meanwhile)
        if all(other != image_id for other, _ in pairs):
            pairs.append((image_id, 1.0))  # a row is always its own first neighbour
        result[image_id] = sorted(pairs, key=lambda pair: -pair[1])[:neighbours]
    return result


def _write(pks: list[int], augmented: np.ndarray) -> None:
    """Insert or replace the DBA descriptors of descriptor rows ``pks``: (len(pks), D)."""
    objects = [DescriptorAugmentation(descriptor_id=pk, embedding=augmented[i]) for i, pk in enumerate(pks)]
    with transaction.atomic():
        DescriptorAugmentation.objects.bulk_create(
            objects, batch_size=500, update_conflicts=True, unique_fields=["descriptor"], update_fields=["embedding"]
        )


def _batches(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), BATCH_ROWS):
        yield ids[start : start + BATCH_ROWS]


def _stream_ids(*, catalog: Catalog, model: FeatureModel) -> Iterator[list[int]]:
    """Image ids of the rows in batches, by keyset paging (no long-held cursor)."""
    last = 0
    while True:
        batch = list(
            ImageDescriptor.objects.filter(catalog=catalog, model=model, image_id__gt=last)
            .order_by("image_id")
            .values_list("image_id", flat=True)[:BATCH_ROWS]
        )
        if not batch:
            return
        yield batch
        last = batch[-1]


def descriptors_touch_neighbours(*, image: CatalogImage) -> int:
    """Before ``image`` is deleted: mark the rows it is likely a DBA neighbour of as
    changed, so that the next incremental run recomputes them without it. DBA neighbours
    are not symmetric; its ``POOL_FACTOR`` x k nearest rows cover them in practice (a full
    rebuild, ``manage.py augment``, is exact). Returns the rows marked."""
    k = settings.LANDMARKS_DBA_NEIGHBOURS
    if k <= 1:
        return 0
    touched = 0
    for model in FeatureModel.objects.filter(descriptors__image=image).distinct():
        nearest = nearest_plain(catalog=image.catalog, model=model, image_ids=[image.pk], neighbours=POOL_FACTOR * k)
        others = [other for other, _ in nearest.get(image.pk, []) if other != image.pk]
        touched += ImageDescriptor.objects.filter(model=model, image_id__in=others).update(updated_at=timezone.now())
    return touched
