"""The JSON API: search (anyone, within the catalogs they may search) and the catalog API
(token or session authentication; reads for signed-in users, writes for staff).

Views validate, call one service or selector, and serialize; every error becomes
``{"error": ...}`` in ``retrieval.api.errors``. The OpenAPI schema is generated from these
classes (``retrieval.api.schema``) and served at ``/api/schema/``.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.utils.decorators import method_decorator
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework import generics, permissions
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from retrieval import selectors, services
from retrieval.api import serializers as s
from retrieval.api.schema import ApiSchema, error_responses
from retrieval.errors import InvalidInput, NotFound
from retrieval.models import Catalog, CatalogImage, SearchQuery, catalog_name_validator
from retrieval.views import create_search, search_rate_limit, wait_for_search


class ApiPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class StaffWrites(permissions.BasePermission):
    """Reads for anyone (the view narrows what they see); writes for staff."""

    message = "Only staff users may change catalogs, images and jobs."
    anonymous_reads = True  # for the schema (retrieval.api.schema)

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in permissions.SAFE_METHODS or bool(request.user and request.user.is_staff)


class SignedInReadsStaffWrites(StaffWrites):
    """Reads for signed-in or token-authenticated users; writes for staff."""

    anonymous_reads = False

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return bool(request.user and request.user.is_authenticated)
        return super().has_permission(request, view)


class ApiView(APIView):
    schema = ApiSchema()
    permission_classes = [SignedInReadsStaffWrites]


class ApiListView(generics.ListAPIView):
    schema = ApiSchema()
    permission_classes = [SignedInReadsStaffWrites]
    pagination_class = ApiPagination


# Search.


def _wait_seconds(request: Request) -> float:
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


def _search_response(request: Request, query: SearchQuery) -> Response:
    payload = s.search_payload(request, query)
    if query.status == SearchQuery.Status.FAILED:
        return Response(payload, status=422)
    if query.status == SearchQuery.Status.DONE:
        return Response(payload)
    return Response(payload, status=202, headers={"Location": payload["url"]})


SEARCH_RESPONSES = {
    200: OpenApiResponse(s.SearchSerializer, description="Done: the ranked results."),
    202: OpenApiResponse(s.SearchSerializer, description="Still running: poll `url` (also in `Location`)."),
    422: OpenApiResponse(s.FailedSearchSerializer, description="Failed: `error` says why."),
}


# The rate limit wraps the whole DRF view (dispatch), so that going over it raises
# outside DRF and django-ratelimit's middleware answers through RATELIMIT_VIEW (429), as
# for the search form, which shares the budget.
@method_decorator(search_rate_limit, name="dispatch")
class SearchView(ApiView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        operation_id="search_create",
        request={"multipart/form-data": s.SearchFormSerializer},
        responses={**SEARCH_RESPONSES, **error_responses(429)},
        parameters=[OpenApiParameter("wait", float, description="Seconds to wait for the answer (or a form field).")],
        description="Search a catalog with a photo. Anonymous clients search public catalogs; signed-in or token "
        "clients every catalog. The answer comes when the workers finish; past the wait limit it is 202 with a "
        "`url` to poll. Rate limited per client IP (429).",
    )
    def post(self, request: Request) -> Response:
        timeout = _wait_seconds(request)  # validated before anything is stored
        query = wait_for_search(create_search(request), timeout)
        return _search_response(request, query)


class SearchDetailView(ApiView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        operation_id="search_retrieve",
        responses=SEARCH_RESPONSES,
        description="A search by its id (a random UUID: knowing it is the permission).",
    )
    def get(self, request: Request, public_id: str) -> Response:
        # Any string reaches here so that an old integer id gets the API's JSON 404 too.
        try:
            query = selectors.search_get_public(public_id=uuid.UUID(public_id))
        except ValueError:
            query = None
        if query is None:
            raise NotFound(f"No search with id {public_id}.")
        return _search_response(request, query)


# Catalogs.


def _catalog(name: str, *, user: object = None) -> Catalog:
    """The catalog of a URL; with ``user``, only among those they may search (another
    one is as unknown as a missing one)."""
    try:
        catalog_name_validator(name)
    except DjangoValidationError:
        raise NotFound(f"No catalog named {name!r}.") from None
    catalogs = selectors.catalogs_searchable(user=user) if user is not None else Catalog.objects.all()
    catalog = catalogs.filter(name=name).first()
    if catalog is None:
        raise NotFound(f"No catalog named {name}.")
    return catalog


def _catalog_with_counts(catalog: Catalog) -> Catalog:
    return selectors.catalogs_with_counts(catalogs=Catalog.objects.filter(pk=catalog.pk)).get()


class CatalogListView(generics.ListAPIView):
    """``GET``: the catalogs you may search (anonymous: public ones), with image counts
    per status. ``POST`` (staff): create one."""

    schema = ApiSchema()
    permission_classes = [StaffWrites]
    pagination_class = ApiPagination
    serializer_class = s.CatalogSerializer

    def get_queryset(self) -> QuerySet[Catalog]:
        catalogs = selectors.catalogs_searchable(user=self.request.user)
        return selectors.catalogs_with_counts(catalogs=catalogs).order_by("name")

    @extend_schema(
        operation_id="catalogs_create",
        request=s.CatalogCreateSerializer,
        responses={201: s.CatalogSerializer, **error_responses(409)},
    )
    def post(self, request: Request) -> Response:
        fields = s.CatalogCreateSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        catalog = services.catalog_create(**fields.validated_data)
        body = s.CatalogSerializer(_catalog_with_counts(catalog), context={"request": request}).data
        return Response(body, status=201, headers={"Location": body["url"]})


class CatalogDetailView(ApiView):
    permission_classes = [StaffWrites]

    @extend_schema(operation_id="catalogs_retrieve", responses=s.CatalogSerializer)
    def get(self, request: Request, name: str) -> Response:
        """A catalog you may search, with its image counts per status and active model."""
        catalog = _catalog(name, user=request.user)
        return Response(s.CatalogSerializer(_catalog_with_counts(catalog), context={"request": request}).data)

    @extend_schema(
        operation_id="catalogs_partial_update", request=s.CatalogUpdateSerializer, responses=s.CatalogSerializer
    )
    def patch(self, request: Request, name: str) -> Response:
        """Change a catalog's description or whether anyone may search it (staff)."""
        catalog = _catalog(name)
        fields = s.CatalogUpdateSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        services.catalog_update(catalog=catalog, **fields.validated_data)
        return Response(s.CatalogSerializer(_catalog_with_counts(catalog), context={"request": request}).data)


