"""The process-wide feature extractor: built lazily, once, under a lock.

Only Celery workers and commands that extract call :func:`get_extractor`; building it
imports TensorFlow. Web processes never do.
"""

from __future__ import annotations

import threading

from django.conf import settings

from retrieval.vision.extractors import ExtractorConfig, GlobalLocalExtractor, build_extractor

_lock = threading.Lock()
_extractor: GlobalLocalExtractor | None = None


def extractor_config() -> ExtractorConfig:
    return ExtractorConfig(
        spec=settings.LANDMARKS_EXTRACTOR,
        cache_dir=settings.MODEL_DIR,
        global_image_size=settings.LANDMARKS_GLOBAL_IMAGE_SIZE,
        global_scales=tuple(settings.LANDMARKS_GLOBAL_SCALES),
        max_keypoints=settings.LANDMARKS_MAX_KEYPOINTS,
    )


def get_extractor() -> GlobalLocalExtractor:
    global _extractor
    with _lock:
        if _extractor is None:
            _extractor = build_extractor(extractor_config())
        return _extractor


def reset_extractor() -> None:
    """Forget the built extractor (tests that change the settings)."""
    global _extractor
    with _lock:
        _extractor = None
