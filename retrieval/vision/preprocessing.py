"""Decoding and validating uploaded images.

Every accepted image comes out as (H, W, 3) uint8 RGB, upright (EXIF orientation
applied), whatever it was stored as (grayscale, CMYK, palette, alpha, 16-bit). Anything
else raises a subclass of :class:`ImageError` whose message can be shown to a user.
:func:`read_header` applies the same checks that need no pixels (format, size, pixel
cap) for the web process; :func:`decode_image` decodes (Celery workers, commands).
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# HEIC/HEIF (phones' default) through libheif; AVIF is Pillow's own plugin. libheif
# applies the container's rotation and mirroring when it opens the file (the size is
# already upright) and resets the EXIF orientation to 1, so it is never applied twice.
pillow_heif.register_heif_opener()


class ImageError(ValueError):
    """An uploaded file cannot be used as an image; the message says why."""


class EmptyImageError(ImageError):
    pass


class NotAnImageError(ImageError):
    pass


class CorruptImageError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    pass


class ImageTooSmallError(ImageError):
    pass


# Pillow format names of the uploads we accept; the stored file's extension and the
# content type it is served with derive from this, never from the client's file name.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF", "AVIF"})
_SUPPORTED_NAMES = "JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF, AVIF"


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header says, without decoding the pixels; sizes are upright (EXIF)."""

    width: int
    height: int
    format: str  # Pillow's name: "JPEG", "PNG", "WEBP", ...


# EXIF orientations 5-8 turn the picture by 90 degrees: width and height swap.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


def read_header(data: bytes, *, max_pixels: int = 50_000_000, min_side: int = 32) -> ImageHeader:
    """Validate an upload from its header only: format, dimensions, pixel cap, minimum side.

    Cheap enough for the web process (a few KB read, no pixel buffer); the pixels may
    still be truncated or corrupt, which only :func:`decode_image` finds out.
    """
    image = _open(data, max_pixels=max_pixels)
    width, height = image.size
    # The base class reads EXIF from what the header parsing found; PNG's own getexif()
    # would decode the whole image to look for an eXIf chunk after the pixel data.
    try:
        orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation)
    except Exception:  # a broken EXIF block is ignored here, as exif_transpose does
        orientation = None
    # Pillow's TIFF plugin reports the upright size itself (it reads the orientation tag).
    if orientation in _TRANSPOSED_ORIENTATIONS and image.format != "TIFF":
        width, height = height, width
    _check_min_side(width, height, min_side)
    return ImageHeader(width=width, height=height, format=image.format or "")


def decode_image(data: bytes, *, max_pixels: int = 50_000_000, min_side: int = 32, draft_side: int = 0) -> np.ndarray:
    """Decode, validate and normalise an uploaded image.

    Args:
        data: the file's bytes.
        max_pixels: width * height above which the image is refused before decoding
            (decompression bombs).
        min_side: the smallest accepted width or height, in pixels.
        draft_side: when set, a JPEG is decoded at the smallest of 1/2 ... 1/8 scale that
            keeps both sides at least this long (Pillow's ``draft``: a fraction of a full
            decode, for thumbnails); other formats decode in full.

    Returns:
        (H, W, 3) uint8 RGB array, EXIF orientation applied.
    """
    image = _open(data, max_pixels=max_pixels)
    try:
        if draft_side:
            image.draft("RGB", (draft_side, draft_side))
        image.load()
        rgb = _to_rgb(_upright(image))
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"The image has more than {max_pixels:,} pixels.") from None
    # Pillow's decoders fail on bad data with many types (OSError, RuntimeError, struct.error...).
    except Exception as exc:
        raise CorruptImageError(f"The image data is truncated or corrupt: {exc}") from None
    height, width = rgb.shape[:2]
    _check_min_side(width, height, min_side)
    return rgb


def jpeg_rendition(data: bytes, *, max_pixels: int, max_side: int = 2048, quality: int = 85) -> bytes:
    """The image as a JPEG that any browser shows (for HEIC or TIFF uploads): decoded with
    :func:`decode_image`'s checks (``max_pixels``), upright, longest side at most
    ``max_side``. Raises an ImageError like :func:`decode_image`."""
    rgb, _ = resize_max_side(decode_image(data, max_pixels=max_pixels, min_side=1), max_side)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _open(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse images over ``max_pixels`` before any decoding."""
    if not data:
        raise EmptyImageError("The file is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImageError(f"The file is not an image in a supported format ({_SUPPORTED_NAMES}).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"The image has more than {max_pixels:,} pixels.") from None
    # Plugins fail on bad headers with many types too (OSError, RuntimeError, ...).
    except Exception as exc:
        raise CorruptImageError(f"The image header is corrupt: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise NotAnImageError(f"The file is not an image in a supported format ({_SUPPORTED_NAMES}).")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}."
        )
    return image


# How each EXIF orientation is undone (as ``ImageOps.exif_transpose`` does).
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    """The image with its EXIF orientation applied. ``exif_transpose`` also rewrites the
    EXIF block, which fails on a malformed tag some editors write (a number stored as
    text): then the orientation is applied alone."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - any failure to rewrite the EXIF block
        try:
            method = _UNDO_ORIENTATION.get(image.getexif().get(ExifTags.Base.Orientation))
        except Exception:  # noqa: BLE001 - an EXIF block that cannot be read at all
            return image
        return image.transpose(method) if method is not None else image


def _check_min_side(width: int, height: int, min_side: int) -> None:
    if min(width, height) < min_side:
        raise ImageTooSmallError(f"The image is {width}x{height}; both sides must be at least {min_side} pixels.")


_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB; transparency is composited on white."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        top = array.max()
        scale = 255.0 / top if top > 255 else 1.0
        gray = np.clip(array * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _PREMULTIPLIED:  # Pillow converts these only to their straight-alpha mode
        image = image.convert(_PREMULTIPLIED[image.mode])
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def resize_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so that the longer side is at most ``max_side`` (never enlarge).

    Args:
        image: (H, W, C) uint8.
    Returns:
        The resized (H', W', C) image and the factor s with resized = s * original coords.
    """
    import cv2

    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def resize_long_side(image: np.ndarray, long_side: float) -> np.ndarray:
    """Resize so that the longer side is ``round(long_side)``, enlarging too (extractors
    that must see the same scale whatever the upload's resolution).

    Args:
        image: (H, W, C) uint8.
    Returns:
        (H', W', C) uint8; ``image`` itself when the size is already right.
    """
    import cv2

    height, width = image.shape[:2]
    factor = long_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def crop_bbox(image: np.ndarray, bbox: tuple[float, float, float, float] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop to ``[x1, y1, x2, y2]`` (clipped to the image); returns the crop and its offset."""
    if bbox is None:
        return image, (0, 0)
    height, width = image.shape[:2]
    x1, y1, x2, y2 = bbox_window(width, height, bbox)
    return image[y1:y2, x1:x2], (x1, y1)


def bbox_window(width: int, height: int, bbox: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """``[x1, y1, x2, y2]`` rounded and clipped to a ``width`` x ``height`` image; raises
    an ImageError for a box that is not finite or leaves less than 8x8 pixels."""
    if not all(math.isfinite(v) for v in bbox):
        raise ImageError(f"The box {list(bbox)} has a coordinate that is not a finite number.")
    x1, y1, x2, y2 = (int(round(v)) for v in bbox)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 8 or y2 - y1 < 8:
        raise ImageError(f"The box {list(bbox)} does not overlap the {width}x{height} image.")
    return x1, y1, x2, y2
