"""Database-side augmentation against the real PostgreSQL: full, incremental, the command."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from retrieval import selectors, services
from retrieval.models import Catalog, DescriptorAugmentation, FeatureModel, ImageDescriptor
from retrieval.services.augmentation import nearest_plain
from retrieval.vision.expansion import database_side_augmentation, exact_neighbours
from tests.factories import CatalogFactory, ImageDescriptorFactory, feature_model_with_index

pytestmark = pytest.mark.django_db

DIM = 8


@pytest.fixture
def model() -> FeatureModel:
    return feature_model_with_index("augmentation-test-model", global_dim=DIM)


def _clusters(rng: np.random.Generator, centres: int, members: int) -> np.ndarray:
    centre = rng.normal(size=(centres, 1, DIM))
    rows = (centre + 0.25 * rng.normal(size=(centres, members, DIM))).reshape(-1, DIM)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _add(catalog: Catalog, model: FeatureModel, vectors: np.ndarray) -> list[int]:
    return [ImageDescriptorFactory(image__catalog=catalog, model=model, embedding=v).image_id for v in vectors]


def _augmented(model: FeatureModel, image_ids: list[int]) -> np.ndarray:
    rows = dict(
        ImageDescriptor.objects.filter(model=model, image_id__in=image_ids).values_list(
            "image_id", "augmentation__embedding"
        )
    )
    return np.stack([np.asarray(rows[i], np.float32) for i in image_ids])


def _augment(catalog: Catalog) -> int:
    Catalog.objects.filter(pk=catalog.pk).update(augment_pending=True)
    return services.catalog_augment(catalog_id=catalog.pk)


def test_the_first_augmentation_of_a_catalog_is_the_exact_one(model: FeatureModel, settings, monkeypatch) -> None:
    monkeypatch.setattr("retrieval.services.augmentation.BATCH_ROWS", 7)  # written in several batches
    catalog = CatalogFactory()
    vectors = _clusters(np.random.default_rng(0), 6, 8)
    ids = _add(catalog, model, vectors)
    assert _augment(catalog) == len(ids)
    expected = database_side_augmentation(vectors, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS)
    assert np.allclose(_augmented(model, ids), expected, atol=3e-3)  # halfvec precision


def test_new_rows_are_augmented_from_their_index_neighbours_as_a_full_run_would(model: FeatureModel, settings) -> None:
    rng = np.random.default_rng(1)
    catalog = CatalogFactory()
    old = _clusters(rng, 8, 12)
    old_ids = _add(catalog, model, old)
    _augment(catalog)
    new = _clusters(rng, 1, 5)  # one new cluster: well under a tenth of the rows
    new_ids = _add(catalog, model, new)
    written = _augment(catalog)
    k = settings.LANDMARKS_DBA_NEIGHBOURS
    assert len(new_ids) < written <= len(new_ids) * (k + 1)  # the new rows and some they joined, not all
    everything = np.concatenate([old, new])
    expected = database_side_augmentation(everything, neighbours=k)[len(old) :]
    assert np.allclose(_augmented(model, new_ids), expected, atol=3e-3)
    assert written < len(old_ids) + len(new_ids)


def test_rows_far_from_the_new_ones_are_not_rewritten(model: FeatureModel) -> None:
    rng = np.random.default_rng(2)
    catalog = CatalogFactory()
    old = _clusters(rng, 10, 12)
    old_ids = _add(catalog, model, old)
    _augment(catalog)
    before = _augmented(model, old_ids)
    new_ids = _add(catalog, model, _clusters(rng, 1, 3))
    _augment(catalog)
    joined = {
        i
        for pairs in nearest_plain(catalog=catalog, model=model, image_ids=new_ids, neighbours=10).values()
        for i, _ in pairs
    }
    untouched = [n for n, i in enumerate(old_ids) if i not in joined]
    assert len(untouched) > 0.8 * len(old_ids)
    assert np.array_equal(_augmented(model, old_ids)[untouched], before[untouched])


def test_rows_joined_by_new_ones_keep_their_exact_neighbour_lists(model: FeatureModel, settings) -> None:
    rng = np.random.default_rng(6)
    catalog = CatalogFactory()
    old = _clusters(rng, 8, 12)
    ids = _add(catalog, model, old)
    _augment(catalog)
    # New photos of known places: each enters lists of rows that are not among its own k
    # nearest (12 photos a place, k = 10).
    new = old[[0, 13, 26]] + 0.02 * rng.normal(size=(3, DIM)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    ids += _add(catalog, model, new)
    _augment(catalog)  # incremental: the new rows are merged into the lists they join
    k = settings.LANDMARKS_DBA_NEIGHBOURS
    stored = selectors.descriptor_vectors(model=model, image_ids=ids, augmented=False)  # as halfvec keeps them
    everything = np.stack([stored[i] for i in ids])
    top, _ = exact_neighbours(everything, neighbours=k)
    lists = dict(
        DescriptorAugmentation.objects.filter(descriptor__image_id__in=ids).values_list(
            "descriptor__image_id", "neighbours"
        )
    )
    assert {i: set(lists[i]) for i in ids} == {i: {ids[j] for j in top[row]} for row, i in enumerate(ids)}
    assert np.allclose(_augmented(model, ids), database_side_augmentation(everything, neighbours=k), atol=3e-3)


def test_augmenting_rows_never_updates_the_indexed_descriptor_rows(model: FeatureModel) -> None:
    """An UPDATE of a descriptor row would insert it into the HNSW index again: the DBA
    descriptors are written to their own table."""
    rng = np.random.default_rng(4)
    catalog = CatalogFactory()
    _add(catalog, model, _clusters(rng, 4, 6))
    _augment(catalog)
    _add(catalog, model, _clusters(rng, 1, 2))
    assert _augment(catalog) > 2  # the new rows and some they joined
    with connection.cursor() as cursor:  # this test's transaction so far
        cursor.execute("SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'retrieval_imagedescriptor'")
        assert cursor.fetchone() == (0,)


def test_deleting_a_descriptor_row_in_sql_deletes_its_augmentation(model: FeatureModel) -> None:
    catalog = CatalogFactory()
    ids = _add(catalog, model, _clusters(np.random.default_rng(7), 2, 4))
    _augment(catalog)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM retrieval_imagedescriptor WHERE image_id = %s", [ids[0]])
    assert not DescriptorAugmentation.objects.filter(descriptor__image_id=ids[0]).exists()
    assert DescriptorAugmentation.objects.filter(descriptor__image_id__in=ids).count() == len(ids) - 1


def test_nearest_plain_ranks_by_plain_cosine_with_the_row_itself_first(model: FeatureModel) -> None:
    catalog = CatalogFactory()
    vectors = _clusters(np.random.default_rng(3), 4, 6)
    ids = _add(catalog, model, vectors)
    found = nearest_plain(catalog=catalog, model=model, image_ids=ids[:3], neighbours=4)
    sims = vectors @ vectors.T
    for row, image_id in enumerate(ids[:3]):
        expected = [ids[j] for j in np.argsort(-sims[row])[:4]]
        assert [other for other, _ in found[image_id]] == expected
        assert found[image_id][0] == (image_id, pytest.approx(1.0, abs=2e-3))


def test_the_augment_command_rebuilds_every_row(model: FeatureModel, capsys) -> None:
    catalog = CatalogFactory(name="rebuilt")
    ids = _add(catalog, model, _clusters(np.random.default_rng(4), 3, 5))
    call_command("augment", "--catalog", "rebuilt", "--here")
    assert "15 descriptors augmented" in capsys.readouterr().out
    assert not ImageDescriptor.objects.filter(image_id__in=ids, augmentation__isnull=True).exists()


def test_the_augment_command_names_an_unknown_catalog() -> None:
    with pytest.raises(CommandError, match="no catalog named 'nowhere'"):
        call_command("augment", "--catalog", "nowhere", "--here")
