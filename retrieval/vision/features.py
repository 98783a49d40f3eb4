"""Feature containers and the compact binary format for local features."""

from __future__ import annotations

import dataclasses
import functools
import struct

import numpy as np

from retrieval.vision.matching import Int8Rows, LevelRows, quantise_rows, split_levels

# Version 1: float32 keypoints, scores and scales, then descriptors as float16, float32 or
# uint8. Version 2 (int8 descriptors): float32 keypoints, float16 scores and scales, then
# each descriptor row as int8 scaled to its largest magnitude (rows are unit vectors, so
# no scale is stored: they are re-normalised when read): ~4x smaller than version 1's
# float16 rows for 120-d dense cells. Both are read; new rows are written in the format
# their pipeline asks for (``Extractor.descriptor_dtype``).
_MAGIC = b"LFv1"
_MAGIC_V2 = b"LFv2"
_HEADER = struct.Struct("<4sIIB")  # magic, number of features, descriptor dim, dtype code
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype("u1")}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_INT8 = "i1"
_INT8_CODE = 4


class FeatureFormatError(ValueError):
    """A stored local-feature blob is malformed."""


@dataclasses.dataclass(frozen=True)
class LocalFeatures:
    """Local features of one image.

    Attributes:
        keypoints: (N, 2) float32, x and y in original-image pixels.
        descriptors: (N, D) float32, each row L2-normalised.
        scores: (N,) float32, detector or attention score (higher is better).
        scales: (N,) float32, keypoint size in original-image pixels.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    scales: np.ndarray

    def __post_init__(self) -> None:
        n = self.keypoints.shape[0]
        if self.keypoints.shape != (n, 2):
            raise ValueError(f"keypoints must be (N, 2), got {self.keypoints.shape}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != n:
            raise ValueError(f"descriptors must be (N={n}, D), got {self.descriptors.shape}")
        if self.scores.shape != (n,) or self.scales.shape != (n,):
            raise ValueError(
                f"scores and scales must be ({n},), got {self.scores.shape} and {self.scales.shape}"
            )

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    @functools.cached_property
    def int8_rows(self) -> Int8Rows:
        """The descriptors quantised for int8 matching, computed once per object: a
        query is matched against a hundred candidates."""
        return quantise_rows(self.descriptors)

    @functools.cached_property
    def float_levels(self) -> LevelRows:
        """The float descriptors split by level (``scales``), for ``match_levels``."""
        return split_levels(self.descriptors, self.scales)

    @functools.cached_property
    def int8_levels(self) -> LevelRows:
        """:attr:`int8_rows` split by level (``scales``), for ``match_levels``."""
        return split_levels(self.int8_rows, self.scales)

    @classmethod
    def empty(cls, dim: int) -> LocalFeatures:
        return cls(
            keypoints=np.zeros((0, 2), np.float32),
            descriptors=np.zeros((0, dim), np.float32),
            scores=np.zeros((0,), np.float32),
            scales=np.zeros((0,), np.float32),
        )

    def to_bytes(self, *, descriptor_dtype: str = "<f2") -> bytes:
        """Serialise to the compact blob: a 13-byte header, then float32 keypoints,
        scores and scales, then descriptors (float16 by default: half the size,
        and matching on them is unchanged to ~1e-3 in cosine similarity).

        ``descriptor_dtype="i1"`` writes version 2: each descriptor row as int8 scaled
        to its largest magnitude (cosine similarities change by ~1e-3), scores and
        scales as float16.
        """
        if descriptor_dtype == _INT8:
            return self._to_bytes_int8()
        dtype = np.dtype(descriptor_dtype)
        if dtype not in _CODES:
            raise ValueError(f"unsupported descriptor dtype {descriptor_dtype!r}")
        n, dim = len(self), self.dim
        parts = [
            _HEADER.pack(_MAGIC, n, dim, _CODES[dtype]),
            np.ascontiguousarray(self.keypoints, "<f4").tobytes(),
            np.ascontiguousarray(self.scores, "<f4").tobytes(),
            np.ascontiguousarray(self.scales, "<f4").tobytes(),
        ]
        if dtype == np.dtype("u1"):
            parts.append(np.clip(np.rint(self.descriptors * 255.0), 0, 255).astype("u1").tobytes())
        else:
            parts.append(np.ascontiguousarray(self.descriptors, dtype).tobytes())
        return b"".join(parts)

    def _to_bytes_int8(self) -> bytes:
        peak = np.abs(self.descriptors).max(axis=1, keepdims=True) if len(self) else np.ones((0, 1), np.float32)
        rows = np.rint(self.descriptors / np.where(peak > 0, peak, 1.0) * 127.0).astype("i1")
        return b"".join(
            [
                _HEADER.pack(_MAGIC_V2, len(self), self.dim, _INT8_CODE),
                np.ascontiguousarray(self.keypoints, "<f4").tobytes(),
                np.ascontiguousarray(self.scores, "<f2").tobytes(),
                np.ascontiguousarray(self.scales, "<f2").tobytes(),
                rows.tobytes(),
            ]
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> LocalFeatures:
        """Inverse of :meth:`to_bytes` (either version); descriptors come back as
        float32 (int8 rows re-normalised to unit length)."""
        if len(blob) < _HEADER.size:
            raise FeatureFormatError("local-feature blob is shorter than its header")
        magic, n, dim, code = _HEADER.unpack_from(blob)
        if magic == _MAGIC_V2 and code == _INT8_CODE:
            reader = _Reader(blob, n * (8 + 2 + 2 + dim))
            keypoints = reader.take(n * 2, "<f4").reshape(n, 2)
            scores, scales = reader.take(n, "<f2"), reader.take(n, "<f2")
            descriptors = reader.take(n * dim, "i1").reshape(n, dim).astype(np.float32)
            norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
            descriptors /= np.where(norms > 0, norms, 1.0)
        elif magic == _MAGIC and code in _DTYPES:
            dtype = _DTYPES[code]
            reader = _Reader(blob, n * 4 * 4 + n * dim * dtype.itemsize)
            keypoints = reader.take(n * 2, "<f4").reshape(n, 2)
            scores, scales = reader.take(n, "<f4"), reader.take(n, "<f4")
            descriptors = reader.take(n * dim, dtype).reshape(n, dim).astype(np.float32)
            if dtype == np.dtype("u1"):
                descriptors /= 255.0
        else:
            raise FeatureFormatError("not a local-feature blob (bad magic or dtype)")
        return cls(
            keypoints=keypoints.copy(),
            descriptors=descriptors,
            scores=scores.astype(np.float32),
            scales=scales.astype(np.float32),
        )


class _Reader:
    """Consecutive arrays from a blob whose body (after the header) has ``body_bytes``."""

    def __init__(self, blob: bytes, body_bytes: int) -> None:
        expected = _HEADER.size + body_bytes
        if len(blob) != expected:
            raise FeatureFormatError(f"local-feature blob has {len(blob)} bytes, expected {expected}")
        self.blob, self.offset = blob, _HEADER.size

    def take(self, count: int, dtype: np.dtype | str) -> np.ndarray:
        array = np.frombuffer(self.blob, dtype=dtype, count=count, offset=self.offset)
        self.offset += array.nbytes
        return array


@dataclasses.dataclass(frozen=True)
class ImageFeatures:
    """Everything an extractor produces for one image.

    Attributes:
        global_descriptor: (D,) float32, L2-normalised.
        local: local features, keypoints in original-image pixels (what is stored).
        local_rescaled: a query's local features extracted again at other image sizes
            (``Extractor.extract_query``), keypoints also in original-image pixels; never
            stored. Verification keeps the set that matches a candidate best, so a catalog
            photo taken nearer or farther than the query still lines up cell for cell.
    """

    global_descriptor: np.ndarray
    local: LocalFeatures
    local_rescaled: tuple[LocalFeatures, ...] = ()

    @property
    def local_sets(self) -> tuple[LocalFeatures, ...]:
        """``local`` first, then ``local_rescaled``."""
        return (self.local, *self.local_rescaled)
