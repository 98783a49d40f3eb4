"""Any extractor, with its stored local descriptors product-quantised (``vision/compact.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.vision.compact import LocalCodec
from retrieval.vision.extractors.base import Extractor
from retrieval.vision.features import ImageFeatures


class CodebookExtractor(Extractor):
    """``inner`` unchanged, except that catalog rows are written as version-3 blobs with
    ``codec``'s codebook, and the model version names that codebook (rows written with
    another codebook, or none, belong to another version and are reindexed)."""

    def __init__(self, inner: Extractor, codec: LocalCodec) -> None:
        if codec.codebook is None:
            raise ValueError("a CodebookExtractor needs a codec with a codebook")
        if codec.codebook.dim != inner.local_dim:
            raise ValueError(
                f"the codebook is for {codec.codebook.dim}-d local descriptors, {inner.model_name} makes {inner.local_dim}-d"
            )
        self.inner = inner
        self._codec = codec
        self.descriptor_dtype = inner.descriptor_dtype  # type: ignore[misc]

    @property
    def codec(self) -> LocalCodec:
        return self._codec

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def model_version(self) -> str:
        return f"{self.inner.model_version}+{self._codec.tag}"

    @property
    def global_dim(self) -> int:
        return self.inner.global_dim

    @property
    def local_dim(self) -> int:
        return self.inner.local_dim

    def extract(self, image: np.ndarray) -> ImageFeatures:
        return self.inner.extract(image)

    def extract_query(self, image: np.ndarray) -> ImageFeatures:
        return self.inner.extract_query(image)

    def __getattr__(self, name: str) -> Any:  # the inner extractor's own settings
        if name == "inner":  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)
