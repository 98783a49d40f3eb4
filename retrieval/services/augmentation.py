"""Database-side augmentation (DBA) of a catalog's stored global descriptors.

Each row's DBA descriptor (``DescriptorAugmentation``, a table apart from the indexed
rows) is the weighted mean of its k nearest plain descriptors (``vision.expansion``). Two
ways to keep it current:

- **incremental** (new or re-extracted rows, the usual case): each changed row finds its
  ``POOL_FACTOR`` x k nearest rows through the model's HNSW index (one search), gets its
  DBA descriptor from the k nearest, and is merged into the neighbour lists that those
  rows keep with their DBA descriptors; the rows whose list changed are rewritten. The
  cost grows with the rows changed, not with the catalog.
- **full** (a catalog's first augmentation, a change of more than a tenth of its rows, or
  ``manage.py augment``): rows are streamed from a server-side cursor; up to
  ``LANDMARKS_DBA_EXACT_MAX_ROWS`` the kNN is exact (numpy blocks), above it every row
  goes through the index like the incremental path.

The HNSW index is on the plain descriptor, which is what DBA is defined on, and writing a
DBA descriptor never touches it: the cost of a new photo is one index search and a few
small row writes, not graph inserts.
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

# A row's DBA neighbours: (image id, cosine similarity), most similar first, itself first.
Neighbours = list[tuple[int, float]]

# A new row is offered to the stored lists of its POOL_FACTOR x k nearest rows, and before
# a deletion these rows of the deleted one are marked for a refresh.
POOL_FACTOR = 3
# Rows per batched kNN query and per write.
BATCH_ROWS = 200
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
    """Augment these rows from their neighbours found through the index, then merge each
    into the stored neighbour lists of the rows near it (its ``POOL_FACTOR`` x k nearest:
    a row it is a neighbour of need not be one of its own k nearest) and rewrite the rows
    whose list changed. Returns rows written."""
    changed = set(image_ids)
    joined: dict[int, dict[int, float]] = {}  # row -> {changed row near it: cosine}
    written = 0
    for batch in _batches(image_ids):
        nearest = nearest_plain(catalog=catalog, model=model, image_ids=batch, neighbours=POOL_FACTOR * neighbours)
        written += _augment_from_lists(model=model, lists={i: pairs[:neighbours] for i, pairs in nearest.items()})
        for image_id, pairs in nearest.items():
            for other, similarity in pairs:
                if other not in changed:
                    joined.setdefault(other, {})[image_id] = similarity
    rows = sorted(joined)
    for batch in _batches(rows):
        merged, unknown = _merged_lists(
            model=model, joined={i: joined[i] for i in batch}, changed=changed, neighbours=neighbours
        )
        written += _augment_from_lists(model=model, lists=merged)
        if unknown:
            nearest = nearest_plain(catalog=catalog, model=model, image_ids=unknown, neighbours=neighbours)
            written += _augment_from_lists(model=model, lists=nearest)
    return written


def _merged_lists(
    *, model: FeatureModel, joined: dict[int, dict[int, float]], changed: set[int], neighbours: int
) -> tuple[dict[int, Neighbours], list[int]]:
    """The new neighbour lists of rows that changed rows joined: each stored list plus the
    rows that joined it, the best k kept; lists that did not change are left out. Rows
    whose list is not stored or holds a changed or deleted row are returned apart (second
    value) for a search through the index."""
    stored = {
        image_id: list(zip(ids, sims, strict=True))
        for image_id, ids, sims in DescriptorAugmentation.objects.filter(
            descriptor__model=model, descriptor__image_id__in=list(joined)
        ).values_list("descriptor__image_id", "neighbours", "similarities")
    }
    listed = {other for pairs in stored.values() for other, _ in pairs}
    existing = set(ImageDescriptor.objects.filter(model=model, image_id__in=listed).values_list("image_id", flat=True))
    merged: dict[int, Neighbours] = {}
    unknown: list[int] = []
    for image_id, newcomers in joined.items():
        current = stored.get(image_id)
        # A list holding a changed row (re-extracted, or near a deleted photo) or a deleted
        # one is made again through the index: the next nearest row is not known.
        if not current or any(other in changed or other not in existing for other, _ in current):
            unknown.append(image_id)
            continue
        pairs = sorted(current + list(newcomers.items()), key=lambda pair: -pair[1])[:neighbours]
        if [other for other, _ in pairs] != [other for other, _ in current]:
            merged[image_id] = pairs
    return merged, unknown


def _augment_full(*, catalog: Catalog, model: FeatureModel, neighbours: int, total: int) -> int:
    if total <= settings.LANDMARKS_DBA_EXACT_MAX_ROWS:
        return _augment_exact(catalog=catalog, model=model, neighbours=neighbours)
    written = 0
    for batch in _stream_ids(catalog=catalog, model=model):
        nearest = nearest_plain(catalog=catalog, model=model, image_ids=batch, neighbours=neighbours)
        written += _augment_from_lists(model=model, lists=nearest)
    return written


def _augment_exact(*, catalog: Catalog, model: FeatureModel, neighbours: int) -> int:
    """Exact kNN over every row (numpy blocks), rows read through a server-side cursor,
    written in batches."""
    from retrieval.vision.expansion import augment_from_neighbours, exact_neighbours

    pks: list[int] = []
    image_ids: list[int] = []
    vectors: list[np.ndarray] = []
    with transaction.atomic(), connection.chunked_cursor() as cursor:
        cursor.execute(
            f"SELECT id, image_id, halfvec_send(embedding) FROM {ImageDescriptor._meta.db_table}"
            " WHERE catalog_id = %s AND model_id = %s",
            [catalog.pk, model.pk],
        )
        for pk, image_id, data in cursor:
            pks.append(pk)
            image_ids.append(image_id)
            vectors.append(selectors.halfvec_from_binary(data))
    if not image_ids:
        return 0
    base = np.stack(vectors)
    top, sims = exact_neighbours(base, neighbours=neighbours)
    for start in range(0, len(base), BATCH_ROWS):
        rows = slice(start, start + BATCH_ROWS)
        augmented = augment_from_neighbours(base[top[rows]], sims[rows], alpha=settings.LANDMARKS_EXPANSION_ALPHA)
        lists = [
            [(image_ids[j], float(s)) for j, s in zip(top[row], sims[row], strict=True)]
            for row in range(start, min(start + BATCH_ROWS, len(base)))
        ]
        _write(pks[rows], augmented, lists)
    return len(image_ids)


def _augment_from_lists(*, model: FeatureModel, lists: dict[int, Neighbours]) -> int:
    """Write the DBA descriptors of the rows in ``lists`` (image id -> its neighbours, most
    similar first) with those lists; returns rows written (rows deleted meanwhile are not)."""
    from retrieval.vision.expansion import augment_from_neighbours

    if not lists:
        return 0
    members = sorted({other for pairs in lists.values() for other, _ in pairs} | set(lists))
    plain = selectors.descriptor_vectors(model=model, image_ids=members, augmented=False)
    pk_of = _descriptor_pks(model=model, image_ids=list(lists))
    order = [i for i, pairs in lists.items() if i in pk_of and all(j in plain for j, _ in pairs)]
    if not order:
        return 0
    k = max(len(lists[i]) for i in order)
    stack = np.zeros((len(order), k, int(model.global_dim)), np.float32)
    sims = np.zeros((len(order), k), np.float32)  # padding weighs nothing
    for row, image_id in enumerate(order):
        for col, (other, similarity) in enumerate(lists[image_id]):
            stack[row, col] = plain[other]
            sims[row, col] = similarity
    augmented = augment_from_neighbours(stack, sims, alpha=settings.LANDMARKS_EXPANSION_ALPHA)
    _write([pk_of[i] for i in order], augmented, [lists[i] for i in order])
    return len(order)


def _descriptor_pks(*, model: FeatureModel, image_ids: list[int]) -> dict[int, int]:
    rows = ImageDescriptor.objects.filter(model=model, image_id__in=image_ids).values_list("image_id", "pk")
    return dict(rows)


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


def _write(pks: list[int], augmented: np.ndarray, lists: list[Neighbours]) -> None:
    """Insert or replace the DBA descriptors (len(pks), D) of descriptor rows ``pks`` with
    the neighbour lists they were made from, in one statement; rows deleted meanwhile are
    skipped (the join)."""
    if not pks:
        return
    table = DescriptorAugmentation._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (descriptor_id, embedding, neighbours, similarities)"
            " SELECT t.d, t.e::halfvec, t.n::bigint[], t.s::float8[]"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS t(d, e, n, s)"
            f" JOIN {ImageDescriptor._meta.db_table} i ON i.id = t.d"
            " ON CONFLICT (descriptor_id) DO UPDATE SET embedding = EXCLUDED.embedding,"
            " neighbours = EXCLUDED.neighbours, similarities = EXCLUDED.similarities",
            [
                pks,
                [selectors.halfvec_literal(vector) for vector in augmented],
                ["{" + ",".join(str(other) for other, _ in pairs) + "}" for pairs in lists],
                ["{" + ",".join(repr(float(similarity)) for _, similarity in pairs) + "}" for pairs in lists],
            ],
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
