"""Dot products of int8 descriptor rows on the CPU's integer dot-product instructions.

Matching local features is bound by the (N, M) similarity matrix of a query's cells with
a candidate's. ONNX Runtime's MLAS kernels multiply uint8 by int8 matrices with VNNI /
AVX2 integer instructions, several times faster than float32 BLAS on the same rows
(bench/README.md); numpy has no integer matrix product. ONNX Runtime is a well-kept,
CPU-only wheel; it is imported on first use, and without it the same products are taken
in float32, which is exact here (see :func:`_exact_in_float32`), so results never depend
on whether it is installed.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# MLAS' fast path is uint8 x int8: the left factor is shifted into uint8 and the shift
# removed again by the zero point, so the product is that of the int8 rows.
_ZERO_POINT = 128


def int8_products(left: np.ndarray, right_t: np.ndarray) -> np.ndarray:
    """All dot products of int8 rows: ``left @ right_t`` in int32.

    Args:
        left: (N, D) int8 rows, values in [-127, 127].
        right_t: (D, M) int8, the other rows transposed (C-contiguous).
    Returns:
        (N, M) int32, exact.
    """
    if left.dtype != np.int8 or right_t.dtype != np.int8:
        raise TypeError(f"int8 factors expected, got {left.dtype} and {right_t.dtype}")
    if left.ndim != 2 or right_t.ndim != 2 or left.shape[1] != right_t.shape[0]:
        raise ValueError(f"shapes do not multiply: {left.shape} @ {right_t.shape}")
    if left.shape[0] == 0 or right_t.shape[1] == 0 or left.shape[1] == 0:
        return np.zeros((left.shape[0], right_t.shape[1]), np.int32)
    session = _session()
    if session is None:
        return _products_numpy(left, right_t)
    # int8 -> uint8 + 128: flipping the sign bit of two's complement adds 128.
    shifted = np.ascontiguousarray(left).view(np.uint8) ^ np.uint8(0x80)
    return session.run(None, {"left": shifted, "right": np.ascontiguousarray(right_t)})[0]


def _products_numpy(left: np.ndarray, right_t: np.ndarray) -> np.ndarray:
    dim = left.shape[1]
    dtype = np.float32 if _exact_in_float32(dim) else np.float64
    return (left.astype(dtype) @ right_t.astype(dtype)).astype(np.int32)


def _exact_in_float32(dim: int) -> bool:
    """float32 holds every integer up to 2**24, and a sum of ``dim`` products of values
    in [-128, 127] stays below that for dim <= 1024: the float product is then exact."""
    return dim * 128 * 128 < 2**24


@functools.cache
def _session() -> Any | None:
    """One single-threaded ONNX Runtime session per process (None without the package).

    One thread: the search worker verifies one candidate after another and runs one
    process per core; on matrices this small a second thread costs more than it saves.
    """
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        logger.info("onnxruntime is not installed: int8 matching multiplies in float32")
        return None
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.UINT8, [], [_ZERO_POINT])),
        helper.make_node("MatMulInteger", ["left", "right", "zero"], ["products"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_products",
        [
            helper.make_tensor_value_info("left", TensorProto.UINT8, ["N", "D"]),
            helper.make_tensor_value_info("right", TensorProto.INT8, ["D", "M"]),
        ],
        [helper.make_tensor_value_info("products", TensorProto.INT32, ["N", "M"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the oldest IR that opset 17 needs: readable by any recent runtime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
