"""A global extractor and a local extractor run on the same image, as one pipeline."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from retrieval.vision.extractors.base import Extractor, GlobalExtractor, LocalExtractor
from retrieval.vision.features import ImageFeatures


class GlobalLocalExtractor(Extractor):
    """A global extractor and a local extractor run on the same image."""

    def __init__(
        self,
        global_extractor: GlobalExtractor,
        local_extractor: LocalExtractor,
        spec: str,
        *,
        query_scales: Sequence[float] = (1.0,),
    ) -> None:
        self.global_extractor = global_extractor
        self.local_extractor = local_extractor
        self.spec = spec
        self.query_scales = tuple(query_scales)

    @property
    def model_name(self) -> str:
        return self.spec

    @property
    def model_version(self) -> str:
        local_tag = getattr(self.local_extractor, "config_tag", self.local_extractor.version)
        return f"{self.global_extractor.version}+{local_tag}"

    @property
    def global_dim(self) -> int:
        return self.global_extractor.dim

    @property
    def local_dim(self) -> int:
        return self.local_extractor.dim

    def extract(self, image: np.ndarray) -> ImageFeatures:
        """Args: image (H, W, 3) uint8 RGB."""
        return ImageFeatures(
            global_descriptor=self.global_extractor.extract_global(image),
            local=self.local_extractor.extract_local(image),
        )

    def extract_query(self, image: np.ndarray) -> ImageFeatures:
        """``extract`` plus the local features at the other ``query_scales``."""
        features = self.extract(image)
        others = [factor for factor in self.query_scales if factor != 1.0]
        if not others:
            return features
        rescaled = self.local_extractor.extract_local_rescaled(image, others)
        return dataclasses.replace(features, local_rescaled=tuple(rescaled))
