"""Read-only storage figures: images per status and descriptor bytes per catalog,
database, table and HNSW index sizes (``manage.py catalog_stats``).

Every size is computed by PostgreSQL (aggregates, ``pg_*_size``); no blob is loaded.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Avg, BigIntegerField, Count, F, Func, Max, Value
from django.db.models.functions import Coalesce

from retrieval import selectors
from retrieval.errors import NotFound
from retrieval.models import Catalog, CatalogImage, ImageDescriptor

TABLE_PREFIX = "retrieval_"


def _sql_function(function: str, field: str) -> Func:
    return Func(F(field), function=function, output_field=BigIntegerField())


def catalog_storage_stats(*, catalog: str | None = None) -> dict[str, Any]:
    """Storage figures for every catalog, or only ``catalog`` (:class:`NotFound` if absent).

    Returns ``{"catalogs": [...], "database_bytes": int, "tables": [...], "hnsw_indexes": [...]}``;
    see :func:`_catalog_stats` for one catalog's entry.
    """
    catalogs = Catalog.objects.select_related("active_model").order_by("name")
    if catalog is not None:
        catalogs = catalogs.filter(name=catalog)
        if not catalogs.exists():
            raise NotFound(f"no catalog named {catalog!r}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        (database_bytes,) = cursor.fetchone()
    return {
        "catalogs": [_catalog_stats(item) for item in catalogs],
        "database_bytes": int(database_bytes),
        "tables": table_sizes(),
        "hnsw_indexes": hnsw_index_sizes(),
        "search_working_set_bytes": search_working_set_bytes(),
    }


def _catalog_stats(catalog: Catalog) -> dict[str, Any]:
    """Image counts and descriptor bytes of one catalog.

    The byte figures cover the active model's rows (all rows while ``active_model`` is
    None): ``local_bytes_*`` is ``octet_length(local_features)``, ``global_bytes_per_image``
    the mean of ``pg_column_size(embedding)`` plus that of its DBA descriptor when set.
    Means are None when there are no rows.
    """
    status = selectors.catalog_status_counts(catalog=catalog)
    descriptors = ImageDescriptor.objects.filter(catalog=catalog)
    active = catalog.active_model
    measured = descriptors.filter(model=active) if active is not None else descriptors
    sizes = measured.aggregate(
        rows=Count("id"),
        local_mean=Avg(_sql_function("octet_length", "local_features")),
        local_max=Max(_sql_function("octet_length", "local_features")),
        global_mean=Avg(
            _sql_function("pg_column_size", "embedding")
            + Coalesce(_sql_function("pg_column_size", "augmentation__embedding"), Value(0))
        ),
    )
    models = (
        descriptors.values("model__name", "model__version")
        .annotate(rows=Count("id"))
        .order_by("model__name", "model__version")
    )
    return {
        "name": catalog.name,
        "images": sum(status.values()),
        "status": status,
        "indexed": status[CatalogImage.Status.INDEXED],
        "active_model": {"name": active.name, "version": active.version} if active is not None else None,
        "descriptor_rows": sizes["rows"],
        "local_bytes_per_image": _float_or_none(sizes["local_mean"]),
        "local_bytes_max": sizes["local_max"],
        "global_bytes_per_image": _float_or_none(sizes["global_mean"]),
        "models": [{"name": m["model__name"], "version": m["model__version"], "rows": m["rows"]} for m in models],
    }


def table_sizes() -> list[dict[str, Any]]:
    """``{name, table_bytes, index_bytes, total_bytes}`` of the ``retrieval_*`` tables, largest first.

    ``table_bytes`` includes TOAST (where the local-feature blobs live).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() AND starts_with(c.relname, %s) "
            "ORDER BY 4 DESC, 1",
            [TABLE_PREFIX],
        )
        rows = cursor.fetchall()
    return [
        {"name": name, "table_bytes": int(table), "index_bytes": int(index), "total_bytes": int(total)}
        for name, table, index, total in rows
    ]


# What a search reads besides the candidates' local features: the descriptor rows (their
# global descriptors are stored in-row), the DBA descriptors, the images' rows, and the
# indexes of all three (the HNSW indexes among them).
SEARCH_TABLES = ("retrieval_imagedescriptor", "retrieval_descriptoraugmentation", "retrieval_catalogimage")


def search_working_set_bytes() -> int:
    """Bytes a search may read apart from the local-feature blobs (TOAST not counted):
    the main fork of the :data:`SEARCH_TABLES` and all their indexes. With less memory
    than this for PostgreSQL's cache and the OS page cache together, searches of a large
    catalog wait on disk reads (bench/README.md, ``scale.py``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(sum(pg_relation_size(c.oid) + pg_indexes_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = ANY(%s)",
            [list(SEARCH_TABLES)],
        )
        (total,) = cursor.fetchone()
    return int(total)


def hnsw_index_sizes() -> list[dict[str, Any]]:
    """``{name, bytes}`` of every HNSW index in the current schema, largest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, pg_relation_size(format('%%I.%%I', schemaname, indexname)::regclass) AS size "
            "FROM pg_indexes WHERE schemaname = current_schema() AND indexdef ILIKE %s "
            "ORDER BY size DESC, indexname",
            ["%hnsw%"],
        )
        rows = cursor.fetchall()
    return [{"name": name, "bytes": int(size)} for name, size in rows]


def _float_or_none(value: float | None) -> float | None:
    return float(value) if value is not None else None
