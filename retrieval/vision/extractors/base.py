"""The interface every feature extractor implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from retrieval.vision.compact import LocalCodec
from retrieval.vision.features import ImageFeatures, LocalFeatures


class GlobalExtractor(abc.ABC):
    """Produces one L2-normalised global descriptor per image.

    ``name`` and ``version`` may be set per instance: a global descriptor's version
    depends on settings such as the input size (see ``EfficientNetLiteGeM``).
    """

    name: str
    version: str

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Dimension D of the global descriptor."""

    @abc.abstractmethod
    def extract_global(self, image: np.ndarray) -> np.ndarray:
        """Args: image (H, W, 3) uint8 RGB. Returns (D,) float32 with unit L2 norm."""


class LocalExtractor(abc.ABC):
    """Produces up to ``max_features`` local features per image."""

    name: ClassVar[str]
    version: ClassVar[str]

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Dimension of each local descriptor."""

    @abc.abstractmethod
    def extract_local(self, image: np.ndarray) -> LocalFeatures:
        """Args: image (H, W, 3) uint8 RGB. Returns keypoints in this image's pixels."""

    def extract_local_rescaled(self, image: np.ndarray, factors: Sequence[float]) -> list[LocalFeatures]:
        """The local features again at other image sizes (factors of the extractor's
        working size, 1.0 excluded), keypoints in this image's pixels. Default: none, for
        detectors that search scale space themselves (SIFT) or have no working size."""
        return []


class Extractor(abc.ABC):
    """A full pipeline: global descriptor plus local features for one image."""

    # How stored local descriptors are encoded (``LocalFeatures.to_bytes``).
    descriptor_dtype: ClassVar[str] = "<f2"

    @property
    def codec(self) -> LocalCodec:
        """How local features are stored and read back (``CodebookExtractor`` swaps in
        product-quantised blobs)."""
        return LocalCodec(descriptor_dtype=self.descriptor_dtype)

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """Stable name stored next to every descriptor this extractor makes."""

    @property
    @abc.abstractmethod
    def model_version(self) -> str:
        """Version stored next to every descriptor; a change makes old rows stale."""

    @property
    @abc.abstractmethod
    def global_dim(self) -> int:
        """Dimension of the global descriptor."""

    @property
    @abc.abstractmethod
    def local_dim(self) -> int:
        """Dimension of each local descriptor."""

    @abc.abstractmethod
    def extract(self, image: np.ndarray) -> ImageFeatures:
        """Args: image (H, W, 3) uint8 RGB in original pixels."""

    def extract_query(self, image: np.ndarray) -> ImageFeatures:
        """Features of a search query: ``extract`` plus, where the pipeline has them,
        local features at more image sizes (``ImageFeatures.local_rescaled``)."""
        return self.extract(image)

    def warm_up(self) -> None:
        """Run one small synthetic photo through :meth:`extract` and :meth:`extract_query`,
        so that one-off costs (TensorFlow traces a function on its first call) are paid
        before the first real photo."""
        photo = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        self.extract(photo)
        self.extract_query(photo)
