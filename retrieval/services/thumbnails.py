"""Thumbnails of catalog photos: made once (when indexed, or on first request for photos
indexed earlier), stored under a name derived from the row, served instead of originals."""

from __future__ import annotations

import io
import logging

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from retrieval.errors import InvalidImage
from retrieval.models import CatalogImage, thumbnail_path
from retrieval.vision import preprocessing

logger = logging.getLogger(__name__)

# Longest side in pixels: sharp in a results panel (490 px wide) and a catalog grid on a
# phone, yet a few tens of KB.
THUMBNAIL_MAX_SIDE = 480
THUMBNAIL_QUALITY = 82


def thumbnail_name(*, image: CatalogImage) -> str:
    """The storage name of the image's thumbnail: a function of the row alone, so that
    whoever deletes the image can delete it without reading the ``thumbnail`` field."""
    return thumbnail_path(image, "")


def thumbnail_store(*, image: CatalogImage, rgb: np.ndarray) -> str:
    """Make the thumbnail from already decoded pixels ((H, W, 3) uint8 RGB, upright) and
    record it on the row (the index worker calls this). Returns the storage name."""
    pil = Image.fromarray(rgb)
    pil.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS)
    return _save(image=image, pil=pil)


def thumbnail_ensure(*, image: CatalogImage) -> str:
    """The image's thumbnail name, made from the stored photo now if it has none yet
    (photos indexed before thumbnails existed). Raises InvalidImage when the stored file
    is missing or cannot be decoded."""
    name = image.thumbnail.name
    if name and default_storage.exists(name):
        return name
    if not image.file.name:
        raise InvalidImage("The stored photo is missing.")
    try:
        # Through the storage: the field's cached file object cannot be reopened.
        with image.file.storage.open(image.file.name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InvalidImage("The stored photo is missing.") from None
    try:
        # The upload checks (format, pixel cap), decoded at about thumbnail size.
        rgb = preprocessing.decode_image(
            data, max_pixels=settings.LANDMARKS_MAX_IMAGE_PIXELS, min_side=1, draft_side=THUMBNAIL_MAX_SIDE
        )
    except preprocessing.ImageError as exc:
        raise InvalidImage(f"The stored photo cannot be decoded: {exc}") from None
    return thumbnail_store(image=image, rgb=rgb)


def _save(*, image: CatalogImage, pil: Image.Image) -> str:
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    name = thumbnail_name(image=image)
    # Overwrite rather than let the storage pick another name: the name must stay the
    # one derived from the row (a leftover or a concurrent request made the same file).
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(buffer.getvalue()))
    if saved != name:  # another request saved it between our delete and save
        default_storage.delete(saved)
    CatalogImage.objects.filter(pk=image.pk).update(thumbnail=name)
    image.thumbnail.name = name
    logger.debug("thumbnail of image %s: %s (%d bytes)", image.pk, name, buffer.tell())
    return name
