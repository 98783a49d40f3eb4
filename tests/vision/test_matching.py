"""Level-by-level matching of features that come in several cell sizes."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.vision.matching import (
    _greedy_one_to_one,
    match_descriptors,
    match_levels,
    quantise_rows,
    split_levels,
)

FINE, COARSE = 16.0, 32.0


def _unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    return desc / np.linalg.norm(desc, axis=1, keepdims=True)


def _swapped_levels() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image 1's fine level is image 2's coarse level and the other way round (a photo
    taken twice as near), rows shuffled on both sides. Returns desc1, levels1, desc2,
    levels2 and ``twin``: twin[i] is the row of image 2 equal to row i of image 1."""
    rng = np.random.default_rng(5)
    fine1, coarse1 = _unit(rng, 60), _unit(rng, 40)
    desc1 = np.concatenate([fine1, coarse1])
    levels1 = np.array([FINE] * 60 + [COARSE] * 40, np.float32)
    order1 = rng.permutation(100)
    desc1, levels1 = desc1[order1], levels1[order1]
    # Image 2: image 1's coarse cells are its fine cells and vice versa.
    source = rng.permutation(100)  # row j of image 2 is row source[j] of image 1
    desc2 = desc1[source]
    levels2 = np.where(levels1[source] == FINE, COARSE, FINE).astype(np.float32)
    twin = np.argsort(source)
    return desc1, levels1, desc2, levels2, twin


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_every_row_is_matched_to_its_twin_in_the_other_level(precision: str) -> None:
    desc1, levels1, desc2, levels2, twin = _swapped_levels()
    matches = match_levels(desc1, levels1, desc2, levels2, precision=precision)
    assert matches.dtype == np.int64 and matches.shape == (100, 2)
    assert sorted(matches[:, 0].tolist()) == list(range(100))
    assert np.array_equal(matches[:, 1], twin[matches[:, 0]])
    assert np.all(levels1[matches[:, 0]] != levels2[matches[:, 1]])  # always across levels


def _noisy(rng: np.random.Generator, desc: np.ndarray, amount: float) -> np.ndarray:
    out = desc + amount * _unit(rng, len(desc), desc.shape[1])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_ratio_test_compares_cells_of_one_level_only(precision: str) -> None:
    """Image 2's coarse cells nearly repeat its fine cells (as a coarse cell and the fine
    cells under it do): a ratio test over all of image 2's cells rejects every match, one
    within each level pair keeps them all."""
    rng = np.random.default_rng(6)
    fine = _unit(rng, 30)
    desc1, levels1 = _noisy(rng, fine, 0.2), np.full(30, FINE, np.float32)
    desc2 = np.concatenate([fine, _noisy(rng, fine, 0.05)])
    levels2 = np.array([FINE] * 30 + [COARSE] * 30, np.float32)
    assert len(match_descriptors(desc1, desc2, ratio=0.85, precision=precision)) == 0  # all ambiguous
    matches = match_levels(desc1, levels1, desc2, levels2, ratio=0.85, precision=precision)
    assert sorted(matches[:, 0].tolist()) == list(range(30))
    assert np.array_equal(matches[:, 1] % 30, matches[:, 0])  # to its cell at either level


def test_a_descriptor_in_two_levels_of_image_1_is_matched_once() -> None:
    rng = np.random.default_rng(7)
    shared = _unit(rng, 20)
    desc1 = np.concatenate([shared, shared])  # rows i and 20 + i are equal
    levels1 = np.array([FINE] * 20 + [COARSE] * 20, np.float32)
    desc2, levels2 = shared.copy(), np.full(20, FINE, np.float32)
    matches = match_levels(desc1, levels1, desc2, levels2, ratio=1.0)
    assert len(matches) == 20
    assert len(np.unique(matches[:, 0])) == len(np.unique(matches[:, 1])) == 20
    assert np.array_equal(matches[:, 0] % 20, matches[:, 1])


def test_a_descriptor_in_two_levels_of_image_2_is_matched_once() -> None:
    rng = np.random.default_rng(8)
    shared = _unit(rng, 20)
    desc1, levels1 = shared.copy(), np.full(20, COARSE, np.float32)
    desc2 = np.concatenate([shared, shared])
    levels2 = np.array([FINE] * 20 + [COARSE] * 20, np.float32)
    matches = match_levels(desc1, levels1, desc2, levels2, ratio=1.0)
    assert len(matches) == 20
    assert len(np.unique(matches[:, 0])) == len(np.unique(matches[:, 1])) == 20
    assert np.array_equal(matches[:, 1] % 20, matches[:, 0])


def test_the_most_similar_pair_wins_when_two_levels_claim_a_row() -> None:
    rng = np.random.default_rng(9)
    target = _unit(rng, 1, 32)[0]
    close = target + 0.05 * _unit(rng, 1, 32)[0]
    far = target + 0.4 * _unit(rng, 1, 32)[0]
    filler = _unit(rng, 8, 32)
    desc1 = np.concatenate([far[None], filler[:4], close[None], filler[4:]])
    desc1 /= np.linalg.norm(desc1, axis=1, keepdims=True)
    levels1 = np.array([FINE] * 5 + [COARSE] * 5, np.float32)
    desc2, levels2 = target[None].astype(np.float32), np.array([FINE], np.float32)
    matches = match_levels(desc1, levels1, desc2, levels2, ratio=1.0)
    assert matches.tolist() == [[5, 0]]  # the close coarse row, not the far fine one


