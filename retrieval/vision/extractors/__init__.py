"""Feature extractors, one module per model, built by name.

A pipeline spec is ``<global>+<local>``, e.g. ``effnet-lite2-gem+rootsift``. Modules that
need TensorFlow are imported only when their model is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from retrieval.vision.extractors.base import Extractor, GlobalExtractor, LocalExtractor
from retrieval.vision.features import ImageFeatures

GLOBAL_MODELS = ("effnet-lite0-gem", "effnet-lite2-gem")
LOCAL_MODELS = ("rootsift",)


class UnknownModelError(ValueError):
    """The requested extractor is not one this code can build."""


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    spec: str = "effnet-lite2-gem+rootsift"
    cache_dir: Path = Path("var/models")
    global_image_size: int = 512
    global_scales: tuple[float, ...] = (0.7071, 1.0, 1.4142)
    max_keypoints: int = 1000


class GlobalLocalExtractor(Extractor):
    """A global extractor and a local extractor run on the same image."""

    def __init__(self, global_extractor: GlobalExtractor, local_extractor: LocalExtractor, spec: str) -> None:
        self.global_extractor = global_extractor
        self.local_extractor = local_extractor
        self.spec = spec

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


def check_spec(spec: str) -> None:
    """Raise UnknownModelError unless ``spec`` names a pipeline this code can build
    (cheap: loads nothing)."""
    global_name, sep, local_name = spec.partition("+")
    if not sep or global_name not in GLOBAL_MODELS or local_name not in LOCAL_MODELS:
        raise UnknownModelError(
            f"unknown extractor {spec!r}; choose <global>+<local> with global in "
            f"{', '.join(GLOBAL_MODELS)} and local in {', '.join(LOCAL_MODELS)}"
        )


def build_extractor(config: ExtractorConfig) -> Extractor:
    """Build the pipeline named by ``config.spec`` (loads weights; may take seconds)."""
    check_spec(config.spec)
    global_name, _, local_name = config.spec.partition("+")
    from retrieval.vision.extractors.efficientnet_lite import EfficientNetLiteGeM
    from retrieval.vision.extractors.rootsift import RootSIFT

    variant = global_name.split("-")[1]  # "lite0" / "lite2"
    global_extractor = EfficientNetLiteGeM(
        variant=variant,
        image_size=config.global_image_size,
        scales=config.global_scales,
        cache_dir=config.cache_dir,
    )
    local_extractor = RootSIFT(max_features=config.max_keypoints)
    return GlobalLocalExtractor(global_extractor, local_extractor, config.spec)
