"""Compact stored local features: product-quantised descriptors and 16-bit keypoints.

A catalog photo's cells are stored as blob version 3 (``LFv3``): per level a count, a
cell size and the grid, keypoints as the uint16 index of their cell (detector keypoints:
x and y as uint16 in units of ``unit`` pixels, and a float16 size per row), and each
descriptor as ``M`` one-byte codes of a product quantiser (Jegou et al., PAMI 2011), optionally after a
learned rotation (OPQ, Ge et al., CVPR 2013). Scores are not stored: nothing after
extraction reads them. The query is never stored and stays float; matching compares it
with the decoded catalog rows (an asymmetric distance, which loses less than comparing
codes with codes).

The codebook belongs to the model version: a blob records the first 4 bytes of its
codebook's digest and refuses to decode with another one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import tempfile
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from retrieval.vision.features import FeatureFormatError, LocalFeatures

MAGIC = b"LFv3"
# magic, codebook digest (4 bytes), features, descriptor dim, codes per row, levels, keypoint unit
_HEADER = struct.Struct("<4s4sIHHBf")
# cells in the level, cell size, then the grid: step x, step y, columns (0, 0, 0: x and y stored)
_LEVEL = struct.Struct("<IfffH")
_MAX_LEVELS = 255
logger = logging.getLogger(__name__)
_SPEC = re.compile(r"^(?P<kind>pq|opq)(?P<m>\d+)$")


@dataclasses.dataclass(frozen=True)
class CodebookSpec:
    """``pq<M>`` (M one-byte sub-quantisers) or ``opq<M>`` (the same after a learned rotation)."""

    rotate: bool
    subquantizers: int

    @classmethod
    def parse(cls, text: str) -> CodebookSpec:
        match = _SPEC.match(text)
        if not match or int(match["m"]) < 1:
            raise ValueError(f"codebook spec must look like pq20 or opq24, got {text!r}")
        return cls(rotate=match["kind"] == "opq", subquantizers=int(match["m"]))

    def __str__(self) -> str:
        return f"{'opq' if self.rotate else 'pq'}{self.subquantizers}"


@dataclasses.dataclass(frozen=True)
class Codebook:
    """A product quantiser.

    Attributes:
        centroids: (M, 256, D / M) float32, sub-quantiser m's centroids.
        rotation: (D, D) float32 applied as ``x @ rotation.T`` before quantising, or None.
    """

    centroids: np.ndarray
    rotation: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[0] * self.centroids.shape[2])

    @property
    def subquantizers(self) -> int:
        return int(self.centroids.shape[0])

    @functools.cached_property
    def digest(self) -> bytes:
        """4 bytes that tell codebooks apart (stored in each blob; hashed once)."""
        h = hashlib.sha256(np.ascontiguousarray(self.centroids, "<f4").tobytes())
        if self.rotation is not None:
            h.update(np.ascontiguousarray(self.rotation, "<f4").tobytes())
        return h.digest()[:4]

    def save(self, path: Path) -> None:
        arrays = {"centroids": self.centroids.astype("<f4")}
        if self.rotation is not None:
            arrays["rotation"] = self.rotation.astype("<f4")
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    def __post_init__(self) -> None:
        if self.centroids.ndim != 3 or not 1 <= self.centroids.shape[1] <= 256:
            raise ValueError(f"centroids must be (M, <=256, D / M), got {self.centroids.shape}")
        if self.rotation is not None and self.rotation.shape != (self.dim, self.dim):
            raise ValueError(f"the rotation must be ({self.dim}, {self.dim}), got {self.rotation.shape}")

    @classmethod
    def load(cls, path: Path) -> Codebook:
        """Raises ValueError for anything but a codebook file that :meth:`save` wrote."""
        try:
            with np.load(path) as data:
                rotation = data["rotation"].astype(np.float32) if "rotation" in data else None
                return cls(centroids=data["centroids"].astype(np.float32), rotation=rotation)
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a codebook: {exc}") from None

    def codes(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) float32 -> (N, M) uint8, the nearest centroid of each sub-vector."""
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise ValueError(f"descriptors must be (N, {self.dim}), got {descriptors.shape}")
        x = descriptors.astype(np.float32)
        if self.rotation is not None:
            x = x @ self.rotation.T
        m, k, sub = self.centroids.shape
        parts = x.reshape(len(x), m, sub)
        codes = np.empty((len(x), m), np.uint8)
        for j in range(m):
            c = self.centroids[j]
            # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
            codes[:, j] = np.argmax(parts[:, j] @ c.T - 0.5 * np.einsum("ij,ij->i", c, c), axis=1)
        return codes

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """(N, M) uint8 -> (N, D) float32 unit rows (in the original, unrotated space)."""
        m = self.subquantizers
        x = self.centroids[np.arange(m), codes.astype(np.intp)].reshape(len(codes), self.dim)
        if self.rotation is not None:
            x = x @ self.rotation
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def train_codebook(cells: np.ndarray, spec: CodebookSpec, *, seed: int = 0, iterations: int = 25) -> Codebook:
    """Learn a product quantiser on (N, D) float32 unit rows with faiss' k-means (OPQ's
    rotation first for ``opq`` specs). N should be at least ~100 x 256."""
    import faiss

    x = np.ascontiguousarray(cells, np.float32)
    dim = x.shape[1]
    if dim % spec.subquantizers:
        raise ValueError(f"{spec.subquantizers} sub-quantisers do not divide {dim} dimensions")
    rotation = None
    if spec.rotate:
        opq = faiss.OPQMatrix(dim, spec.subquantizers)
        opq.niter = iterations
        opq.verbose = False
        opq.train(x)
        rotation = faiss.vector_to_array(opq.A).reshape(dim, dim).astype(np.float32)
        x = x @ rotation.T
    pq = faiss.ProductQuantizer(dim, spec.subquantizers, 8)
    pq.cp.niter = iterations
    pq.cp.seed = seed
    pq.train(np.ascontiguousarray(x))
    centroids = faiss.vector_to_array(pq.centroids).reshape(spec.subquantizers, 256, dim // spec.subquantizers)
    return Codebook(centroids=centroids.astype(np.float32), rotation=rotation)


def encode(features: LocalFeatures, codebook: Codebook) -> bytes:
    """Blob version 3 of ``features``.

    Rows grouped in levels (runs of equal ``scales``, as dense cells come) store one scale
    per level, and a level whose keypoints are the centres of a regular grid of cells
    stores each as its cell's index (2 bytes) instead of x and y (4 bytes). Keypoints of
    a detector, each with its own size, are stored with a float16 size per row (level
    count 0).
    """
    levels: list[tuple[int, float]] = []
    for scale in features.scales.tolist():
        if levels and levels[-1][1] == scale:
            levels[-1] = (levels[-1][0] + 1, scale)
        else:
            levels.append((1, scale))
    # a level costs a table entry: features that each have their own size go per row
    per_row = len(levels) > _MAX_LEVELS or len(levels) * _LEVEL.size > 2 * len(features)
    peak = float(features.keypoints.max()) if len(features) else 0.0
    unit = peak / 65535.0 if np.isfinite(peak) and peak > 0 else 1.0
    parts = [
        _HEADER.pack(
            MAGIC, codebook.digest, len(features), features.dim, codebook.subquantizers,
            0 if per_row else len(levels), unit,
        )
    ]  # fmt: skip
    if per_row:
        parts += [_xy(features.keypoints, unit), features.scales.astype("<f2").tobytes()]
    else:
        blocks, start = [], 0
        for count, scale in levels:
            keypoints = features.keypoints[start : start + count]
            start += count
            grid = _grid(keypoints)
            if grid is None:
                parts.append(_LEVEL.pack(count, scale, 0.0, 0.0, 0))
                blocks.append(_xy(keypoints, unit))
            else:
                step_x, step_y, columns, index = grid
                parts.append(_LEVEL.pack(count, scale, step_x, step_y, columns))
                blocks.append(index.astype("<u2").tobytes())
        parts += blocks
    parts.append(codebook.codes(features.descriptors).tobytes())
    return b"".join(parts)


def _xy(keypoints: np.ndarray, unit: float) -> bytes:
    return np.clip(np.rint(keypoints / unit), 0, 65535).astype("<u2").tobytes()


def _grid(keypoints: np.ndarray) -> tuple[float, float, int, np.ndarray] | None:
    """(step x, step y, columns, (N,) cell index) when every keypoint is a cell centre
    ``((column + 0.5) * step_x, (row + 0.5) * step_y)`` of one grid with at most 65536
    cells, found from the smallest gap between keypoint coordinates; else None."""
    if len(keypoints) < 2:
        return None
    cells, steps = [], []
    for axis in (0, 1):
        values = np.unique(keypoints[:, axis].astype(np.float64))
        gaps = np.diff(values)
        step = float(gaps.min()) if len(gaps) else 2.0 * float(values[0])
        if not step > 0:
            return None
        x = keypoints[:, axis].astype(np.float64)
        cell = np.rint(x / step - 0.5)
        # the gap is a float32 difference; the least-squares step over all cells is exact
        step = float(np.sum(x * (cell + 0.5)) / np.sum((cell + 0.5) ** 2))
        if cell.min() < 0 or np.abs((cell + 0.5) * step - x).max() > 0.01:
            return None
        cells.append(cell.astype(np.int64))
        steps.append(step)
    columns = int(cells[0].max()) + 1
    if columns > 65535 or columns * (int(cells[1].max()) + 1) > 65536:
        return None
    return steps[0], steps[1], columns, cells[1] * columns + cells[0]


def is_compact(blob: bytes) -> bool:
    return blob[:4] == MAGIC


def decode(blob: bytes, codebook: Codebook) -> LocalFeatures:
    """Inverse of :func:`encode` (keypoints to ``unit`` / 2 px, or exact cell centres;
    descriptors reconstructed from their codes).

    Raises FeatureFormatError on a malformed blob or one written with another codebook."""
    if len(blob) < _HEADER.size:
        raise FeatureFormatError("local-feature blob is shorter than its header")
    magic, digest, n, dim, m, level_count, unit = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise FeatureFormatError("not a compact local-feature blob")
    if digest != codebook.digest or dim != codebook.dim or m != codebook.subquantizers:
        raise FeatureFormatError("the blob was written with another codebook; reindex the catalog")
    offset = _HEADER.size
    try:
        if level_count == 0:
            keypoints = _read(blob, offset, "<u2", n * 2).reshape(n, 2).astype(np.float32) * unit
            scales = _read(blob, offset + n * 4, "<f2", n).astype(np.float32)
            offset += n * 6
        else:
            keypoints, scales, offset = _read_levels(blob, offset, level_count, unit)
        if len(keypoints) != n:
            raise FeatureFormatError("level counts do not add up to the number of features")
        codes = _read(blob, offset, np.uint8, n * m).reshape(n, m)
    except struct.error:
        raise FeatureFormatError("local-feature blob is truncated") from None
    if offset + n * m != len(blob):
        raise FeatureFormatError(f"local-feature blob has {len(blob)} bytes, expected {offset + n * m}")
    return LocalFeatures(
        keypoints=keypoints,
        descriptors=codebook.reconstruct(codes),
        scores=np.zeros(n, np.float32),
        scales=scales,
    )


def _read(blob: bytes, offset: int, dtype: np.dtype | str | type, count: int) -> np.ndarray:
    size = np.dtype(dtype).itemsize * count
    if offset + size > len(blob):
        raise FeatureFormatError("local-feature blob is truncated")
    return np.frombuffer(blob, dtype, count, offset)


def _read_levels(blob: bytes, offset: int, level_count: int, unit: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The level table and each level's keypoints: ((N, 2) keypoints, (N,) scales, offset after)."""
    table = []
    for _ in range(level_count):
        table.append(_LEVEL.unpack_from(blob, offset))
        offset += _LEVEL.size
    keypoints, scales = [], []
    for count, scale, step_x, step_y, columns in table:
        if step_x > 0 and columns > 0:
            index = _read(blob, offset, "<u2", count).astype(np.int64)
            offset += count * 2
            xy = np.stack([(index % columns + 0.5) * step_x, (index // columns + 0.5) * step_y], axis=1)
        else:
            xy = _read(blob, offset, "<u2", count * 2).reshape(count, 2) * unit
            offset += count * 4
        keypoints.append(xy.astype(np.float32))
        scales.append(np.full(count, scale, np.float32))
    return np.concatenate(keypoints), np.concatenate(scales), offset


class LocalCodec:
    """How an extractor's local features become stored blobs and back.

    Without a codebook, blobs are versions 1-2 (``LocalFeatures.to_bytes`` with
    ``descriptor_dtype``); with one, version 3. Reading accepts every version: a version-3
    blob is decoded with this codec's codebook or, when another codebook wrote it (rows
    of an earlier model version, before a reindex), with the codebook of that digest in
    ``library`` (``<digest hex>.npz``), where :meth:`remember` keeps a copy of each one used.
    """

    def __init__(
        self, *, descriptor_dtype: str = "<f2", codebook: Codebook | None = None, library: Path | None = None
    ) -> None:
        self.descriptor_dtype = descriptor_dtype
        self.codebook = codebook
        self.library = library
        self._known: dict[bytes, Codebook] = {codebook.digest: codebook} if codebook is not None else {}

    @property
    def tag(self) -> str:
        """What the model version records about the encoding: ``""`` or ``pq30.<digest>``."""
        if self.codebook is None:
            return ""
        spec = CodebookSpec(rotate=self.codebook.rotation is not None, subquantizers=self.codebook.subquantizers)
        return f"{spec}.{self.codebook.digest.hex()}"

    def remember(self) -> None:
        """Keep a copy of the codebook in ``library`` so that its rows stay readable
        after the setting names another one."""
        if self.codebook is None or self.library is None:
            return
        path = self.library / f"{self.codebook.digest.hex()}.npz"
        if path.exists():
            return
        try:  # several workers may start at once: each writes its own file, then renames
            self.library.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=self.library, suffix=".tmp")
            os.close(handle)
            self.codebook.save(Path(partial))
            os.replace(partial, path)
        except OSError:
            logger.warning("could not keep a copy of codebook %s in %s", self.codebook.digest.hex(), self.library)

    def encode(self, features: LocalFeatures) -> bytes:
        if self.codebook is not None:
            return encode(features, self.codebook)
        return features.to_bytes(descriptor_dtype=self.descriptor_dtype)

    def decode(self, blob: bytes) -> LocalFeatures:
        """Any blob version back to features; FeatureFormatError when malformed or when
        its codebook is unknown."""
        if not is_compact(blob):
            return LocalFeatures.from_bytes(blob)
        if len(blob) < _HEADER.size:
            raise FeatureFormatError("local-feature blob is shorter than its header")
        return decode(blob, self._codebook_for(_HEADER.unpack_from(blob)[1]))

    def _codebook_for(self, digest: bytes) -> Codebook:
        if digest not in self._known:
            path = self.library / f"{digest.hex()}.npz" if self.library is not None else None
            if path is None or not path.exists():
                raise FeatureFormatError(
                    f"the codebook {digest.hex()} that wrote this row is not available; reindex the catalog"
                )
            try:
                self._known[digest] = Codebook.load(path)
            except ValueError as exc:
                raise FeatureFormatError(f"the codebook {digest.hex()} is unreadable: {exc}") from None
        return self._known[digest]
