"""Shared helper: a complete extractor configuration for tests."""

from __future__ import annotations

from pathlib import Path

from retrieval.vision.extractors import ExtractorConfig


def extractor_config(spec: str, cache_dir: Path, **overrides: object) -> ExtractorConfig:
    """The server's default values (searchsite/settings.py), spelled out, with ``overrides``."""
    values: dict[str, object] = {
        "global_image_size": 512,
        "global_scales": (0.7071, 1.0, 1.4142),
        "max_keypoints": 1000,
        "max_local_cells": 2000,
        "query_scales": (0.5, 1.0, 2.0),
        "dense_fine_size": 1024,
        "dense_global_scales": (0.7071, 1.0, 2.0),
        "dense_fine_cells": 1000,
        "dense_coarse_cells": 500,
        "dense_query_fine_cells": 1000,
        "dense_query_coarse_cells": 500,
    }
    return ExtractorConfig(spec=spec, cache_dir=cache_dir, **{**values, **overrides})  # type: ignore[arg-type]
