"""Local descriptor matching: one-to-one (mutual nearest neighbours) with a ratio test."""

from __future__ import annotations

import numpy as np


def match_descriptors(
    desc1: np.ndarray, desc2: np.ndarray, *, ratio: float = 0.85, mutual: bool = True, min_similarity: float = -1.0
) -> np.ndarray:
    """Match L2-normalised descriptors.

    A pair (i, j) is kept when j is i's nearest neighbour, the nearest is closer than
    ``ratio`` times the second nearest (Lowe's test, on Euclidean distances), and, with
    ``mutual``, i is also j's nearest neighbour, so every feature is used at most once.
    Many-to-one matches inflate RANSAC inlier counts on unrelated images. With
    ``min_similarity`` > -1 the nearest must also have at least that cosine similarity
    (XFeat's matcher: mutual, > 0.82, no ratio test, i.e. ``ratio=1``).

    Args:
        desc1: (N, D) float32, unit rows.
        desc2: (M, D) float32, unit rows.
    Returns:
        (K, 2) int64 indices into desc1 and desc2; (0, 2) when nothing matches.
    """
    if desc1.ndim != 2 or desc2.ndim != 2 or desc1.shape[1] != desc2.shape[1]:
        raise ValueError(f"descriptor shapes do not match: {desc1.shape} vs {desc2.shape}")
    if len(desc1) == 0 or len(desc2) == 0:
        return np.zeros((0, 2), np.int64)
    similarity = desc1.astype(np.float32) @ desc2.astype(np.float32).T  # (N, M)
    rows = np.arange(len(desc1))
    nn12 = np.argmax(similarity, axis=1)
    best = similarity[rows, nn12]
    keep = best > min_similarity if min_similarity > -1.0 else np.ones(len(desc1), bool)
    if mutual:
        # i is j's nearest neighbour iff s[i, j] is column j's maximum (a column max is
        # ~10x cheaper than a column argmax); exact ties are resolved below.
        keep &= best >= similarity.max(axis=0)[nn12]
    if len(desc2) >= 2 and ratio < 1.0:
        similarity[rows, nn12] = -np.inf  # in place: the matrix is not needed afterwards
        second = similarity.max(axis=1)
        # Euclidean distance between unit vectors: sqrt(2 - 2 cos).
        dist1 = np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0))
        dist2 = np.sqrt(np.maximum(2.0 - 2.0 * second, 0.0))
        keep &= dist1 < ratio * dist2
    matches = np.stack([rows[keep], nn12[keep]], axis=1).astype(np.int64)
    if mutual and len(matches):
        _, first = np.unique(matches[:, 1], return_index=True)  # one row per column
        matches = matches[np.sort(first)]
    return matches


def match_levels(
    desc1: np.ndarray,
    levels1: np.ndarray,
    desc2: np.ndarray,
    levels2: np.ndarray,
    *,
    ratio: float = 0.85,
    mutual: bool = True,
    min_similarity: float = -1.0,
) -> np.ndarray:
    """Match features that come in levels (dense cells of one image at several sizes).

    Every level of image 1 is matched against every level of image 2 with
    :func:`match_descriptors`, so that the ratio test compares a cell only with cells of
    the same size (a cell and the coarser cell over the same spot look alike and would
    fail it), and a photo taken nearer or farther pairs the levels whose cells cover the
    same content. The union is then made one-to-one again, most similar pairs first.

    Args:
        desc1: (N, D) float32 unit rows; levels1: (N,) level label of each row.
        desc2: (M, D) float32 unit rows; levels2: (M,) level label of each row.
    Returns:
        (K, 2) int64 indices into desc1 and desc2, each index at most once.
    """
    if len(levels1) != len(desc1) or len(levels2) != len(desc2):
        raise ValueError("one level label per descriptor is needed")
    found: list[np.ndarray] = []
    similarity: list[np.ndarray] = []
    for level1 in np.unique(levels1):
        rows1 = np.flatnonzero(levels1 == level1)
        for level2 in np.unique(levels2):
            rows2 = np.flatnonzero(levels2 == level2)
            pairs = match_descriptors(
                desc1[rows1], desc2[rows2], ratio=ratio, mutual=mutual, min_similarity=min_similarity
            )
            if len(pairs):
                pairs = np.stack([rows1[pairs[:, 0]], rows2[pairs[:, 1]]], axis=1)
                found.append(pairs)
                similarity.append(np.einsum("ij,ij->i", desc1[pairs[:, 0]], desc2[pairs[:, 1]]))
    if not found:
        return np.zeros((0, 2), np.int64)
    return _greedy_one_to_one(np.concatenate(found), np.concatenate(similarity))


def _greedy_one_to_one(matches: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Keep pairs most similar first, skipping any whose row or column is taken.

    Args: matches (K, 2) int64; similarity (K,). Returns the kept rows of ``matches`` in
    that order. K is a few hundred tentative matches, so a plain loop is cheap.
    """
    used1: set[int] = set()
    used2: set[int] = set()
    kept: list[int] = []
    for k in np.argsort(-similarity, kind="stable").tolist():
        i, j = int(matches[k, 0]), int(matches[k, 1])
        if i in used1 or j in used2:
            continue
        used1.add(i)
        used2.add(j)
        kept.append(k)
    return matches[kept].astype(np.int64)
