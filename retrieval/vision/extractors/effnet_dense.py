"""One EfficientNet-Lite for both descriptors: the default pipeline ``effnet-lite2-dense``.

DELG's premise (Cao et al. ECCV'20) is one network for the global and the local features.
Here one ImageNet EfficientNet-Lite serves both, and every pass through it is used twice:

- at the global sizes (``global_size`` times each of ``global_scales``) the head's feature
  map is GeM-pooled into the global descriptor, as ``EfficientNetLiteGeM`` does;
- the pass at ``global_size`` itself (scale 1) also yields the stride-16 map: the
  **coarse** level of dense cells (32 px cells at 512 px);
- one more pass at ``fine_size``, stopped at stride 16, yields the **fine** level
  (16 px cells at 1024 px). When a global size equals ``fine_size`` (scale 2 of 512 px,
  the default) that global pass yields the fine level too, and no pass is run twice.

Two levels replace the query at three sizes of ``effnet-lite2-local``: a photo taken
twice as near or as far pairs the query's fine cells with the catalog's coarse ones or
the other way round (``matching.match_levels``), so both sides are extracted once, at
sizes already paid for, and verified with one RANSAC. Levels are told apart by their
``scales`` (cell size). Catalog rows keep ``fine_features + coarse_features`` cells as int8
rows (``LocalFeatures.to_bytes(descriptor_dtype="i1")``); a query, never stored, keeps
``query_fine_features + query_coarse_features``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from retrieval.vision.extractors.base import Extractor
from retrieval.vision.extractors.effnet_local import cells_from_map, check_rgb, stride16_layer
from retrieval.vision.extractors.efficientnet_lite import (
    CONVERTER_VERSION,
    HEAD_CHANNELS,
    build_efficientnet_lite,
    ensure_weights,
)
from retrieval.vision.features import ImageFeatures, LocalFeatures
from retrieval.vision.preprocessing import resize_long_side

# Bump when the extraction below changes in a way that changes stored features.
CODE_VERSION = "1"


def parallel_passes() -> bool:
    """Whether the fine pass runs beside the global ones: when TensorFlow may use several
    cores for this process (a search worker). An indexing process is pinned to one
    thread (``TF_NUM_INTRAOP_THREADS=1``, one process per core), where it would only
    compete with itself."""
    return os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip() != "1" and (os.cpu_count() or 1) > 1


def gem(fmap: np.ndarray, p: float) -> np.ndarray:
    """GeM pooling of (h, w, C) -> (C,) float32, L2-normalised."""
    pooled = np.mean(np.maximum(fmap, 1e-6) ** p, axis=(0, 1)) ** (1.0 / p)
    return (pooled / np.linalg.norm(pooled)).astype(np.float32)


def merge_levels(*levels: LocalFeatures) -> LocalFeatures:
    """Concatenate feature sets (one per level) into one ``LocalFeatures``."""
    return LocalFeatures(
        keypoints=np.concatenate([level.keypoints for level in levels]),
        descriptors=np.concatenate([level.descriptors for level in levels]),
        scores=np.concatenate([level.scores for level in levels]),
        scales=np.concatenate([level.scales for level in levels]),
    )


class DenseEfficientNetLite(Extractor):
    """GeM global descriptor and two levels of dense cells from one EfficientNet-Lite."""

    descriptor_dtype = "i1"

    def __init__(
        self,
        *,
        spec: str,
        variant: str = "lite2",
        global_size: int = 512,
        global_scales: Sequence[float] = (0.7071, 1.0, 1.4142),
        gem_p: float = 3.0,
        fine_size: int = 1024,
        fine_features: int = 1000,
        coarse_features: int = 500,
        query_fine_features: int | None = None,
        query_coarse_features: int = 500,
        cache_dir: str | Path,
    ) -> None:
        if min(global_size, fine_size) < 64:
            raise ValueError(f"image sizes must be at least 64, got {global_size} and {fine_size}")
        if not global_scales or any(s <= 0 for s in global_scales):
            raise ValueError(f"global scales must be positive and non-empty, got {global_scales}")
        if fine_size == global_size:
            raise ValueError(f"the fine level ({fine_size} px) must differ from the global size ({global_size} px)")
        query_fine_features = fine_features if query_fine_features is None else query_fine_features
        if min(fine_features, coarse_features, query_fine_features, query_coarse_features) < 0:
            raise ValueError("feature counts must not be negative")
        self.spec = spec
        self.variant = variant
        self.global_size = int(global_size)
        self.global_scales = tuple(float(s) for s in global_scales)
        self.gem_p = float(gem_p)
        self.fine_size = int(fine_size)
        self.fine_features = int(fine_features)
        self.coarse_features = int(coarse_features)
        self.query_fine_features = int(query_fine_features)
        self.query_coarse_features = int(query_coarse_features)
        network = build_efficientnet_lite(variant, include_top=True)
        network.load_weights(ensure_weights(variant, cache_dir))
        layer, self._local_dim = stride16_layer(variant)
        cells = network.get_layer(layer).output
        both = keras.Model(network.inputs, [cells, network.get_layer("head_relu").output])
        fine = keras.Model(network.inputs, cells)
        signature = [tf.TensorSpec((None, None, 3), tf.float32)]
        self._both = tf.function(
            lambda x: [out[0] for out in both(x[tf.newaxis], training=False)],
            input_signature=signature,
            reduce_retracing=True,
        )
        self._fine = tf.function(
            lambda x: fine(x[tf.newaxis], training=False)[0], input_signature=signature, reduce_retracing=True
        )
        # The fine pass is about half the work and independent of the global passes: on
        # two cores the two halves in parallel beat one pass at a time on both cores
        # (small depthwise convolutions split poorly across threads; bench/README.md).
        self._fine_pass = ThreadPoolExecutor(1, thread_name_prefix="fine-pass") if parallel_passes() else None
        # A global scale whose pass is the fine pass (its size rounds to ``fine_size``).
        self._fine_scale = next((s for s in self.global_scales if round(s * self.global_size) == self.fine_size), None)

    @property
    def model_name(self) -> str:
        return self.spec

    @property
    def model_version(self) -> str:
        scales = ",".join(f"{s:g}" for s in self.global_scales)
        return (
            f"dense{CODE_VERSION}.{CONVERTER_VERSION}-g{self.global_size}x{scales}-p{self.gem_p:g}"
            f"-f{self.fine_size}n{self.fine_features}-c{self.global_size}n{self.coarse_features}-i8"
        )

    @property
    def global_dim(self) -> int:
        return HEAD_CHANNELS

    @property
    def local_dim(self) -> int:
        return self._local_dim

    def extract(self, image: np.ndarray) -> ImageFeatures:
        """Args: image (H, W, 3) uint8 RGB. A catalog photo's features."""
        return self._extract(image, self.fine_features, self.coarse_features)

    def extract_query(self, image: np.ndarray) -> ImageFeatures:
        """A query's features: as :meth:`extract` with ``query_fine_features`` and
        ``query_coarse_features`` cells."""
        return self._extract(image, self.query_fine_features, self.query_coarse_features)

    def _extract(self, image: np.ndarray, fine_features: int, coarse_features: int) -> ImageFeatures:
        check_rgb(image)
        height, width = image.shape[:2]
        fine_input = tf.convert_to_tensor(resize_long_side(image, self.fine_size).astype(np.float32))
        fine_pass = self._fine if self._fine_scale is None else self._both
        fine_pending = self._fine_pass.submit(fine_pass, fine_input) if self._fine_pass is not None else None
        total = np.zeros(HEAD_CHANNELS, np.float64)
        coarse_map: np.ndarray | None = None
        for scale in self.global_scales:
            if scale == self._fine_scale:
                continue
            resized = resize_long_side(image, scale * self.global_size)
            cells, head = self._both(tf.convert_to_tensor(resized.astype(np.float32)))
            total += gem(head.numpy(), self.gem_p)
            if scale == 1.0:
                coarse_map = cells.numpy()
        if coarse_map is None:  # scale 1 is not among the global scales
            resized = resize_long_side(image, self.global_size)
            coarse_map = self._fine(tf.convert_to_tensor(resized.astype(np.float32))).numpy()
        fine_output = fine_pending.result() if fine_pending is not None else fine_pass(fine_input)
        if self._fine_scale is None:
            fine_map = fine_output.numpy()
        else:
            fine_cells, fine_head = fine_output
            fine_map = fine_cells.numpy()
            total += gem(fine_head.numpy(), self.gem_p)
        local = merge_levels(
            cells_from_map(fine_map, height, width, fine_features),
            cells_from_map(coarse_map, height, width, coarse_features),
        )
        return ImageFeatures(global_descriptor=(total / np.linalg.norm(total)).astype(np.float32), local=local)
