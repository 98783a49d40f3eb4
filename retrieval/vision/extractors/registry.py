"""The extractors this code can build, by name: one table, one row per model.

A pipeline spec is a ``pipeline`` row on its own (``effnet-lite2-dense``, the default, or
``delg:<name>``), or ``<global>+<local>`` (``effnet-lite2-gem+effnet-lite2-local``); a
``delf:<name>`` on its own pairs with ``DEFAULT_DELF_GLOBAL``. Rows marked ``installed``
name a family of models installed by ``manage.py fetch_model`` / ``train_model``, spelled
``<row name>:<installed name>`` and read from their ``model.json`` under the model
directory (``retrieval.vision.model_registry``).

Each fact about a model is stated here once: its kind, how its local features are verified
(``matching``, whose ``min_inliers`` is the "same place" threshold), and how to build it.
Answering questions about a spec (``check_spec``, ``matching_config``) loads nothing; a
row's ``build`` imports its model's module, and TensorFlow, only when called.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeGuard

from retrieval.vision.extractors.base import Extractor, GlobalExtractor, LocalExtractor
from retrieval.vision.extractors.pipeline import GlobalLocalExtractor
from retrieval.vision.verification import VerificationConfig


class UnknownModelError(ValueError):
    """The requested extractor is not one this code can build."""


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    """Everything that shapes extraction. No defaults here: the server's come from its
    settings (``retrieval.extraction.extractor_config``, defaults in searchsite/settings.py);
    tests and benches spell theirs out."""

    spec: str
    cache_dir: Path
    global_image_size: int
    global_scales: tuple[float, ...]
    max_keypoints: int
    # Dense CNN cells kept per image (effnet-*-local): a 1024 px photo has ~3000.
    max_local_cells: int
    # A query's local features are also extracted at these factors of the local
    # extractor's working size (effnet-*-local: 1024 px), and each catalog candidate is
    # verified against the size that matches it best (docs/quality.md).
    query_scales: tuple[float, ...]
    # effnet-*-dense: the fine level's image size, the global descriptor's scales (one at
    # ``dense_fine_size`` shares that pass) and cells kept per level.
    dense_fine_size: int
    dense_global_scales: tuple[float, ...]
    dense_fine_cells: int
    dense_coarse_cells: int
    dense_query_fine_cells: int
    dense_query_coarse_cells: int
    # A product quantiser (``manage.py train_codebook``) for the stored local descriptors;
    # None stores them as the extractor's ``descriptor_dtype``.
    local_codebook: Path | None = None


# "global": a GlobalExtractor, the left of "<global>+<local>"; "local": a LocalExtractor,
# the right; "pipeline": an Extractor making both from one network, named on its own.
Kind = Literal["global", "local", "pipeline"]
# (config, installed model name or "") -> the extractor; imports its module when called.
Builder = Callable[[ExtractorConfig, str], Any]


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
    """One model this code can build."""

    name: str
    kind: Kind
    build: Builder
    # How the local features of a "local" or "pipeline" model are verified.
    matching: VerificationConfig = VerificationConfig()
    # A family of installed models, spelled "<name>:<installed name>".
    installed: bool = False

    @property
    def min_inliers(self) -> int:
        """Inliers a verified result needs with this model's local features."""
        return self.matching.min_inliers


def _effnet_gem(variant: str, config: ExtractorConfig, _name: str) -> GlobalExtractor:
    from retrieval.vision.extractors.efficientnet_lite import EfficientNetLiteGeM

    return EfficientNetLiteGeM(
        variant=variant, image_size=config.global_image_size, scales=config.global_scales, cache_dir=config.cache_dir
    )


def _effnet_local(variant: str, config: ExtractorConfig, _name: str) -> LocalExtractor:
    from retrieval.vision.extractors.effnet_local import EfficientNetLiteLocal

    return EfficientNetLiteLocal(variant=variant, max_features=config.max_local_cells, cache_dir=config.cache_dir)


def _effnet_dense(variant: str, config: ExtractorConfig, _name: str) -> Extractor:
    from retrieval.vision.extractors.effnet_dense import DenseEfficientNetLite

    return DenseEfficientNetLite(
        spec=config.spec,
        variant=variant,
        global_size=config.global_image_size,
        global_scales=config.dense_global_scales,
        fine_size=config.dense_fine_size,
        fine_features=config.dense_fine_cells,
        coarse_features=config.dense_coarse_cells,
        query_fine_features=config.dense_query_fine_cells,
        query_coarse_features=config.dense_query_coarse_cells,
        cache_dir=config.cache_dir,
    )


