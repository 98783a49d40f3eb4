"""Local descriptor matching: one-to-one (mutual nearest neighbours) with a ratio test.

Similarities are taken in float32 or, with ``precision="int8"``, as integer products of
rows quantised with one scale per feature set (:func:`quantise_rows`), several times
cheaper on CPUs with integer dot-product instructions (``int8_products``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np

from retrieval.vision.int8_products import int8_products

Precision = Literal["float32", "int8"]


@dataclasses.dataclass(frozen=True)
class Int8Rows:
    """Unit descriptor rows quantised with one scale for the whole set.

    One scale, not one per row: the integer products of two sets are then the cosine
    similarities times one constant, so comparing them along a row (nearest neighbour,
    ratio test) or along a column (mutual check) compares cosines.

    Attributes:
        codes: (N, D) int8 in [-127, 127], ``rint(rows * scale)``.
        scale: codes per unit of the float rows.
    """

    codes: np.ndarray
    scale: float

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def take(self, rows: np.ndarray) -> Int8Rows:
        return Int8Rows(self.codes[rows], self.scale)

    @functools.cached_property
    def transposed(self) -> np.ndarray:
        """(D, N) C-contiguous codes, the right factor of ``int8_products``; kept, since
        a candidate's level meets each of the query's levels."""
        return np.ascontiguousarray(self.codes.T)


def quantise_rows(rows: np.ndarray) -> Int8Rows:
    """(N, D) float unit rows -> :class:`Int8Rows`, the largest magnitude at 127."""
    peak = float(np.abs(rows).max()) if rows.size else 0.0
    scale = 127.0 / peak if peak > 0 else 1.0
    return Int8Rows(np.rint(rows * scale).astype(np.int8), scale)


Rows = np.ndarray | Int8Rows


def match_descriptors(
    desc1: Rows,
    desc2: Rows,
    *,
    ratio: float = 0.85,
    mutual: bool = True,
    min_similarity: float = -1.0,
    precision: Precision = "float32",
) -> np.ndarray:
    """Match L2-normalised descriptors.

    A pair (i, j) is kept when j is i's nearest neighbour, the nearest is closer than
    ``ratio`` times the second nearest (Lowe's test, on Euclidean distances), and, with
    ``mutual``, i is also j's nearest neighbour, so every feature is used at most once.
    Many-to-one matches inflate RANSAC inlier counts on unrelated images. With
    ``min_similarity`` > -1 the nearest must also have at least that cosine similarity
    (XFeat's matcher: mutual, > 0.82, no ratio test, i.e. ``ratio=1``).

    Args:
        desc1: (N, D) float32 unit rows, or their :class:`Int8Rows`.
        desc2: (M, D) float32 unit rows, or their :class:`Int8Rows`.
        precision: "int8" quantises float rows (:func:`quantise_rows`) and matches on
            integer products; :class:`Int8Rows` inputs always do.
    Returns:
        (K, 2) int64 indices into desc1 and desc2; (0, 2) when nothing matches.
    """
    return _match(desc1, desc2, ratio=ratio, mutual=mutual, min_similarity=min_similarity, precision=precision)[0]


def _match(
    desc1: Rows, desc2: Rows, *, ratio: float, mutual: bool, min_similarity: float, precision: Precision
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_descriptors` and the cosine similarity of each match: ((K, 2), (K,))."""
    shape1, shape2 = _shape(desc1), _shape(desc2)
    if len(shape1) != 2 or len(shape2) != 2 or shape1[1] != shape2[1]:
        raise ValueError(f"descriptor shapes do not match: {shape1} vs {shape2}")
    if shape1[0] == 0 or shape2[0] == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
    similarity, unit = _similarities(desc1, desc2, precision)
    return _mutual_ratio_matches(similarity, unit, ratio=ratio, mutual=mutual, min_similarity=min_similarity)


def _shape(desc: Rows) -> tuple[int, ...]:
    return desc.codes.shape if isinstance(desc, Int8Rows) else desc.shape


def _similarities(desc1: Rows, desc2: Rows, precision: Precision) -> tuple[np.ndarray, float]:
    """The (N, M) similarity matrix and the cosine of one of its units."""
    if precision == "int8" or isinstance(desc1, Int8Rows) or isinstance(desc2, Int8Rows):
        rows1 = desc1 if isinstance(desc1, Int8Rows) else quantise_rows(desc1)
        rows2 = desc2 if isinstance(desc2, Int8Rows) else quantise_rows(desc2)
        products = int8_products(rows1.codes, rows2.transposed)
        return products, 1.0 / (rows1.scale * rows2.scale)
    return desc1.astype(np.float32) @ desc2.astype(np.float32).T, 1.0


def _mutual_ratio_matches(
    similarity: np.ndarray, unit: float, *, ratio: float, mutual: bool, min_similarity: float
) -> tuple[np.ndarray, np.ndarray]:
    """The tests of :func:`match_descriptors` on an (N, M) float32 or int32 similarity
    matrix; ``unit`` converts its values to cosines."""
    n, m = similarity.shape
    rows = np.arange(n)
    nn12 = np.argmax(similarity, axis=1)
    best = similarity[rows, nn12]
    best_cos = best * unit
    keep = best_cos > min_similarity if min_similarity > -1.0 else np.ones(n, bool)
    if mutual:
        # i is j's nearest neighbour iff s[i, j] is column j's maximum (a column max is
        # ~10x cheaper than a column argmax); exact ties are resolved below.
        keep &= best >= similarity.max(axis=0)[nn12]
    if m >= 2 and ratio < 1.0:
        # The second nearest only for rows that passed so far (a fifth or so with the
        # mutual check): a full pass over the matrix costs as much as the product.
        tested = np.flatnonzero(keep)
        lowest = -np.inf if similarity.dtype.kind == "f" else np.iinfo(similarity.dtype).min
        candidates = similarity[tested]
        candidates[np.arange(len(tested)), nn12[tested]] = lowest
        second_cos = candidates.max(axis=1) * unit
        # Euclidean distance between unit vectors: sqrt(2 - 2 cos).
        dist1 = np.sqrt(np.maximum(2.0 - 2.0 * best_cos[tested], 0.0))
        dist2 = np.sqrt(np.maximum(2.0 - 2.0 * second_cos, 0.0))
        keep[tested] = dist1 < ratio * dist2
    matches = np.stack([rows[keep], nn12[keep]], axis=1).astype(np.int64)
    cosines = best_cos[keep].astype(np.float32)
    if mutual and len(matches) and np.bincount(matches[:, 1], minlength=m).max() > 1:
        _, first = np.unique(matches[:, 1], return_index=True)  # one row per column (ties)
        first = np.sort(first)
        matches, cosines = matches[first], cosines[first]
    return matches, cosines


@dataclasses.dataclass(frozen=True)
class LevelRows:
    """A feature set's descriptor rows split by level (see :func:`match_levels`).

    Attributes:
        rows: per level, (n_l,) int64 indices of its rows in the whole set.
        desc: per level, its (n_l, D) float32 rows or their :class:`Int8Rows` (one
            scale over all levels, so products of any two levels compare).
    """

    rows: tuple[np.ndarray, ...]
    desc: tuple[Rows, ...]


def split_levels(desc: Rows, levels: np.ndarray) -> LevelRows:
    """Split (N, D) rows by their (N,) level labels, levels in ascending label order."""
    if len(levels) != len(desc):
        raise ValueError("one level label per descriptor is needed")
    rows = tuple(np.flatnonzero(levels == level) for level in np.unique(levels))
    if isinstance(desc, Int8Rows):
        return LevelRows(rows, tuple(desc.take(r) for r in rows))
    return LevelRows(rows, tuple(desc[r] for r in rows))


def match_levels(
    desc1: Rows | LevelRows,
    levels1: np.ndarray | None,
    desc2: Rows | LevelRows,
    levels2: np.ndarray | None,
    *,
    ratio: float = 0.85,
    mutual: bool = True,
    min_similarity: float = -1.0,
    precision: Precision = "float32",
) -> np.ndarray:
    """Match features that come in levels (dense cells of one image at several sizes).

    Every level of image 1 is matched against every level of image 2 with
    :func:`match_descriptors`, so that the ratio test compares a cell only with cells of
    the same size (a cell and the coarser cell over the same spot look alike and would
    fail it), and a photo taken nearer or farther pairs the levels whose cells cover the
    same content. The union is then made one-to-one again, most similar pairs first.

    Args:
        desc1: (N, D) float32 unit rows or their :class:`Int8Rows`; levels1: (N,) level
            label of each row. Or desc1 already split (:func:`split_levels`, which a
            query matched against many candidates does once) and levels1 None.
        desc2, levels2: the same for image 2, (M, D) and (M,).
        precision: as in :func:`match_descriptors`; int8 quantises float rows with one
            scale per side over all its levels.
    Returns:
        (K, 2) int64 indices into desc1 and desc2, each index at most once.
    """
    split1 = _split(desc1, levels1, precision)
    split2 = _split(desc2, levels2, precision)
    found: list[np.ndarray] = []
    similarity: list[np.ndarray] = []
    for rows1, part1 in zip(split1.rows, split1.desc, strict=True):
        for rows2, part2 in zip(split2.rows, split2.desc, strict=True):
            pairs, cosines = _match(
                part1, part2, ratio=ratio, mutual=mutual, min_similarity=min_similarity, precision=precision
            )
            if len(pairs):
                found.append(np.stack([rows1[pairs[:, 0]], rows2[pairs[:, 1]]], axis=1))
                similarity.append(cosines)
    if not found:
        return np.zeros((0, 2), np.int64)
    return _greedy_one_to_one(np.concatenate(found), np.concatenate(similarity))


def _split(desc: Rows | LevelRows, levels: np.ndarray | None, precision: Precision) -> LevelRows:
    if isinstance(desc, LevelRows):
        return desc
    if levels is None:
        raise ValueError("level labels are needed for rows that are not split yet")
    if precision == "int8" and not isinstance(desc, Int8Rows):
        desc = quantise_rows(desc)
    return split_levels(desc, levels)


def _greedy_one_to_one(matches: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Keep pairs most similar first, skipping any whose row or column is taken.

    Args: matches (K, 2) int64; similarity (K,). Returns the kept rows of ``matches`` in
    that order. Only pairs that share a row or a column with another can be skipped, so
    the loop runs over those alone (a few dozen of a few hundred).
    """
    order = np.argsort(-similarity, kind="stable")
    matches = matches[order]
    _, row_inverse, row_counts = np.unique(matches[:, 0], return_inverse=True, return_counts=True)
    _, col_inverse, col_counts = np.unique(matches[:, 1], return_inverse=True, return_counts=True)
    keep = (row_counts[row_inverse] == 1) & (col_counts[col_inverse] == 1)
    used1: set[int] = set()
    used2: set[int] = set()
    for k in np.flatnonzero(~keep).tolist():
        i, j = int(matches[k, 0]), int(matches[k, 1])
        if i in used1 or j in used2:
            continue
        used1.add(i)
        used2.add(j)
        keep[k] = True
    return matches[keep].astype(np.int64)
