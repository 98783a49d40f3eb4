"""HTTP edges: validate, call one service, render. Errors map in ``error_response``."""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_http_methods
from django_ratelimit.decorators import ratelimit

from retrieval import selectors, services
from retrieval.api.serializers import search_payload
from retrieval.errors import InvalidInput, PayloadTooLarge, RateLimited, RetrievalError
from retrieval.forms import SearchForm
from retrieval.models import CatalogImage, SearchQuery, image_content_type, needs_rendition

logger = logging.getLogger(__name__)


# Short titles of the plain error pages (``error_answer``) by status.
_PAGE_TITLES = {413: "Request too large", 429: "Too many requests", 503: "Temporarily unavailable"}


def error_response(exc: RetrievalError) -> JsonResponse:
    """The one place where application errors become HTTP answers."""
    return _with_retry_after(JsonResponse({"error": exc.message}, status=exc.http_status))


def error_answer(request: HttpRequest, exc: RetrievalError) -> HttpResponse:
    """The same error for code outside the views (middleware, the rate-limit view):
    JSON under ``/api/``, elsewhere a plain page that needs no template (and so no
    database, which may be the thing that is away)."""
    if request.path.startswith("/api/"):
        return error_response(exc)
    title = _PAGE_TITLES.get(exc.http_status, "Error")
    page = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{escape(exc.message)}</p>"
    return _with_retry_after(HttpResponse(page, status=exc.http_status))


def _with_retry_after(response: HttpResponse) -> HttpResponse:
    if response.status_code == 503:
        response["Retry-After"] = "30"
    return response


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
    if match is not None and match.url_name == "search":
        context = {"form": SearchForm(user=request.user), "error": exc.message}
        return render(request, "retrieval/search.html", context, status=429)
    return error_answer(request, exc)


def _form_error(form: SearchForm) -> InvalidInput:
    field, errors = next(iter(form.errors.items()))
    prefix = "" if field == "__all__" else f"{field}: "
    return InvalidInput(prefix + " ".join(str(e) for e in errors))


def create_search(request: HttpRequest) -> SearchQuery:
    """Store the search a form POST (the page's or the API's) describes, for its user."""
    form = SearchForm(request.POST, request.FILES, user=request.user)
    if not form.is_valid():
        raise _form_error(form)
    upload = form.cleaned_data["image"]
    if upload.size > settings.LANDMARKS_MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(
            f"The file is {upload.size:,} bytes; the limit is {settings.LANDMARKS_MAX_UPLOAD_BYTES:,}."
        )
    return services.search_create(
        catalog=form.cleaned_data["catalog"],
        data=upload.read(),
        filename=upload.name or "query.jpg",
        top_k=form.cleaned_data.get("top_k") or 10,
        bbox=form.cleaned_data.get("bbox"),
    )


_waiters = threading.BoundedSemaphore(max(1, settings.LANDMARKS_SEARCH_WAITERS))


def wait_for_search(query: SearchQuery, timeout: float) -> SearchQuery:
    """Wait for the result if a waiting slot of this process is free, else return at once.

    Waiting holds a web thread; with at most LANDMARKS_SEARCH_WAITERS of them per process
    the other threads stay free for pages and polls, however many clients search.
    """
    if settings.LANDMARKS_SEARCH_WAITERS == 0 or timeout <= 0 or not _waiters.acquire(blocking=False):
        return query
    try:
        return services.search_wait(query_id=query.pk, timeout=timeout)
    finally:
        _waiters.release()


@require_http_methods(["GET", "POST"])
@search_rate_limit
def search_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            query = create_search(request)
        except RetrievalError as exc:
            form = SearchForm(request.POST, user=request.user)
            context = {"form": form, "error": exc.message, **_search_page_context(request)}
            return render(request, "retrieval/search.html", context, status=exc.http_status)
        wait_for_search(query, settings.LANDMARKS_SEARCH_WAIT_SECONDS)
        return redirect("search-detail", public_id=query.public_id)
    # ?catalog=NAME preselects it (the "try another catalog" links of a results page).
    form = SearchForm(user=request.user, initial={"catalog": request.GET.get("catalog", "")[:100]})
    return render(request, "retrieval/search.html", {"form": form, **_search_page_context(request)})


def _search_page_context(request: HttpRequest) -> dict[str, Any]:
    catalogs = selectors.catalogs_searchable(user=request.user)
    return {"has_catalogs": catalogs.exists(), "max_upload_bytes": settings.LANDMARKS_MAX_UPLOAD_BYTES}


