"""Feature extractors, one module per model, built by name from the table in
``registry`` (``MODELS``: kind, matching settings and min inliers of every model).

A pipeline spec is ``effnet-lite{0,2}-dense`` (one network for the global descriptor and
two levels of dense cells, the default), ``<global>+<local>``, e.g.
``effnet-lite2-gem+effnet-lite2-local``, or an
official model installed by ``manage.py fetch_model``: ``delg:<name>`` (its own global and
local features) or ``delf:<name>`` (DELF local features; the global descriptor is
``effnet-lite2-gem``, or another with ``<global>+delf:<name>``). Modules that need
TensorFlow are imported only when their model is built. This package's public names are
the registry's and the pipeline's, re-exported here.
"""

from __future__ import annotations

from retrieval.vision.extractors.pipeline import GlobalLocalExtractor
from retrieval.vision.extractors.registry import (
    DEFAULT_DELF_GLOBAL,
    MODELS,
    ExtractorConfig,
    ExtractorSpec,
    UnknownModelError,
    build_extractor,
    check_spec,
    matching_config,
)

__all__ = [
    "DEFAULT_DELF_GLOBAL",
    "MODELS",
    "ExtractorConfig",
    "ExtractorSpec",
    "GlobalLocalExtractor",
    "UnknownModelError",
    "build_extractor",
    "check_spec",
    "matching_config",
]
