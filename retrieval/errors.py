"""The application's exceptions; ``http_status`` maps each to one HTTP answer.

Views and the API turn any :class:`RetrievalError` into ``{"error": message}`` with its
status (``retrieval.api.errors`` for the API's views, ``retrieval.views.error_answer``
outside them); commands print the message and exit 1.
"""

from __future__ import annotations

from retrieval.vision import preprocessing


class RetrievalError(Exception):
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RetrievalError):
    http_status = 400


class InvalidImage(InvalidInput):
    """An upload that is not a usable image (see retrieval.vision.preprocessing)."""


class UnsupportedMediaType(InvalidImage):
    http_status = 415


class PayloadTooLarge(InvalidImage):
    http_status = 413


class NotFound(RetrievalError):
    http_status = 404


class Conflict(RetrievalError):
    """The thing to create exists already (a catalog name)."""

    http_status = 409


class DuplicateImage(Conflict):
    pass


class RateLimited(RetrievalError):
    """Too many requests from one client (django-ratelimit; see ``views.rate_limited``)."""

    http_status = 429


class ServiceUnavailable(RetrievalError):
    http_status = 503


def from_image_error(exc: preprocessing.ImageError) -> InvalidImage:
    """Map a decoding error to the application error with the right HTTP status."""
    if isinstance(exc, preprocessing.NotAnImageError):
        return UnsupportedMediaType(str(exc))
    if isinstance(exc, preprocessing.ImageTooLargeError):
        return PayloadTooLarge(str(exc))
    return InvalidImage(str(exc))
