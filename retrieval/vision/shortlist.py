"""The global shortlist: nearest catalog images, optionally in two rounds with alpha-QE.

Pure: the nearest-neighbour search is a callable, so the server passes pgvector (an HNSW
pool over the plain descriptors, ranked by the DBA ones) and the benches pass an exact
numpy search over a matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from retrieval.vision.expansion import alpha_query_expansion

# nearest(vector (D,), limit) -> [(id, cosine similarity)], most similar first
Nearest = Callable[[np.ndarray, int], Sequence[tuple[int, float]]]
# vectors_of(ids) -> (len(ids), D) float32: the descriptors the search ranks (DBA ones)
VectorsOf = Callable[[list[int]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Shortlist:
    ranked: list[tuple[int, float]]  # (id, similarity to ``query``), most similar first
    query: np.ndarray  # (D,) the vector of the last round: the expanded query, if any


def expanded_shortlist(
    query: np.ndarray,
    *,
    nearest: Nearest,
    vectors_of: VectorsOf,
    limit: int,
    expansion_neighbours: int,
    alpha: float,
) -> Shortlist:
    """Round 1 takes the ``limit`` nearest; with ``expansion_neighbours`` > 0 the query is
    expanded with that many top results (alpha-QE) and round 2 takes the final shortlist,
    ranked by similarity to the expanded query.

    Args:
        query: (D,) unit vector.
    Returns:
        the ranked (id, similarity) pairs, at most ``limit``, and the query they rank by.
    """
    first = list(nearest(query, limit))
    if expansion_neighbours <= 0 or not first:
        return Shortlist(first, query)
    top = first[:expansion_neighbours]
    expanded = alpha_query_expansion(
        query,
        vectors_of([image_id for image_id, _ in top]),
        np.array([similarity for _, similarity in top], np.float32),
        alpha=alpha,
    )
    return Shortlist(list(nearest(expanded, limit)), expanded)


def exact_nearest(matrix: np.ndarray, ids: Sequence[int] | None = None) -> Nearest:
    """A ``nearest`` over the rows of ``matrix`` (N, D) by exact cosine (stable order);
    ``ids`` name the rows (default: their index)."""
    names = list(range(len(matrix))) if ids is None else list(ids)

    def nearest(vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        sims = matrix @ vector
        order = np.argsort(-sims, kind="stable")[:limit]
        return [(names[j], float(sims[j])) for j in order]

    return nearest
