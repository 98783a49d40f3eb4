"""Site-wide middleware that must run before any view reads the request."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

# Admin pages and the catalog API's upload take bulk uploads of many photos
# (LANDMARKS_MAX_REQUEST_BYTES).
ADMIN_PREFIX = "/admin/"
BULK_UPLOAD_PATH = re.compile(r"^/api/catalogs/[^/]+/images$")


def request_body_limit(path: str) -> int:
    """The largest body accepted for ``path``, in bytes."""
    if path.startswith(ADMIN_PREFIX) or BULK_UPLOAD_PATH.match(path):
        return settings.LANDMARKS_MAX_REQUEST_BYTES
    return settings.LANDMARKS_MAX_UPLOAD_BYTES + settings.LANDMARKS_FORM_OVERHEAD_BYTES


class RequestBodyLimitMiddleware:
    """Answer 413 from the ``Content-Length`` header alone, before anything reads the body.

    Django's own limits (``DATA_UPLOAD_MAX_MEMORY_SIZE``, the upload size check in the
    views) act only after the body has been received. A body without ``Content-Length``
    (chunked) is not read by Django at all. Keep this first in ``MIDDLEWARE``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # Django reads a malformed length as an empty body too
        limit = request_body_limit(request.path)
        if length <= limit:
            return self.get_response(request)
        from retrieval.errors import PayloadTooLarge
        from retrieval.views import error_answer

        logger.warning("refused a %d-byte request to %s (limit %d)", length, request.path, limit)
        return error_answer(request, PayloadTooLarge(f"The request is {length:,} bytes; the limit is {limit:,}."))


def client_ip(request: HttpRequest) -> str:
    """The client's address for the rate limits (``RATELIMIT_IP_META_KEY``) behind a proxy:
    the last entry of ``LANDMARKS_CLIENT_IP_HEADER``, the one the trusted proxy added."""
    forwarded = request.META.get(settings.LANDMARKS_CLIENT_IP_HEADER or "", "")
    entries = [entry.strip() for entry in forwarded.split(",") if entry.strip()]
    return entries[-1] if entries else request.META.get("REMOTE_ADDR", "")
