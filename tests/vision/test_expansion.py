from __future__ import annotations

import numpy as np
import pytest

from retrieval.vision.expansion import alpha_query_expansion, augment_from_neighbours, database_side_augmentation


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def test_dba_pulls_members_of_a_cluster_together() -> None:
    rng = np.random.default_rng(0)
    centre = _unit(rng.normal(size=16))
    cluster = _unit(centre + 0.3 * rng.normal(size=(6, 16)))
    others = _unit(rng.normal(size=(20, 16)))
    x = np.concatenate([cluster, others])
    before = (cluster @ cluster.T)[np.triu_indices(6, 1)].mean()
    aug = database_side_augmentation(x, neighbours=4)
    after = (aug[:6] @ aug[:6].T)[np.triu_indices(6, 1)].mean()
    assert after > before + 0.1
    assert np.allclose(np.linalg.norm(aug, axis=1), 1.0, atol=1e-5)


def test_dba_with_one_neighbour_is_the_identity() -> None:
    x = _unit(np.random.default_rng(1).normal(size=(5, 8)))
    assert np.array_equal(database_side_augmentation(x, neighbours=1), x)


def test_dba_blocks_give_the_same_result_as_one_block() -> None:
    x = _unit(np.random.default_rng(2).normal(size=(50, 8)))
    assert np.allclose(database_side_augmentation(x, neighbours=5, block=7), database_side_augmentation(x, neighbours=5))


def test_query_expansion_moves_the_query_towards_its_neighbours() -> None:
    rng = np.random.default_rng(3)
    q = _unit(rng.normal(size=8))
    nb = _unit(q + 0.5 * rng.normal(size=(3, 8)))
    expanded = alpha_query_expansion(q, nb, nb @ q)
    assert np.linalg.norm(expanded) == pytest.approx(1.0, abs=1e-6)
    assert (nb @ expanded).mean() > (nb @ q).mean()


def test_query_expansion_ignores_negative_similarities_and_empty_input() -> None:
    q = _unit(np.array([1.0, 0.0]))
    assert np.allclose(alpha_query_expansion(q, np.array([[-1.0, 0.0]]), np.array([-1.0])), q)
    assert np.allclose(alpha_query_expansion(q, np.zeros((0, 2)), np.zeros(0)), q)


def test_augmenting_from_known_neighbours_equals_the_full_augmentation() -> None:
    x = _unit(np.random.default_rng(4).normal(size=(40, 8)))
    sims = x @ x.T
    top = np.argsort(-sims, axis=1)[:, :5]
    rows = augment_from_neighbours(x[top], np.take_along_axis(sims, top, axis=1))
    assert np.allclose(rows, database_side_augmentation(x, neighbours=5), atol=1e-5)
