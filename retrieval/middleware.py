"""Infrastructure faults become 503 answers instead of 500 pages.

With PostgreSQL or the broker away, a request fails with a driver error deep in a view;
this answers ``503`` through ``views.error_answer`` (JSON ``{"error": ...}`` under
``/api/``, a short page elsewhere) with ``Retry-After``, and the next request after the
server is back simply works (connections are re-opened per request;
``CONN_HEALTH_CHECKS`` drops dead ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from retrieval.errors import ServiceUnavailable

logger = logging.getLogger(__name__)


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError

    return (OperationalError, InterfaceError, BrokerError, RedisConnectionError)


class ServiceUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.errors = _unavailable_errors()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, ServiceUnavailable):
            message = exception.message
        elif isinstance(exception, self.errors):
            which = "task queue" if not isinstance(exception, (OperationalError, InterfaceError)) else "database"
            logger.warning("%s %s: the %s is unavailable: %s", request.method, request.path, which, exception)
            message = f"The {which} is unavailable right now; please try again in a minute."
        else:
            return None
        from retrieval.views import error_answer

        return error_answer(request, ServiceUnavailable(message))
