"""2048-d global descriptors (DELG): their own HNSW index and shortlist in PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection, transaction

from retrieval import selectors
from retrieval.models import FeatureModel
from retrieval.services import feature_model_ensure
from tests.factories import CatalogFactory, ImageDescriptorFactory

pytestmark = pytest.mark.django_db

DIM = 2048


class _FakeDelg:
    """Only the identity and dimensions of a model matter to feature_model_ensure."""

    model_name = "delg:unit-test"
    model_version = "delg1-0123456789ab-s1024-n1000-t454.6-c00000000"
    global_dim = DIM
    local_dim = 128


@pytest.fixture
def model() -> FeatureModel:
    return feature_model_ensure(extractor=_FakeDelg())  # type: ignore[arg-type]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_it_gets_a_2048_d_partial_hnsw_index(model: FeatureModel) -> None:
    assert model.global_dim == DIM and model.local_dim == 128
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [model.hnsw_index_name])
        (definition,) = cursor.fetchone()
    assert "USING hnsw" in definition and f"halfvec({DIM})" in definition and "halfvec_cosine_ops" in definition
    assert f"model_id = {model.pk}" in definition


def test_the_shortlist_ranks_2048_d_descriptors_through_the_index(model: FeatureModel) -> None:
    catalog = CatalogFactory()
    rng = np.random.default_rng(0)
    query = _unit(rng.normal(size=DIM))
    near = ImageDescriptorFactory(
        image__catalog=catalog, model=model, embedding=_unit(query + 0.01 * rng.normal(size=DIM))
    )
    mid = ImageDescriptorFactory(
        image__catalog=catalog, model=model, embedding=_unit(query + rng.normal(size=DIM) / 40)
    )
    others = [
        ImageDescriptorFactory(image__catalog=catalog, model=model, embedding=_unit(rng.normal(size=DIM)))
        for _ in range(8)
    ]
    result = selectors.descriptor_shortlist(catalog=catalog, model=model, query=query, limit=5)
    assert [c.image_id for c in result[:2]] == [near.image_id, mid.image_id]
    assert len(result) == 5 and {c.image_id for c in result[2:]} <= {d.image_id for d in others}
    assert result[0].similarity == pytest.approx(float(query @ near.embedding), abs=3e-3)
    # The index can serve the query (its expression and predicate match shortlist_sql): with
    # ten rows the planner prefers a sort, so sorting and sequential scans are discouraged.
    vector = "[" + ",".join(f"{v:.6g}" for v in query) + "]"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(
            "EXPLAIN " + selectors.shortlist_sql(model), {"q": vector, "catalog": catalog.pk, "limit": 5, "pool": 5}
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using {model.hnsw_index_name}" in plan, plan


def test_a_query_of_another_width_is_refused(model: FeatureModel) -> None:
    with pytest.raises(ValueError, match=r"\(2048,\)"):
        selectors.descriptor_shortlist(catalog=CatalogFactory(), model=model, query=np.ones(1280, np.float32), limit=3)
