"""The pgvector shortlist against the real PostgreSQL: order, filtering, index use."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from retrieval import selectors
from retrieval.models import DescriptorAugmentation, FeatureModel
from tests.factories import CatalogFactory, ImageDescriptorFactory, feature_model_with_index

pytestmark = pytest.mark.django_db


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


@pytest.fixture
def model() -> FeatureModel:
    return feature_model_with_index("unit-test-model")


def test_feature_model_ensure_creates_a_partial_hnsw_index(model: FeatureModel) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [model.hnsw_index_name])
        (definition,) = cursor.fetchone()
    assert "USING hnsw" in definition
    assert "halfvec_cosine_ops" in definition
    assert f"model_id = {model.pk}" in definition


def test_the_index_is_built_with_the_configured_graph_settings(settings) -> None:
    settings.LANDMARKS_HNSW_M, settings.LANDMARKS_HNSW_EF_CONSTRUCTION = 24, 128
    model = feature_model_with_index("dense-graph-model")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [model.hnsw_index_name])
        (definition,) = cursor.fetchone()
    assert "m='24'" in definition and "ef_construction='128'" in definition, definition


def test_shortlist_returns_nearest_images_first_with_cosine_similarity(model: FeatureModel) -> None:
    catalog = CatalogFactory()
    rng = np.random.default_rng(0)
    query = _unit(rng.normal(size=8).tolist())
    near = ImageDescriptorFactory(image__catalog=catalog, model=model, embedding=_unit((query + 0.05).tolist()))
    far = ImageDescriptorFactory(image__catalog=catalog, model=model, embedding=-query)
    mid = ImageDescriptorFactory(
        image__catalog=catalog, model=model, embedding=_unit((query + rng.normal(size=8)).tolist())
    )
    result = selectors.descriptor_shortlist(catalog=catalog, model=model, query=query, limit=10)
    assert [c.image_id for c in result] == [near.image_id, mid.image_id, far.image_id]
    assert result[0].similarity == pytest.approx(float(query @ near.embedding), abs=2e-3)
    assert result[-1].similarity == pytest.approx(-1.0, abs=2e-3)


def test_shortlist_ranks_the_index_pool_by_the_augmented_descriptors(model: FeatureModel) -> None:
    catalog = CatalogFactory()
    query = _unit([1, 0, 0, 0, 0, 0, 0, 0])
    plain_nearer = ImageDescriptorFactory(
        image__catalog=catalog, model=model, embedding=_unit([1, 0.3, 0, 0, 0, 0, 0, 0])
    )
    augmented = ImageDescriptorFactory(image__catalog=catalog, model=model, embedding=_unit([1, 0, 0.6, 0, 0, 0, 0, 0]))
    DescriptorAugmentation.objects.create(descriptor=augmented, embedding=query)
    result = selectors.descriptor_shortlist(catalog=catalog, model=model, query=query, limit=10)
    assert [c.image_id for c in result] == [augmented.image_id, plain_nearer.image_id]
    assert result[0].similarity == pytest.approx(1.0, abs=2e-3)


def test_shortlist_stays_within_the_catalog_and_the_model(model: FeatureModel) -> None:
    mine, other = CatalogFactory(), CatalogFactory()
    query = _unit([1, 0, 0, 0, 0, 0, 0, 0])
    kept = ImageDescriptorFactory(image__catalog=mine, model=model, embedding=query)
    ImageDescriptorFactory(image__catalog=other, model=model, embedding=query)
    old_model = FeatureModel.objects.create(name="old", version="0", global_dim=8, local_dim=4)
    ImageDescriptorFactory(image__catalog=mine, model=old_model, embedding=query)
    result = selectors.descriptor_shortlist(catalog=mine, model=model, query=query, limit=10)
    assert [c.image_id for c in result] == [kept.image_id]


def test_shortlist_query_uses_the_hnsw_index(model: FeatureModel) -> None:
    catalog = CatalogFactory()
    with connection.cursor() as cursor:  # 5000 images with random descriptors, then fresh statistics
        cursor.execute(
            "INSERT INTO retrieval_catalogimage (catalog_id, file, original_name, external_id, sha256, status,"
            " failure_reason, created_at, updated_at) SELECT %s, 'x.jpg', '', '', md5(i::text), 'indexed', '',"
            " now(), now() FROM generate_series(1, 5000) AS i",
            [catalog.pk],
        )
        cursor.execute(
            "INSERT INTO retrieval_imagedescriptor (image_id, catalog_id, model_id, embedding, local_features,"
            " num_local, created_at) SELECT id, catalog_id, %s, ARRAY[random(), random(), random(), random(),"
            " random(), random(), random(), random()]::halfvec, ''::bytea, 0, now()"
            " FROM retrieval_catalogimage WHERE catalog_id = %s",
            [model.pk, catalog.pk],
        )
        cursor.execute("ANALYZE retrieval_imagedescriptor")
        vector = "[" + ",".join(["0.35"] * 8) + "]"
        cursor.execute(
            "EXPLAIN " + selectors.shortlist_sql(model), {"q": vector, "catalog": catalog.pk, "limit": 100, "pool": 200}
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using {model.hnsw_index_name}" in plan, plan


def test_shortlist_refuses_a_descriptor_of_the_wrong_dimension(model: FeatureModel) -> None:
    with pytest.raises(ValueError, match=r"\(8,\)"):
        selectors.descriptor_shortlist(catalog=CatalogFactory(), model=model, query=np.ones(4, np.float32), limit=3)