def test_a_mismatched_level_count_is_refused() -> None:
    desc = _unit(np.random.default_rng(10), 5)
    with pytest.raises(ValueError, match="level label"):
        match_levels(desc, np.zeros(4, np.float32), desc, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="level label"):
        match_levels(desc, np.zeros(5, np.float32), desc, np.zeros(6, np.float32))


@pytest.mark.parametrize("n1, n2", [(0, 5), (5, 0), (0, 0)])
def test_matching_with_nothing_on_one_side_is_empty(n1: int, n2: int) -> None:
    rng = np.random.default_rng(11)
    matches = match_levels(_unit(rng, n1, 8), np.zeros(n1), _unit(rng, n2, 8), np.zeros(n2))
    assert matches.shape == (0, 2) and matches.dtype == np.int64


def test_unrelated_descriptors_give_few_matches() -> None:
    rng = np.random.default_rng(12)
    desc1, desc2 = _unit(rng, 100), _unit(rng, 100)
    levels = np.array([FINE] * 50 + [COARSE] * 50, np.float32)
    assert len(match_levels(desc1, levels, desc2, levels, ratio=0.8)) < 5


def test_match_levels_keeps_the_most_similar_pairs_first_even_across_conflicts() -> None:
    def unit(v: list[float]) -> list[float]:
        return list(np.asarray(v) / np.linalg.norm(v))

    desc1 = np.array([[1, 0, 0], unit([0.98, 0.199, 0])], np.float32)
    desc2 = np.array([[1, 0, 0], unit([0.9, 0.4359, 0])], np.float32)
    levels = np.array([16.0, 32.0], np.float32)
    # Pairs by similarity: (0,0) 1.0, (1,0) 0.98 (column 0 taken), (1,1) 0.969 (free).
    matches = match_levels(desc1, levels, desc2, levels, ratio=1.0)
    assert sorted(map(tuple, matches.tolist())) == [(0, 0), (1, 1)]


def test_quantised_rows_share_one_scale_with_the_largest_magnitude_at_127() -> None:
    rows = _unit(np.random.default_rng(20), 50, 120)
    quantised = quantise_rows(rows)
    assert quantised.codes.dtype == np.int8 and quantised.codes.shape == (50, 120)
    assert np.abs(quantised.codes).max() == 127
    assert np.abs(quantised.codes / quantised.scale - rows).max() <= 0.5 / quantised.scale + 1e-6


def test_int8_matches_equal_float_matches_on_distinct_descriptors() -> None:
    """Twins under noise, with clear nearest neighbours: quantisation changes no match."""
    rng = np.random.default_rng(21)
    desc2 = _unit(rng, 400, 120)
    desc1 = _noisy(rng, desc2[:300], 0.3)
    float_matches = match_descriptors(desc1, desc2, ratio=0.9)
    int8_matches = match_descriptors(desc1, desc2, ratio=0.9, precision="int8")
    assert len(float_matches) > 250
    assert np.array_equal(int8_matches, float_matches)


def test_int8_and_float_tentatives_agree_on_near_ties() -> None:
    """Where second neighbours are close (dense cells), int8 may flip a few ratio-test
    decisions but keeps nearly all matches."""
    rng = np.random.default_rng(22)
    base = _unit(rng, 300, 120)
    desc2 = np.concatenate([base, _noisy(rng, base, 0.6)])
    desc1 = _noisy(rng, base, 0.4)
    float_matches = {tuple(m) for m in match_descriptors(desc1, desc2, ratio=0.95).tolist()}
    int8_matches = {tuple(m) for m in match_descriptors(desc1, desc2, ratio=0.95, precision="int8").tolist()}
    assert len(float_matches) > 100
    assert len(float_matches & int8_matches) / len(float_matches | int8_matches) > 0.9


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_levels_split_beforehand_match_as_unsplit_rows(precision: str) -> None:
    desc1, levels1, desc2, levels2, _ = _swapped_levels()
    desc1, desc2 = _noisy(np.random.default_rng(23), desc1, 0.5), desc2
    expected = match_levels(desc1, levels1, desc2, levels2, ratio=0.9, precision=precision)
    if precision == "int8":
        split1, split2 = split_levels(quantise_rows(desc1), levels1), split_levels(quantise_rows(desc2), levels2)
    else:
        split1, split2 = split_levels(desc1, levels1), split_levels(desc2, levels2)
    found = match_levels(split1, None, split2, None, ratio=0.9, precision=precision)
    assert len(expected) > 20 and np.array_equal(found, expected)


def test_unsplit_rows_without_levels_are_refused() -> None:
    desc = _unit(np.random.default_rng(24), 5)
    with pytest.raises(ValueError, match="level labels"):
        match_levels(desc, None, desc, np.zeros(5, np.float32))


def _greedy_reference(matches: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    used1: set[int] = set()
    used2: set[int] = set()
    kept = []
    for k in np.argsort(-similarity, kind="stable"):
        i, j = matches[k]
        if i not in used1 and j not in used2:
            used1.add(i)
            used2.add(j)
            kept.append(k)
    return matches[kept]


def test_greedy_one_to_one_equals_the_plain_loop_in_content_and_order() -> None:
    rng = np.random.default_rng(25)
    for _ in range(20):
        matches = rng.integers(0, 40, (120, 2)).astype(np.int64)  # many shared rows and columns
        similarity = rng.random(120).astype(np.float32)
        assert np.array_equal(_greedy_one_to_one(matches, similarity), _greedy_reference(matches, similarity))