def _rootsift(config: ExtractorConfig, _name: str) -> LocalExtractor:
    from retrieval.vision.extractors.rootsift import RootSIFT

    return RootSIFT(max_features=config.max_keypoints)


def _xfeat(config: ExtractorConfig, _name: str) -> LocalExtractor:
    from retrieval.vision.extractors.xfeat import XFeat

    return XFeat(max_features=config.max_keypoints, cache_dir=config.cache_dir)


def _delg(config: ExtractorConfig, name: str) -> Extractor:
    from retrieval.vision.extractors.delg import DelgExtractor
    from retrieval.vision.model_registry import read_installed

    model = read_installed(config.cache_dir, name, kind="delg")
    return DelgExtractor(spec=config.spec, model=model, max_keypoints=config.max_keypoints)


def _delf(config: ExtractorConfig, name: str) -> LocalExtractor:
    from retrieval.vision.extractors.delg import DelfLocal
    from retrieval.vision.model_registry import read_installed

    model = read_installed(config.cache_dir, name, kind="delf")
    return DelfLocal(model=model, max_features=config.max_keypoints)


# Dense stride-16 CNN cells (effnet_local.py): a loose ratio test (their neighbours are
# similar by construction), a fundamental matrix (a 16 px grid is too coarse for a tight
# homography, and the scenes are 3D) within a quarter of a cell (0.004 of the image,
# 4 px at 1024 px), and a "same place" threshold above the most inliers any mismatched
# pair reached (docs/quality.md).
_EFFNET_LOCAL_MATCHING = VerificationConfig(
    ratio=0.95, mutual=True, geometry="fundamental", relative_threshold=0.004, min_inliers=40
)
# The two levels of dense cells (effnet_dense.py): matched level by level on int8
# products, one RANSAC over all levels with MSAC and 250 iterations (docs/quality.md:
# the same WxBS and paris5 figures as float32 products and 500 iterations, in half the time).
_DENSE_MATCHING = dataclasses.replace(
    _EFFNET_LOCAL_MATCHING, per_level=True, score="msac", max_iterations=250, precision="int8"
)
# XFeat's reference matcher: mutual nearest neighbours with a cosine similarity > 0.82.
_XFEAT_MATCHING = VerificationConfig(ratio=1.0, mutual=True, min_similarity=0.82)

# Every model, in the order error messages list them. Local features not given their own
# ``matching`` are verified with the default (Lowe's ratio test, a homography).
MODELS: tuple[ExtractorSpec, ...] = (
    ExtractorSpec("effnet-lite0-dense", "pipeline", functools.partial(_effnet_dense, "lite0"), _DENSE_MATCHING),
    ExtractorSpec("effnet-lite2-dense", "pipeline", functools.partial(_effnet_dense, "lite2"), _DENSE_MATCHING),
    ExtractorSpec("effnet-lite0-gem", "global", functools.partial(_effnet_gem, "lite0")),
    ExtractorSpec("effnet-lite2-gem", "global", functools.partial(_effnet_gem, "lite2")),
    ExtractorSpec("rootsift", "local", _rootsift),
    ExtractorSpec("xfeat", "local", _xfeat, _XFEAT_MATCHING),
    ExtractorSpec("effnet-lite0-local", "local", functools.partial(_effnet_local, "lite0"), _EFFNET_LOCAL_MATCHING),
    ExtractorSpec("effnet-lite2-local", "local", functools.partial(_effnet_local, "lite2"), _EFFNET_LOCAL_MATCHING),
    ExtractorSpec("delg", "pipeline", _delg, installed=True),
    ExtractorSpec("delf", "local", _delf, installed=True),
)
# The global half of a spec that names only ``delf:<name>``.
DEFAULT_DELF_GLOBAL = "effnet-lite2-gem"


@dataclasses.dataclass(frozen=True)
class _Part:
    """One side of a spec: a table row and, for installed rows, the installed name."""

    model: ExtractorSpec
    installed_name: str = ""

    def build(self, config: ExtractorConfig) -> Any:
        return self.model.build(config, self.installed_name)


def _find_model(name: str) -> _Part | None:
    """The row named ``name`` (``delg:<x>`` finds the installed row ``delg``), or None."""
    for model in MODELS:
        if model.installed:
            if name.startswith(f"{model.name}:"):
                return _Part(model, name.removeprefix(f"{model.name}:"))
        elif name == model.name:
            return _Part(model)
    return None


