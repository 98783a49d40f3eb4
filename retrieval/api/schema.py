"""The OpenAPI schema's conventions: every operation documents its error answers."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from retrieval.api.serializers import ErrorSerializer

ERROR_DESCRIPTIONS = {
    400: "Invalid input.",
    401: "No credentials, or an invalid token.",
    403: "Not allowed: writes need a staff user.",
    404: "No such object.",
    409: "It exists already.",
    413: "The request, a file or an image is over the limits.",
    415: "Not an image, or a body type the endpoint does not read.",
    422: "The request was understood but could not be carried out.",
    429: "Too many requests from this client; wait and try again.",
    503: "The database or the task queue is unavailable; try again in a minute.",
}
# What any operation may answer: bad parameters, a bad token, a missing object, a fault.
COMMON_ERRORS = (400, 401, 403, 404, 503)
# And what any request with a body may: oversized bodies and unreadable ones.
BODY_ERRORS = (413, 415)


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """``{code: the error shape}`` for ``@extend_schema(responses=...)``."""
    return {code: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code]) for code in codes}


class ApiSchema(AutoSchema):
    """drf-spectacular's schema, plus the ``{"error": ...}`` answers every view may give
    (``retrieval.api.errors``), where an operation does not document them itself."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:  # type: ignore[override]
        responses = super()._get_response_bodies(direction)  # type: ignore[arg-type]
        codes = COMMON_ERRORS + (BODY_ERRORS if self.method in ("POST", "PUT", "PATCH") else ())
        for code, response in error_responses(*codes).items():
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(response, str(code), direction=direction)  # type: ignore[arg-type]
        return dict(sorted(responses.items()))

    def get_auth(self) -> list[dict[str, Any]]:
        """Anonymous reads where the view's permission allows them (``anonymous_reads``)."""
        auths = super().get_auth()
        anonymous = any(getattr(p, "anonymous_reads", False) for p in self.view.get_permissions())
        if anonymous and self.method in ("GET", "HEAD", "OPTIONS") and {} not in auths:
            auths.append({})
        return auths