class LandmarkListView(ApiListView):
    """A catalog's landmarks by name, with their image counts."""

    serializer_class = s.LandmarkSerializer

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.catalog_landmarks(catalog=_catalog(self.kwargs["name"]))

    @extend_schema(operation_id="catalogs_landmarks_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


IMAGE_FILTERS = [
    OpenApiParameter("status", str, enum=CatalogImage.Status.values, description="Only images with this status."),
    OpenApiParameter("landmark", str, description="Only images of this landmark (its name)."),
]


class CatalogImagesView(ApiListView):
    """``GET``: a catalog's images by id, with their indexing status. ``POST`` (staff):
    upload one or many photos."""

    serializer_class = s.CatalogImageSerializer

    def get_queryset(self) -> QuerySet[CatalogImage]:
        status = self.request.query_params.get("status") or None
        if status is not None and status not in CatalogImage.Status.values:
            raise InvalidInput(f"status must be one of {', '.join(CatalogImage.Status.values)}.")
        landmark = self.request.query_params.get("landmark") or None
        if landmark is not None and "\x00" in landmark:
            raise InvalidInput("landmark must not contain NUL characters.")
        return selectors.catalog_images(catalog=_catalog(self.kwargs["name"]), status=status, landmark=landmark)

    @extend_schema(operation_id="catalogs_images_list", parameters=IMAGE_FILTERS)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="catalogs_images_create",
        request={"multipart/form-data": s.UploadFormSerializer},
        responses={
            201: OpenApiResponse(s.UploadResultSerializer, description="At least one new image was stored."),
            200: OpenApiResponse(s.UploadResultSerializer, description="Nothing new: every file was in the catalog."),
            **{
                code: OpenApiResponse(s.UploadRefusedSerializer, description=f"No file was stored: {text}")
                for code, text in [(400, "invalid images."), (413, "files over the limits."), (415, "not images.")]
            },
        },
        description="Store photos in the catalog (multipart `files`, one or many, and an optional `landmark`) "
        "and queue them for indexing. The answer lists the new images, the files already in the catalog (same "
        "content) and those refused with the reason; `import_job.url` follows the indexing progress.",
    )
    def post(self, request: Request, name: str) -> Response:
        catalog = _catalog(name)
        fields = s.UploadFieldsSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        files = request.FILES.getlist("files")
        if not files:
            raise InvalidInput("files: send one or more photos as multipart fields named 'files'.")
        upload = services.images_upload(
            catalog=catalog,
            files=files,
            landmark=fields.validated_data.get("landmark", ""),
            source="api",
            created_by=request.user.get_username(),
        )
        body: dict[str, Any] = {
            "import_job": s.ImportJobSerializer(upload.job, context={"request": request}).data,
            "created": s.CatalogImageSerializer(upload.created, many=True, context={"request": request}).data,
            "duplicates": upload.duplicates,
            "refused": upload.refused,
        }
        if upload.created:
            return Response(body, status=201, headers={"Location": body["import_job"]["url"]})
        if upload.refused:
            first = upload.refused[0]
            body["error"] = f"No file was stored. {first['name']}: {first['error']}"
            return Response(body, status=upload.refused_status)
        return Response(body)


