from __future__ import annotations

import pytest
from django.db import connection

from retrieval import services
from retrieval.storage_stats import SEARCH_TABLES, hnsw_index_sizes
from tests.factories import CatalogFactory, CatalogImageFactory, ImageDescriptorFactory, feature_model_with_index

pytestmark = pytest.mark.django_db


def cached_blocks(relation: str) -> int:
    """Blocks of ``relation`` in PostgreSQL's shared buffers now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_buffercache WHERE relfilenode = pg_relation_filenode(%s::regclass)"
            " AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [relation],
        )
        return int(cursor.fetchone()[0])


@pytest.fixture
def hnsw_index() -> str:
    """The HNSW index of a model with 200 descriptor rows, evicted from shared buffers."""
    model = feature_model_with_index("prewarm-test")
    catalog = CatalogFactory(active_model=model)
    for _ in range(200):
        ImageDescriptorFactory(image=CatalogImageFactory(catalog=catalog), catalog=catalog, model=model)
    index = model.hnsw_index_name
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        cursor.execute("SELECT pg_buffercache_evict_relation(%s::regclass)", [index])
    assert cached_blocks(index) == 0
    return index


def test_prewarm_reads_an_evicted_hnsw_index_back_whole(hnsw_index: str) -> None:
    relations = {relation.name: relation for relation in services.search_working_set_prewarm()}

    assert relations[hnsw_index].blocks > 1
    assert relations[hnsw_index].blocks * 8192 == relations[hnsw_index].bytes
    assert cached_blocks(hnsw_index) == relations[hnsw_index].blocks


def test_prewarm_reads_the_search_tables_first_and_the_hnsw_indexes_last(hnsw_index: str) -> None:
    names = [relation.name for relation in services.search_working_set_prewarm()]

    assert set(SEARCH_TABLES) <= set(names)
    assert names[: len(SEARCH_TABLES)] == sorted(SEARCH_TABLES)
    hnsw = {entry["name"] for entry in hnsw_index_sizes()}
    assert hnsw_index in hnsw
    assert set(names[-len(hnsw) :]) == hnsw