@require_GET
def search_detail_page(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    query = selectors.search_get_public(public_id=public_id)
    if query is None:
        raise Http404(f"No search with id {public_id}.")
    payload = search_payload(request, query)
    others = selectors.catalogs_searchable(user=request.user).exclude(pk=query.catalog_id)[:5]
    context = {
        "query": query,
        "payload": payload,
        "other_catalogs": others,
        # What the "no match" explanation quotes.
        "verified_count": sum(1 for r in query.results if r.get("verified")),
        "best_inliers": max((r.get("inliers") or 0 for r in query.results), default=0),
    }
    return render(request, "retrieval/results.html", context)


# --- Catalog, image and jobs pages ---------------------------------------------------
# Who sees what: the catalog and image pages show the catalogs the user may search
# (public ones, all of them once signed in; others are a 404 like a missing one); the
# jobs page is for staff (others go to the admin login). Photos and thumbnails are
# served by id like the original file view, since any search's results page shows them.


@require_GET
def catalog_list_page(request: HttpRequest) -> HttpResponse:
    catalogs = selectors.catalogs_with_counts(catalogs=selectors.catalogs_searchable(user=request.user))
    return render(request, "retrieval/catalog_list.html", {"catalogs": catalogs})


@require_GET
def catalog_detail_page(request: HttpRequest, name: str) -> HttpResponse:
    catalog = selectors.catalog_searchable_get(user=request.user, name=name)
    if catalog is None:
        raise Http404(f"No catalog named {name}.")
    name_filter = request.GET.get("q", "").replace("\x00", "").strip()[:200]  # PostgreSQL refuses NUL
    landmarks = selectors.catalog_landmarks_page(
        catalog=catalog, page=request.GET.get("page"), name_contains=name_filter
    )
    counts = selectors.catalog_status_counts(catalog=catalog)
    context = {
        "catalog": catalog,
        "landmarks": landmarks,
        "counts": counts,
        "total": sum(counts.values()),
        "q": name_filter,
    }
    return render(request, "retrieval/catalog_detail.html", context)


@require_GET
def catalog_image_page(request: HttpRequest, image_id: int) -> HttpResponse:
    image = selectors.catalog_image_get(user=request.user, image_id=image_id)
    if image is None:
        raise Http404(f"No image with id {image_id}.")
    return render(request, "retrieval/image_detail.html", {"image": image})


@require_GET
def catalog_image_thumbnail(request: HttpRequest, image_id: int) -> FileResponse:
    """The photo's thumbnail (a JPEG, longest side ``THUMBNAIL_MAX_SIDE``), made now and
    kept if the photo was indexed before thumbnails existed or has not been indexed yet."""
    image = selectors.catalog_image_for_file(image_id=image_id)
    if image is None:
        raise Http404(f"No image with id {image_id}.")
    try:
        services.thumbnail_ensure(image=image)
    except RetrievalError as exc:
        raise Http404(exc.message) from None
    response = _file_response(image.thumbnail)
    response["Cache-Control"] = "private, max-age=86400"
    return response


@require_GET
@staff_member_required
def jobs_page(request: HttpRequest) -> HttpResponse:
    return render(request, "retrieval/jobs.html", {"rows": selectors.jobs_recent()})


@require_GET
def jobs_live(request: HttpRequest) -> HttpResponse:
    """The jobs list alone (an HTML fragment), polled by ``jobs.js`` every two seconds."""
    if not (request.user.is_active and request.user.is_staff):
        return HttpResponse("Staff only.", status=403, content_type="text/plain")
    response = render(request, "retrieval/_jobs_list.html", {"rows": selectors.jobs_recent()})
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def catalog_image_file(request: HttpRequest, image_id: int) -> HttpResponse:
    image = CatalogImage.objects.filter(pk=image_id).first()
    if image is None:
        raise Http404(f"No image with id {image_id}.")
    return _file_response(image.file)


@require_GET
def search_image_file(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    query = selectors.search_get_public(public_id=public_id)
    if query is None:
        raise Http404(f"No search with id {public_id}.")
    return _file_response(query.image)


def _file_response(field: FieldFile) -> HttpResponse:
    """A stored photo, typed by its extension (which the services derive from the decoded
    format), so that no upload is ever rendered as a page."""
    name = re.sub(r"[^A-Za-z0-9._-]", "", os.path.basename(field.name or "")) or "image"
    if needs_rendition(name):
        return _rendition_response(field, name)
    content_type = image_content_type(name)
    try:
        handle = field.open("rb")
    except FileNotFoundError:
        raise Http404("The stored file is missing.") from None
    if content_type is None:
        # Stored before names came from the format: offer it as a download, never inline.
        response = FileResponse(handle, as_attachment=True, filename=name, content_type="application/octet-stream")
    else:
        response = FileResponse(handle, filename=name, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _rendition_response(field: FieldFile, name: str) -> HttpResponse:
    """A JPEG made on request from a photo most browsers cannot show (HEIC, TIFF)."""
    try:
        with field.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise Http404("The stored file is missing.") from None
    try:
        jpeg = services.image_rendition(data=data)
    except RetrievalError as exc:
        return error_response(exc)
    response = HttpResponse(jpeg, content_type="image/jpeg")
    response["Content-Disposition"] = f'inline; filename="{name.rsplit(".", 1)[0]}.jpg"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@ratelimit(group="admin-login-ip", key="ip", rate=login_rate, method="POST")
@ratelimit(group="admin-login-username", key="post:username", rate=login_rate, method="POST")
def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's login page, rate limited per client IP and per username."""
    return admin.site.login(request)