class ImageDetailView(ApiView):
    def _image(self, image_id: int) -> CatalogImage:
        image = selectors.image_get(image_id=image_id)
        if image is None:
            raise NotFound(f"No image with id {image_id}.")
        return image

    @extend_schema(operation_id="images_retrieve", responses=s.CatalogImageSerializer)
    def get(self, request: Request, image_id: int) -> Response:
        """A catalog image: its status, sizes, files and near-duplicate flag."""
        return Response(s.CatalogImageSerializer(self._image(image_id), context={"request": request}).data)

    @extend_schema(operation_id="images_destroy", responses={204: None})
    def delete(self, request: Request, image_id: int) -> Response:
        """Delete a catalog image, its descriptors, stored file and thumbnail (staff)."""
        if not services.image_delete(image_id=image_id):
            raise NotFound(f"No image with id {image_id}.")
        return Response(status=204)


class ReindexView(ApiView):
    @extend_schema(
        operation_id="catalogs_reindex_create",
        request=s.ReindexOptionsSerializer,
        responses={202: s.ReindexJobSerializer},
        description="Re-extract the catalog's images with its current feature model in the background (staff); "
        "follow the job's `url`.",
    )
    def post(self, request: Request, name: str) -> Response:
        catalog = _catalog(name)
        fields = s.ReindexOptionsSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        job = services.reindex_start(catalog=catalog, stale_only=fields.validated_data["stale_only"])
        body = s.ReindexJobSerializer(job, context={"request": request}).data
        return Response(body, status=202, headers={"Location": body["url"]})


# Jobs.

RECENT_JOBS = 20


class JobListView(ApiView):
    @extend_schema(
        operation_id="jobs_list",
        responses=s.JobsSerializer,
        parameters=[OpenApiParameter("catalog", str, description="Only this catalog's jobs.")],
        description=f"The {RECENT_JOBS} latest import batches and reindex jobs, newest first, with their progress.",
    )
    def get(self, request: Request) -> Response:
        name = request.query_params.get("catalog")
        catalog = _catalog(name) if name else None
        imports, reindex = selectors.jobs_latest(catalog=catalog, limit=RECENT_JOBS)
        context = {"request": request}
        return Response(
            {
                "imports": s.ImportJobSerializer(imports, many=True, context=context).data,
                "reindex": s.ReindexJobSerializer(reindex, many=True, context=context).data,
            }
        )


class ImportJobDetailView(ApiView):
    @extend_schema(operation_id="jobs_imports_retrieve", responses=s.ImportJobSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        """An upload batch: what was stored, refused or a duplicate, and its indexing progress."""
        job = selectors.import_job_get(job_id=job_id)
        if job is None:
            raise NotFound(f"No import job with id {job_id}.")
        return Response(s.ImportJobSerializer(job, context={"request": request}).data)


class ReindexJobDetailView(ApiView):
    @extend_schema(operation_id="jobs_reindex_retrieve", responses=s.ReindexJobSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        """A reindex job and its progress."""
        job = selectors.reindex_job_get(job_id=job_id)
        if job is None:
            raise NotFound(f"No reindex job with id {job_id}.")
        return Response(s.ReindexJobSerializer(job, context={"request": request}).data)


class SwaggerView(SpectacularSwaggerSplitView):
    """Swagger UI from our static files, its settings script from this view: nothing
    inline, so the page works under the site's Content-Security-Policy."""

    template_name = "retrieval/api/swagger_ui.html"
