"""Feature extractors, one module per model, built by name.

A pipeline spec is ``effnet-lite{0,2}-dense`` (one network for the global descriptor and
two levels of dense cells, the default), ``<global>+<local>``, e.g.
``effnet-lite2-gem+effnet-lite2-local``, or an
official model installed by ``manage.py fetch_model``: ``delg:<name>`` (its own global and
local features) or ``delf:<name>`` (DELF local features; the global descriptor is
``effnet-lite2-gem``, or another with ``<global>+delf:<name>``). Modules that need
TensorFlow are imported only when their model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.vision.extractors.base import Extractor, GlobalExtractor, LocalExtractor
from retrieval.vision.features import ImageFeatures
from retrieval.vision.verification import VerificationConfig

GLOBAL_MODELS = ("effnet-lite0-gem", "effnet-lite2-gem")
LOCAL_MODELS = ("rootsift", "xfeat", "effnet-lite0-local", "effnet-lite2-local")
DENSE_MODELS = ("effnet-lite0-dense", "effnet-lite2-dense")
# Dense stride-16 CNN cells (effnet_local.py): a loose ratio test (their neighbours are
# similar by construction), a fundamental matrix (a 16 px grid is too coarse for a tight
# homography, and the scenes are 3D) within a quarter of a cell (0.004 of the image,
# 4 px at 1024 px), and a "same place" threshold above the most inliers any mismatched
# pair reached (docs/quality.md).
_EFFNET_LOCAL_MATCHING = VerificationConfig(
    ratio=0.95, mutual=True, geometry="fundamental", relative_threshold=0.004, min_inliers=40
)
# The two levels of dense cells (effnet_dense.py): matched level by level, one RANSAC
# over all levels with MSAC and 500 iterations (docs/quality.md).
_DENSE_MATCHING = dataclasses.replace(
    _EFFNET_LOCAL_MATCHING, per_level=True, score="msac", max_iterations=500, min_inliers=40
)
# Matching settings of local features that do not suit the default (Lowe's ratio test):
# XFeat's reference matcher is mutual nearest neighbours with a cosine similarity > 0.82.
LOCAL_MATCHING: dict[str, VerificationConfig] = {
    "xfeat": VerificationConfig(ratio=1.0, mutual=True, min_similarity=0.82),
    "effnet-lite0-local": _EFFNET_LOCAL_MATCHING,
    "effnet-lite2-local": _EFFNET_LOCAL_MATCHING,
    "effnet-lite0-dense": _DENSE_MATCHING,
    "effnet-lite2-dense": _DENSE_MATCHING,
}


class UnknownModelError(ValueError):
    """The requested extractor is not one this code can build."""


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    spec: str = "effnet-lite2-dense"
    cache_dir: Path = Path("var/models")
    global_image_size: int = 512
    global_scales: tuple[float, ...] = (0.7071, 1.0, 1.4142)
    max_keypoints: int = 1000
    # Dense CNN cells kept per image (effnet-*-local): a 1024 px photo has ~3000.
    max_local_cells: int = 2000
    # A query's local features are also extracted at these factors of the local
    # extractor's working size (effnet-*-local: 1024 px), and each catalog candidate is
    # verified against the size that matches it best (docs/quality.md).
    query_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    # effnet-*-dense: the fine level's image size and cells kept per level.
    dense_fine_size: int = 1024
    dense_fine_cells: int = 1000
    dense_coarse_cells: int = 500
    dense_query_fine_cells: int = 1500
    dense_query_coarse_cells: int = 800


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


def check_spec(spec: str, *, cache_dir: Path | None = None) -> None:
    """Raise UnknownModelError unless ``spec`` names a pipeline this code can build
    (cheap: loads nothing; for ``delg:``/``delf:`` specs reads the model's ``model.json``
    under ``cache_dir``, without which they are refused)."""
    global_name, local_name, installed = _parse_spec(spec)
    if installed is not None:
        kind, name = installed
        if cache_dir is None:
            raise UnknownModelError(f"unknown extractor {spec!r}: installed models need the model directory")
        from retrieval.vision.model_registry import ModelNotInstalled, read_installed

        try:
            read_installed(cache_dir, name, kind=kind)
        except (ModelNotInstalled, ValueError) as exc:
            raise UnknownModelError(f"unknown extractor {spec!r}: {exc}") from None
        return
    if not global_name and local_name in DENSE_MODELS:
        return
    if global_name not in GLOBAL_MODELS or local_name not in LOCAL_MODELS:
        raise UnknownModelError(
            f"unknown extractor {spec!r}; choose {' or '.join(DENSE_MODELS)}, or <global>+<local> with global in "
            f"{', '.join(GLOBAL_MODELS)} and local in {', '.join(LOCAL_MODELS)}, "
            "or delg:<name> / delf:<name> for a model installed with `manage.py fetch_model`"
        )


DEFAULT_DELF_GLOBAL = "effnet-lite2-gem"


def matching_config(spec: str) -> VerificationConfig:
    """The settings to verify local features of pipeline ``spec`` with (cheap: loads
    nothing, imports no TensorFlow); the default for anything but ``LOCAL_MATCHING``."""
    _, local_name, installed = _parse_spec(spec)
    if installed is None and local_name in LOCAL_MATCHING:
        return LOCAL_MATCHING[local_name]
    return VerificationConfig()


def _parse_spec(spec: str) -> tuple[str, str, tuple[str, str] | None]:
    """(global, local, (kind, installed name) or None). ``delg:<name>`` has no separate
    global part; ``delf:<name>`` pairs with DEFAULT_DELF_GLOBAL."""
    if spec.startswith("delg:"):
        return "", "", ("delg", spec.removeprefix("delg:"))
    global_name, sep, local_name = spec.partition("+")
    if not sep:
        global_name, local_name = DEFAULT_DELF_GLOBAL, spec
    if local_name.startswith("delf:"):
        if global_name not in GLOBAL_MODELS:
            raise UnknownModelError(
                f"unknown extractor {spec!r}; the global part must be one of {', '.join(GLOBAL_MODELS)}"
            )
        return global_name, local_name, ("delf", local_name.removeprefix("delf:"))
    return (global_name, local_name, None) if sep else ("", spec, None)


def build_extractor(config: ExtractorConfig) -> Extractor:
    """Build the pipeline named by ``config.spec`` (loads weights; may take seconds)."""
    check_spec(config.spec, cache_dir=config.cache_dir)
    global_name, local_name, installed = _parse_spec(config.spec)
    if installed is not None and installed[0] == "delg":
        from retrieval.vision.extractors.delg import DelgExtractor
        from retrieval.vision.model_registry import read_installed

        model = read_installed(config.cache_dir, installed[1], kind="delg")
        return DelgExtractor(spec=config.spec, model=model, max_keypoints=config.max_keypoints)
    if installed is None and not global_name and local_name in DENSE_MODELS:
        from retrieval.vision.extractors.effnet_dense import DenseEfficientNetLite

        return DenseEfficientNetLite(
            spec=config.spec,
            variant=local_name.split("-")[1],
            global_size=config.global_image_size,
            global_scales=config.global_scales,
            fine_size=config.dense_fine_size,
            fine_features=config.dense_fine_cells,
            coarse_features=config.dense_coarse_cells,
            query_fine_features=config.dense_query_fine_cells,
            query_coarse_features=config.dense_query_coarse_cells,
            cache_dir=config.cache_dir,
        )
    from retrieval.vision.extractors.efficientnet_lite import EfficientNetLiteGeM

    variant = global_name.split("-")[1]  # "lite0" / "lite2"
    global_extractor = EfficientNetLiteGeM(
        variant=variant,
        image_size=config.global_image_size,
        scales=config.global_scales,
        cache_dir=config.cache_dir,
    )
    local_extractor: LocalExtractor
    if installed is not None:  # delf
        from retrieval.vision.extractors.delg import DelfLocal
        from retrieval.vision.model_registry import read_installed

        model = read_installed(config.cache_dir, installed[1], kind="delf")
        local_extractor = DelfLocal(model=model, max_features=config.max_keypoints)
    elif local_name.startswith("effnet-") and local_name.endswith("-local"):
        from retrieval.vision.extractors.effnet_local import EfficientNetLiteLocal

        local_extractor = EfficientNetLiteLocal(
            variant=local_name.split("-")[1], max_features=config.max_local_cells, cache_dir=config.cache_dir
        )
    elif local_name == "xfeat":
        from retrieval.vision.extractors.xfeat import XFeat

        local_extractor = XFeat(max_features=config.max_keypoints, cache_dir=config.cache_dir)
    else:
        from retrieval.vision.extractors.rootsift import RootSIFT

        local_extractor = RootSIFT(max_features=config.max_keypoints)
    return GlobalLocalExtractor(global_extractor, local_extractor, config.spec, query_scales=config.query_scales)
