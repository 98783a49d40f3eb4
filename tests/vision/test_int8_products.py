"""Integer dot products of int8 descriptor rows, with and without ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.vision import int8_products as products_module
from retrieval.vision.int8_products import int8_products


def _factors(n: int, m: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    left = rng.integers(-127, 128, (n, dim), dtype=np.int8)
    right = rng.integers(-127, 128, (m, dim), dtype=np.int8)
    left[0] = 127  # the extremes, where a wrong zero point or an overflow would show
    right[0] = -127
    return left, np.ascontiguousarray(right.T)


def test_products_equal_the_exact_integer_products() -> None:
    left, right_t = _factors(300, 200, 120)
    expected = left.astype(np.int64) @ right_t.astype(np.int64)
    found = int8_products(left, right_t)
    assert found.dtype == np.int32 and found.shape == (300, 200)
    assert np.array_equal(found, expected)
    assert found[0, 0] == -127 * 127 * 120


def test_onnx_runtime_is_used_when_installed() -> None:
    assert products_module._session() is not None


def test_without_onnx_runtime_the_float_products_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    left, right_t = _factors(50, 70, 120, seed=1)
    with_runtime = int8_products(left, right_t)
    monkeypatch.setattr(products_module, "_session", lambda: None)
    assert np.array_equal(int8_products(left, right_t), with_runtime)


def test_without_onnx_runtime_wide_rows_are_still_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(products_module, "_session", lambda: None)
    left, right_t = _factors(4, 3, 2048, seed=2)  # sums beyond float32's exact integers
    assert np.array_equal(int8_products(left, right_t), left.astype(np.int64) @ right_t.astype(np.int64))


@pytest.mark.parametrize("n, m", [(0, 5), (5, 0)])
def test_an_empty_factor_gives_an_empty_product(n: int, m: int) -> None:
    left, right_t = _factors(max(n, 1), max(m, 1), 8)
    found = int8_products(left[:n], np.ascontiguousarray(right_t[:, :m]))
    assert found.shape == (n, m) and found.dtype == np.int32


def test_float_factors_are_refused() -> None:
    with pytest.raises(TypeError, match="int8"):
        int8_products(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8))


def test_factors_that_do_not_multiply_are_refused() -> None:
    with pytest.raises(ValueError, match="do not multiply"):
        int8_products(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8))
