"""The process-wide feature extractor: built lazily, once, under a lock.

Only Celery workers and commands that extract call :func:`get_extractor`; building it
imports TensorFlow. Web processes never do.
"""

from __future__ import annotations

import threading

from django.conf import settings

from retrieval.vision.extractors import ExtractorConfig, build_extractor, matching_config
from retrieval.vision.extractors.base import Extractor

_lock = threading.Lock()
_extractors: dict[str, Extractor] = {}


def extractor_config(spec: str | None = None) -> ExtractorConfig:
    return ExtractorConfig(
        spec=spec or settings.LANDMARKS_EXTRACTOR,
        cache_dir=settings.MODEL_DIR,
        global_image_size=settings.LANDMARKS_GLOBAL_IMAGE_SIZE,
        global_scales=tuple(settings.LANDMARKS_GLOBAL_SCALES),
        max_keypoints=settings.LANDMARKS_MAX_KEYPOINTS,
        max_local_cells=settings.LANDMARKS_MAX_LOCAL_CELLS,
        query_scales=tuple(settings.LANDMARKS_QUERY_SCALES),
        dense_fine_size=settings.LANDMARKS_DENSE_FINE_SIZE,
        dense_global_scales=tuple(settings.LANDMARKS_DENSE_GLOBAL_SCALES),
        dense_fine_cells=settings.LANDMARKS_DENSE_FINE_CELLS,
        dense_coarse_cells=settings.LANDMARKS_DENSE_COARSE_CELLS,
        dense_query_fine_cells=settings.LANDMARKS_DENSE_QUERY_FINE_CELLS,
        dense_query_coarse_cells=settings.LANDMARKS_DENSE_QUERY_COARSE_CELLS,
        local_codebook=settings.LANDMARKS_LOCAL_CODEBOOK,
    )


def get_extractor(spec: str | None = None) -> Extractor:
    """The extractor for ``spec`` (default: ``LANDMARKS_EXTRACTOR``), built once per process."""
    config = extractor_config(spec)
    with _lock:
        if config.spec not in _extractors:
            _extractors[config.spec] = build_extractor(config)
        return _extractors[config.spec]


def min_inliers(spec: str) -> int:
    """Inliers a verified result needs: ``LANDMARKS_MIN_INLIERS`` when set, else the value
    calibrated for the local feature of pipeline ``spec`` (cheap: builds nothing)."""
    return settings.LANDMARKS_MIN_INLIERS or matching_config(spec).min_inliers


def reset_extractor() -> None:
    """Forget the built extractors (tests that change the settings)."""
    with _lock:
        _extractors.clear()
