from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from retrieval.management.commands.catalog_stats import Command
from retrieval.models import Catalog, CatalogImage, DescriptorAugmentation
from tests.factories import CatalogFactory, CatalogImageFactory, FeatureModelFactory, ImageDescriptorFactory

pytestmark = pytest.mark.django_db

# pg_column_size of a stored 8-dim halfvec: 1-byte short varlena header, int16 dim,
# int16 unused, 8 x 2-byte halves.
HALFVEC8_BYTES = 21


def stats_json(capsys: pytest.CaptureFixture[str], **options: Any) -> dict[str, Any]:
    call_command("catalog_stats", json=True, **options)
    return json.loads(capsys.readouterr().out)


def catalog_entry(stats: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [item for item in stats["catalogs"] if item["name"] == name]
    return entry


def add_descriptor(catalog: Catalog, *, local_bytes: int, model: Any, augmented: np.ndarray | None = None) -> None:
    image = CatalogImageFactory(catalog=catalog)
    row = ImageDescriptorFactory(image=image, model=model, local_features=b"x" * local_bytes)
    if augmented is not None:
        DescriptorAugmentation.objects.create(descriptor=row, embedding=augmented)


@pytest.fixture
def paris() -> Catalog:
    """Two rows of the active model (1000 and 3000 local bytes, one augmented) and one of an old model."""
    active, old = FeatureModelFactory(name="delg", version="v2"), FeatureModelFactory(name="delg", version="v1")
    catalog = CatalogFactory(name="paris", active_model=active)
    add_descriptor(catalog, local_bytes=1000, model=active)
    add_descriptor(catalog, local_bytes=3000, model=active, augmented=np.ones(8, dtype=np.float32))
    add_descriptor(catalog, local_bytes=50_000, model=old)
    return catalog


def test_it_reports_local_bytes_of_the_active_model_rows(paris: Catalog, capsys) -> None:
    entry = catalog_entry(stats_json(capsys), "paris")
    assert entry["active_model"] == {"name": "delg", "version": "v2"}
    assert entry["descriptor_rows"] == 2
    assert entry["local_bytes_per_image"] == 2000.0
    assert entry["local_bytes_max"] == 3000


def test_it_adds_the_augmented_vector_to_the_global_bytes(paris: Catalog, capsys) -> None:
    entry = catalog_entry(stats_json(capsys), "paris")
    assert entry["global_bytes_per_image"] == (HALFVEC8_BYTES + 2 * HALFVEC8_BYTES) / 2


def test_it_lists_the_rows_of_every_model_of_the_catalog(paris: Catalog, capsys) -> None:
    entry = catalog_entry(stats_json(capsys), "paris")
    assert entry["models"] == [
        {"name": "delg", "version": "v1", "rows": 1},
        {"name": "delg", "version": "v2", "rows": 2},
    ]


def test_it_measures_every_row_when_no_model_is_active(capsys) -> None:
    catalog = CatalogFactory(name="fresh")
    add_descriptor(catalog, local_bytes=1000, model=FeatureModelFactory(version="a"))
    add_descriptor(catalog, local_bytes=2000, model=FeatureModelFactory(version="b"))
    entry = catalog_entry(stats_json(capsys), "fresh")
    assert entry["active_model"] is None
    assert (entry["descriptor_rows"], entry["local_bytes_per_image"], entry["local_bytes_max"]) == (2, 1500.0, 2000)


def test_it_counts_images_per_status(paris: Catalog, capsys) -> None:
    CatalogImageFactory.create_batch(2, catalog=paris, status=CatalogImage.Status.PENDING)
    CatalogImageFactory(catalog=paris, status=CatalogImage.Status.FAILED)
    entry = catalog_entry(stats_json(capsys), "paris")
    assert entry["status"] == {"pending": 2, "processing": 0, "indexed": 3, "failed": 1}
    assert (entry["images"], entry["indexed"]) == (6, 3)


def test_an_empty_catalog_has_no_means(capsys) -> None:
    CatalogFactory(name="empty")
    entry = catalog_entry(stats_json(capsys), "empty")
    assert entry["images"] == entry["descriptor_rows"] == 0
    assert entry["local_bytes_per_image"] is entry["local_bytes_max"] is entry["global_bytes_per_image"] is None


def test_catalog_option_reports_only_that_catalog(paris: Catalog, capsys) -> None:
    CatalogFactory(name="rome")
    stats = stats_json(capsys, catalog="rome")
    assert [item["name"] for item in stats["catalogs"]] == ["rome"]


def test_an_unknown_catalog_raises_a_command_error() -> None:
    with pytest.raises(CommandError, match="no catalog named 'nowhere'"):
        call_command("catalog_stats", catalog="nowhere", json=True)


def test_an_unknown_catalog_exits_non_zero_from_the_command_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        Command().run_from_argv(["manage.py", "catalog_stats", "--catalog", "nowhere", "--json"])
    assert exit_info.value.code == 1
    assert "no catalog named 'nowhere'" in capsys.readouterr().err


def test_it_reports_database_and_table_sizes(paris: Catalog, capsys) -> None:
    stats = stats_json(capsys)
    assert stats["database_bytes"] > 0
    tables = {table["name"]: table for table in stats["tables"]}
    assert all(name.startswith("retrieval_") for name in tables)
    descriptors = tables["retrieval_imagedescriptor"]
    assert descriptors["table_bytes"] > 0 and descriptors["index_bytes"] > 0
    assert descriptors["total_bytes"] == descriptors["table_bytes"] + descriptors["index_bytes"]


def test_it_lists_hnsw_indexes_with_their_size(capsys) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE INDEX test_stats_hnsw ON retrieval_imagedescriptor "
            "USING hnsw ((embedding::halfvec(8)) halfvec_cosine_ops)"
        )
    indexes = {index["name"]: index["bytes"] for index in stats_json(capsys)["hnsw_indexes"]}
    assert indexes["test_stats_hnsw"] > 0


def test_the_search_working_set_counts_the_hnsw_indexes(capsys) -> None:
    before = stats_json(capsys)["search_working_set_bytes"]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE INDEX test_stats_hnsw ON retrieval_imagedescriptor "
            "USING hnsw ((embedding::halfvec(8)) halfvec_cosine_ops)"
        )
        cursor.execute("SELECT pg_relation_size('test_stats_hnsw')")
        (index_bytes,) = cursor.fetchone()
    assert stats_json(capsys)["search_working_set_bytes"] - before == index_bytes > 0


def test_the_search_working_set_leaves_out_the_local_feature_blobs(paris: Catalog, capsys) -> None:
    before = stats_json(capsys)["search_working_set_bytes"]
    blob = np.random.default_rng(0).bytes(400_000)  # incompressible: stored out of line (TOAST)
    ImageDescriptorFactory(image=CatalogImageFactory(catalog=paris), model=paris.active_model, local_features=blob)
    assert stats_json(capsys)["search_working_set_bytes"] - before < 40_000


def test_without_json_it_prints_one_line_per_catalog_then_the_database(paris: Catalog, capsys) -> None:
    call_command("catalog_stats")
    lines = capsys.readouterr().out.splitlines()
    (paris_line,) = [line for line in lines if line.startswith("paris ")]
    # images, indexed, local KiB/img mean and max, global bytes/img, active model
    assert paris_line.split() == ["paris", "3", "3", "2.0", "2.9", "32", "delg@v2"]
    assert any(line.startswith("database: ") for line in lines)
    assert any(line.startswith("retrieval_imagedescriptor ") for line in lines)
