"""Feature containers and the compact binary format for local features."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

_MAGIC = b"LFv1"
_HEADER = struct.Struct("<4sIIB")  # magic, number of features, descriptor dim, dtype code
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype("u1")}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


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
        and matching on them is unchanged to ~1e-3 in cosine similarity)."""
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

    @classmethod
    def from_bytes(cls, blob: bytes) -> LocalFeatures:
        """Inverse of :meth:`to_bytes`; descriptors come back as float32."""
        if len(blob) < _HEADER.size:
            raise FeatureFormatError("local-feature blob is shorter than its header")
        magic, n, dim, code = _HEADER.unpack_from(blob)
        if magic != _MAGIC or code not in _DTYPES:
            raise FeatureFormatError("not a local-feature blob (bad magic or dtype)")
        dtype = _DTYPES[code]
        expected = _HEADER.size + n * 4 * 4 + n * dim * dtype.itemsize
        if len(blob) != expected:
            raise FeatureFormatError(f"local-feature blob has {len(blob)} bytes, expected {expected}")
        offset = _HEADER.size

        def take(count: int, dt: np.dtype | str) -> np.ndarray:
            nonlocal offset
            arr = np.frombuffer(blob, dtype=dt, count=count, offset=offset)
            offset += arr.nbytes
            return arr

        keypoints = take(n * 2, "<f4").reshape(n, 2)
        scores = take(n, "<f4")
        scales = take(n, "<f4")
        descriptors = take(n * dim, dtype).reshape(n, dim).astype(np.float32)
        if dtype == np.dtype("u1"):
            descriptors /= 255.0
        return cls(keypoints=keypoints.copy(), descriptors=descriptors, scores=scores.copy(), scales=scales.copy())


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