def _names(kind: Kind) -> list[str]:
    return [model.name for model in MODELS if model.kind == kind and not model.installed]


def _installed_names() -> str:
    return " / ".join(f"{model.name}:<name>" for model in MODELS if model.installed)


def _is(part: _Part | None, kind: Kind) -> TypeGuard[_Part]:
    return part is not None and part.model.kind == kind


def _parse_spec(spec: str) -> tuple[str, str]:
    """(global name or "", local or pipeline name). An installed pipeline takes the whole
    spec; an installed local feature on its own pairs with DEFAULT_DELF_GLOBAL."""
    whole = _find_model(spec)
    if _is(whole, "pipeline") and whole.model.installed:
        return "", spec
    global_name, sep, local_name = spec.partition("+")
    if not sep:
        return (DEFAULT_DELF_GLOBAL, spec) if _is(whole, "local") and whole.model.installed else ("", spec)
    local = _find_model(local_name)
    if _is(local, "local") and local.model.installed and global_name not in _names("global"):
        raise UnknownModelError(
            f"unknown extractor {spec!r}; the global part must be one of {', '.join(_names('global'))}"
        )
    return global_name, local_name


def _resolve(spec: str) -> tuple[_Part | None, _Part]:
    """(global part or None, local part or pipeline) of a spec; UnknownModelError if
    it names anything else."""
    global_name, local_name = _parse_spec(spec)
    global_part, local_part = _find_model(global_name), _find_model(local_name)
    if not global_name and _is(local_part, "pipeline") and (not local_part.model.installed or local_name == spec):
        return None, local_part
    if _is(global_part, "global") and _is(local_part, "local"):
        return global_part, local_part
    raise UnknownModelError(
        f"unknown extractor {spec!r}; choose {' or '.join(_names('pipeline'))}, or <global>+<local> with global in "
        f"{', '.join(_names('global'))} and local in {', '.join(_names('local'))}, "
        f"or {_installed_names()} for a model installed with `manage.py fetch_model`"
    )


def check_spec(spec: str, *, cache_dir: Path | None = None) -> None:
    """Raise UnknownModelError unless ``spec`` names a pipeline this code can build
    (cheap: loads nothing; for installed models reads the model's ``model.json`` under
    ``cache_dir``, without which they are refused)."""
    _, local = _resolve(spec)
    if not local.model.installed:
        return
    if cache_dir is None:
        raise UnknownModelError(f"unknown extractor {spec!r}: installed models need the model directory")
    from retrieval.vision.model_registry import ModelNotInstalled, read_installed

    try:
        read_installed(cache_dir, local.installed_name, kind=local.model.name)
    except (ModelNotInstalled, ValueError) as exc:
        raise UnknownModelError(f"unknown extractor {spec!r}: {exc}") from None


def matching_config(spec: str) -> VerificationConfig:
    """The settings to verify local features of pipeline ``spec`` with (cheap: loads
    nothing, imports no TensorFlow); the default for a local part the table does not know."""
    _, local_name = _parse_spec(spec)
    local = _find_model(local_name)
    return local.model.matching if local is not None else VerificationConfig()


def build_extractor(config: ExtractorConfig) -> Extractor:
    """Build the pipeline named by ``config.spec`` (loads weights; may take seconds)."""
    check_spec(config.spec, cache_dir=config.cache_dir)
    global_part, local_part = _resolve(config.spec)
    if global_part is None:
        extractor = local_part.build(config)
    else:
        extractor = GlobalLocalExtractor(
            global_part.build(config), local_part.build(config), config.spec, query_scales=config.query_scales
        )
    if config.local_codebook is None:
        return extractor
    return _with_codebook(extractor, config)


def _with_codebook(extractor: Extractor, config: ExtractorConfig) -> Extractor:
    """``extractor`` storing its local descriptors with the codebook file of ``config``
    (a copy is kept under the model cache so that its rows stay readable later)."""
    from retrieval.vision.compact import Codebook, LocalCodec
    from retrieval.vision.extractors.codebook import CodebookExtractor

    path = config.local_codebook
    try:
        codebook = Codebook.load(path)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UnknownModelError(f"cannot read the local-feature codebook {path}: {exc}") from None
    codec = LocalCodec(codebook=codebook, library=config.cache_dir / "codebooks")
    try:
        wrapped = CodebookExtractor(extractor, codec)
    except ValueError as exc:
        raise UnknownModelError(str(exc)) from None
    codec.remember()
    return wrapped
