"""The two-round shortlist with alpha query expansion, over an exact numpy search."""

from __future__ import annotations

import numpy as np

from retrieval.vision.expansion import alpha_query_expansion
from retrieval.vision.shortlist import exact_nearest, expanded_shortlist


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _catalog() -> np.ndarray:
    return _unit(np.random.default_rng(0).normal(size=(50, 16)))


def test_without_expansion_it_is_the_nearest_rows_in_order() -> None:
    matrix = _catalog()
    query = matrix[3]
    shortlist = expanded_shortlist(
        query, nearest=exact_nearest(matrix), vectors_of=lambda ids: matrix[ids], limit=5, expansion_neighbours=0,
        alpha=3.0,
    )  # fmt: skip
    expected = np.argsort(-(matrix @ query), kind="stable")[:5]
    assert [i for i, _ in shortlist.ranked] == list(expected)
    assert shortlist.ranked[0] == (3, shortlist.ranked[0][1]) and np.isclose(shortlist.ranked[0][1], 1.0)
    assert shortlist.query is query


def test_expansion_reranks_by_the_query_averaged_with_its_top_results() -> None:
    matrix = _catalog()
    query = _unit(matrix[3] + 0.5 * matrix[7])
    shortlist = expanded_shortlist(
        query, nearest=exact_nearest(matrix), vectors_of=lambda ids: matrix[ids], limit=10, expansion_neighbours=2,
        alpha=3.0,
    )  # fmt: skip
    top = np.argsort(-(matrix @ query), kind="stable")[:2]
    expanded = alpha_query_expansion(query, matrix[top], (matrix @ query)[top], alpha=3.0)
    assert np.allclose(shortlist.query, expanded)
    assert [i for i, _ in shortlist.ranked] == list(np.argsort(-(matrix @ expanded), kind="stable")[:10])


def test_an_empty_catalog_gives_an_empty_shortlist() -> None:
    nothing = np.zeros((0, 16), np.float32)
    shortlist = expanded_shortlist(
        np.ones(16, np.float32) / 4, nearest=exact_nearest(nothing), vectors_of=lambda ids: nothing[ids],
        limit=10, expansion_neighbours=3, alpha=3.0,
    )  # fmt: skip
    assert shortlist.ranked == []


def test_exact_nearest_names_rows_by_the_given_ids() -> None:
    matrix = _catalog()
    nearest = exact_nearest(matrix, ids=[100 + i for i in range(len(matrix))])
    assert nearest(matrix[4], 1)[0][0] == 104
