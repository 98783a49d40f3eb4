"""The API's one exception handler (``REST_FRAMEWORK["EXCEPTION_HANDLER"]``).

Every error a view raises, ours (:class:`RetrievalError`) or DRF's and Django's
(validation, authentication, permissions, 404, 405, parsing, media type, throttling,
oversized bodies), becomes ``{"error": "message"}`` with its status. Errors raised
outside DRF's views answer the same shape through ``retrieval.views.error_answer``
(body limit, rate limit, 503 middleware) and ``not_found`` below (unknown ``/api/`` URLs).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from retrieval.errors import NotFound, PayloadTooLarge, RetrievalError

logger = logging.getLogger(__name__)


def error_message(detail: Any) -> str:
    """One line from DRF's error detail: ``"field: message"`` for the first field that failed."""
    if isinstance(detail, dict):
        field, errors = next(iter(detail.items()), ("", ""))
        prefix = "" if field in ("non_field_errors", "detail", "") else f"{field}: "
        return prefix + error_message(errors)
    if isinstance(detail, (list, tuple)):
        return " ".join(error_message(item) for item in detail)
    return str(detail)


def _as_retrieval_error(exc: Exception) -> RetrievalError | exceptions.APIException | None:
    if isinstance(exc, (RetrievalError, exceptions.APIException)):
        return exc
    if isinstance(exc, Http404):
        return NotFound(str(exc) or "Not found.")
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request's form fields are larger than the limit.")
    if isinstance(exc, (TooManyFilesSent, TooManyFieldsSent)):
        return PayloadTooLarge(f"{exc} (too many files or fields in one request).")
    if isinstance(exc, PermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """``{"error": message}`` with the error's status; None (Django's 500, or the 503
    middleware for database and broker faults) for anything else."""
    if isinstance(exc, Ratelimited):
        return None  # re-raised to django-ratelimit's middleware: RATELIMIT_VIEW answers the 429
    error = _as_retrieval_error(exc)
    if error is None:
        return None
    headers: dict[str, str] = {}
    if isinstance(error, RetrievalError):
        status, message = error.http_status, error.message
    else:
        status, message = error.status_code, error_message(error.detail)
        if getattr(error, "auth_header", None):
            headers["WWW-Authenticate"] = error.auth_header  # type: ignore[attr-defined]
        if getattr(error, "wait", None):
            headers["Retry-After"] = str(int(error.wait))  # type: ignore[attr-defined]
    if status == 503:
        headers["Retry-After"] = "30"
    set_rollback()
    return Response({"error": message}, status=status, headers=headers)


@csrf_exempt  # a 404 whatever the method, never the CSRF check's HTML 403
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any ``/api/`` URL that matches no endpoint: the JSON 404, not the site's page."""
    return JsonResponse({"error": f"No API endpoint at {request.path}."}, status=404)
