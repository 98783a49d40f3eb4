"""Reading what a search needs into PostgreSQL's cache before the first search asks for it.

At a million photos a search on a cold cache waits on thousands of random reads of the
HNSW index (bench/README.md, ``scale.py``). The search worker calls
:func:`search_working_set_prewarm` when it starts (``searchsite.celery``), and operators
may run it with ``manage.py prewarm``. The local-feature blobs are not read: a search
reads ten to a hundred of them, and they are the bulk of the database.
"""

from __future__ import annotations

import dataclasses
import logging

from django.db import DatabaseError, connection, transaction

from retrieval.errors import ServiceUnavailable
from retrieval.storage_stats import SEARCH_TABLES

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PrewarmedRelation:
    """A table or index read into shared buffers: ``blocks`` of 8 kB, ``bytes`` in all."""

    name: str
    blocks: int
    bytes: int


def search_working_set_prewarm() -> list[PrewarmedRelation]:
    """Read the search tables and all their indexes (the HNSW indexes among them) into
    PostgreSQL's shared buffers with ``pg_prewarm``: tables, then B-tree indexes, then the
    HNSW indexes, so that when they do not all fit the HNSW pages (the random reads) are the
    ones that stay; pages pushed out stay in the OS page cache while memory allows.

    Raises:
        ServiceUnavailable: the server has no ``pg_prewarm`` extension or may not create it.
    """
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    except DatabaseError as exc:
        raise ServiceUnavailable(f"pg_prewarm is not available on this PostgreSQL server: {str(exc).strip()}") from None
    tables = list(SEARCH_TABLES)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.oid::regclass::text, pg_relation_size(c.oid) FROM pg_class c"
            " LEFT JOIN pg_am am ON am.oid = c.relam"
            " WHERE c.oid = ANY(%s::regclass[])"
            " OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = ANY(%s::regclass[]))"
            " ORDER BY c.relkind = 'i', am.amname IS NOT DISTINCT FROM 'hnsw', 1",
            [tables, tables],
        )
        relations = cursor.fetchall()
        done = []
        for name, size in relations:
            cursor.execute("SELECT pg_prewarm(%s)", [name])
            done.append(PrewarmedRelation(name=name, blocks=int(cursor.fetchone()[0]), bytes=int(size)))
    logger.info("prewarmed %d relations, %.1f MB", len(done), sum(r.bytes for r in done) / 1e6)
    return done
