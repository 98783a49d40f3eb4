"""HTTP edges: validate, call one service, render. Errors map in ``error_response``."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_ratelimit.decorators import ratelimit

from retrieval import selectors, services
from retrieval.errors import InvalidInput, NotFound, RateLimited, RetrievalError
from retrieval.forms import SearchForm
from retrieval.models import CatalogImage, SearchQuery

logger = logging.getLogger(__name__)


def error_response(exc: RetrievalError) -> JsonResponse:
    """The one place where application errors become HTTP answers."""
    return JsonResponse({"error": exc.message}, status=exc.http_status)


def search_rate(group: str, request: HttpRequest) -> str:
    return settings.LANDMARKS_SEARCH_RATE


def login_rate(group: str, request: HttpRequest) -> str:
    return settings.LANDMARKS_LOGIN_RATE


# Searches from the API and the form share one budget per client IP.
search_rate_limit = ratelimit(group="search", key="ip", rate=search_rate, method="POST")


def rate_limited(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``RATELIMIT_VIEW``: the one place where django-ratelimit's ``Ratelimited`` becomes a 429."""
    match = request.resolver_match
    if match is not None and match.url_name == "admin-login":
        exc = RateLimited(f"Too many login attempts (limit {settings.LANDMARKS_LOGIN_RATE}); wait and try again.")
    else:
        exc = RateLimited(f"Too many searches (limit {settings.LANDMARKS_SEARCH_RATE}); wait and try again.")
    logger.warning("rate limited %s %s from %s", request.method, request.path, request.META.get("REMOTE_ADDR"))
    if request.path.startswith("/api/"):
        return error_response(exc)
    if match is not None and match.url_name == "search":
        return render(request, "retrieval/search.html", {"form": SearchForm(), "error": exc.message}, status=429)
    page = f"<!doctype html><title>Too many requests</title><h1>Too many requests</h1><p>{exc.message}</p>"
    return HttpResponse(page, status=exc.http_status)


def json_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except RetrievalError as exc:
            return error_response(exc)

    return wrapper


def _form_error(form: SearchForm) -> InvalidInput:
    field, errors = next(iter(form.errors.items()))
    prefix = "" if field == "__all__" else f"{field}: "
    return InvalidInput(prefix + " ".join(str(e) for e in errors))


def _create_search(request: HttpRequest) -> SearchQuery:
    form = SearchForm(request.POST, request.FILES)
    if not form.is_valid():
        raise _form_error(form)
    upload = form.cleaned_data["image"]
    if upload.size > settings.LANDMARKS_MAX_UPLOAD_BYTES:
        raise services.PayloadTooLarge(
            f"The file is {upload.size:,} bytes; the limit is {settings.LANDMARKS_MAX_UPLOAD_BYTES:,}."
        )
    return services.search_create(
        catalog=form.cleaned_data["catalog"],
        data=upload.read(),
        filename=upload.name or "query.jpg",
        top_k=form.cleaned_data.get("top_k") or 10,
        bbox=form.cleaned_data.get("bbox"),
    )


def search_payload(request: HttpRequest, query: SearchQuery) -> dict[str, Any]:
    results = [
        {
            **{k: v for k, v in result.items() if k != "matches"},
            "image_url": request.build_absolute_uri(reverse("catalog-image-file", args=[result["image_id"]])),
            "matches": result.get("matches", []),
        }
        for result in query.results
    ]
    landmark = (
        {"name": query.landmark_name, "confidence": query.landmark_confidence} if query.landmark_name else None
    )
    return {
        "id": query.pk,
        "status": query.status,
        "url": request.build_absolute_uri(reverse("api-search-detail", args=[query.pk])),
        "catalog": query.catalog.name,
        "model": str(query.model) if query.model_id else None,
        "query": {"width": query.width, "height": query.height, "bbox": query.bbox},
        "results": results,
        "landmark": landmark,
        "timings_ms": query.timings_ms,
        "error": query.error or None,
    }


def _search_response(request: HttpRequest, query: SearchQuery) -> JsonResponse:
    payload = search_payload(request, query)
    if query.status == SearchQuery.Status.FAILED:
        return JsonResponse(payload, status=422)
    if query.status == SearchQuery.Status.DONE:
        return JsonResponse(payload)
    return JsonResponse(payload, status=202, headers={"Location": payload["url"]})


@csrf_exempt
@require_POST
@search_rate_limit
@json_errors
def api_search(request: HttpRequest) -> JsonResponse:
    """POST multipart ``image`` (+ ``catalog``, ``top_k``, ``bbox``): 200 with results,
    202 with a URL to poll when the workers take longer than the wait limit."""
    timeout = _wait_seconds(request)  # validated before anything is stored
    query = _create_search(request)
    query = services.search_wait(query_id=query.pk, timeout=timeout)
    return _search_response(request, query)


def _wait_seconds(request: HttpRequest) -> float:
    raw = request.GET.get("wait") or request.POST.get("wait")
    limit = settings.LANDMARKS_SEARCH_WAIT_SECONDS
    if raw is None:
        return limit
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput("wait must be a number of seconds.") from None
    if not math.isfinite(seconds):
        raise InvalidInput("wait must be a finite number of seconds (no nan or inf).")
    return max(0.0, min(seconds, limit))


@require_GET
@json_errors
def api_search_detail(request: HttpRequest, query_id: int) -> JsonResponse:
    query = selectors.search_get(query_id=query_id)
    if query is None:
        raise NotFound(f"No search with id {query_id}.")
    return _search_response(request, query)


@require_http_methods(["GET", "POST"])
@search_rate_limit
def search_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            query = _create_search(request)
        except RetrievalError as exc:
            form = SearchForm(request.POST)
            return render(request, "retrieval/search.html", {"form": form, "error": exc.message}, status=exc.http_status)
        services.search_wait(query_id=query.pk, timeout=settings.LANDMARKS_SEARCH_WAIT_SECONDS)
        return redirect("search-detail", query_id=query.pk)
    return render(request, "retrieval/search.html", {"form": SearchForm()})


@require_GET
def search_detail_page(request: HttpRequest, query_id: int) -> HttpResponse:
    query = selectors.search_get(query_id=query_id)
    if query is None:
        raise Http404(f"No search with id {query_id}.")
    payload = search_payload(request, query)
    return render(request, "retrieval/results.html", {"query": query, "payload": payload})


@require_GET
def catalog_image_file(request: HttpRequest, image_id: int) -> FileResponse:
    image = CatalogImage.objects.filter(pk=image_id).first()
    if image is None:
        raise Http404(f"No image with id {image_id}.")
    return _file_response(image.file)


@require_GET
def search_image_file(request: HttpRequest, query_id: int) -> FileResponse:
    query = selectors.search_get(query_id=query_id)
    if query is None:
        raise Http404(f"No search with id {query_id}.")
    return _file_response(query.image)


def _file_response(field: Any) -> FileResponse:
    try:
        handle = field.open("rb")
    except FileNotFoundError:
        raise Http404("The stored file is missing.") from None
    response = FileResponse(handle)
    response["Cache-Control"] = "private, max-age=3600"
    return response


@ratelimit(group="admin-login-ip", key="ip", rate=login_rate, method="POST")
@ratelimit(group="admin-login-username", key="post:username", rate=login_rate, method="POST")
def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's login page, rate limited per client IP and per username."""
    return admin.site.login(request)
