"""Database-side augmentation (DBA) and alpha query expansion (alpha-QE).

Radenovic et al., "Fine-tuning CNN image retrieval with no human annotation" (TPAMI'18):
each catalog descriptor is replaced by the weighted mean of itself and its nearest
catalog neighbours (DBA), and the query descriptor by the weighted mean of itself and its
top results (alpha-QE), weights being similarity ** alpha. Measured on paris5 (lite2
GeM): mAP 0.830 -> 0.966 with k = n = 10 (docs/quality.md).
"""

from __future__ import annotations

import numpy as np


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def database_side_augmentation(
    descriptors: np.ndarray, *, neighbours: int, alpha: float = 3.0, block: int = 1024
) -> np.ndarray:
    """Augment every descriptor with its ``neighbours`` nearest ones (itself included).

    Args:
        descriptors: (N, D) float32, unit rows.
        neighbours: k; 1 or less returns the input unchanged.
    Returns:
        (N, D) float32, unit rows. Exact kNN by blocks of ``block`` rows (O(N^2 D)).
    """
    if descriptors.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got {descriptors.shape}")
    if min(neighbours, len(descriptors)) <= 1:
        return descriptors.astype(np.float32, copy=True)
    base = descriptors.astype(np.float32)
    top, sims = exact_neighbours(base, neighbours=neighbours, block=block)
    out = np.empty_like(base)
    for start in range(0, len(base), block):
        rows = slice(start, start + block)
        out[rows] = augment_from_neighbours(base[top[rows]], sims[rows], alpha=alpha)
    return out


def exact_neighbours(descriptors: np.ndarray, *, neighbours: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``neighbours`` nearest rows by cosine, itself included, most similar
    first, by blocks of ``block`` rows (O(N^2 D)).

    Args:
        descriptors: (N, D) float32, unit rows.
    Returns:
        (N, k) int64 row indices and (N, k) float32 similarities, k = min(neighbours, N).
    """
    count = len(descriptors)
    k = max(1, min(neighbours, count))
    base = descriptors.astype(np.float32)
    indices = np.empty((count, k), np.int64)
    similarities = np.empty((count, k), np.float32)
    for start in range(0, count, block):
        sims = base[start : start + block] @ base.T  # (b, N)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        indices[start : start + block] = np.take_along_axis(top, order, axis=1)
        similarities[start : start + block] = np.take_along_axis(top_sims, order, axis=1)
    return indices, similarities


def augment_from_neighbours(neighbours: np.ndarray, similarities: np.ndarray, *, alpha: float = 3.0) -> np.ndarray:
    """The DBA descriptor of rows whose nearest neighbours are already known (itself
    included, as the database's incremental updates find them through the index).

    Args:
        neighbours: (n, k, D) the k nearest descriptors of each of n rows.
        similarities: (n, k) their cosine similarities to the row.
    Returns:
        (n, D) float32 unit rows: normalise(sum_j max(s_j, 0) ** alpha * x_j).
    """
    if neighbours.ndim != 3 or similarities.shape != neighbours.shape[:2]:
        raise ValueError(
            f"neighbours (n, k, D) and similarities (n, k) disagree: {neighbours.shape}, {similarities.shape}"
        )
    weights = np.maximum(similarities, 0.0) ** alpha
    return _normalise(np.einsum("nk,nkd->nd", weights, neighbours)).astype(np.float32)


def alpha_query_expansion(
    query: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, *, alpha: float = 3.0
) -> np.ndarray:
    """Expand a query with its top results.

    Args:
        query: (D,) unit vector.
        neighbours: (n, D) descriptors of the top n results.
        similarities: (n,) their cosine similarities to the query.
    Returns:
        (D,) float32 unit vector: normalise(query + sum_i max(s_i, 0) ** alpha * x_i).
    """
    if len(neighbours) == 0:
        return query.astype(np.float32)
    if neighbours.shape != (len(similarities), query.shape[0]):
        raise ValueError(f"neighbours must be ({len(similarities)}, {query.shape[0]}), got {neighbours.shape}")
    weights = np.maximum(similarities, 0.0) ** alpha
    expanded = query + (weights[:, None] * neighbours).sum(axis=0)
    return _normalise(expanded).astype(np.float32)
