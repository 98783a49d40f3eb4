"""What the API answers, and the documented shape of every request and response.

``search_payload`` is the one definition of a search's JSON (the API and the results
page both use it); ``SearchSerializer`` documents it in the schema (the tests check that
real payloads match). The catalog serializers render model rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from retrieval import selectors
from retrieval.models import Catalog, CatalogImage, ImportJob, Landmark, ReindexJob, SearchQuery, catalog_name_validator


def search_payload(request: HttpRequest, query: SearchQuery) -> dict[str, Any]:
    results = [
        {
            **{k: v for k, v in result.items() if k != "matches"},
            "image_url": request.build_absolute_uri(reverse("catalog-image-file", args=[result["image_id"]])),
            "matches": result.get("matches", []),
        }
        for result in query.results
    ]
    landmark = {"name": query.landmark_name, "confidence": query.landmark_confidence} if query.landmark_name else None
    return {
        "id": str(query.public_id),
        "status": query.status,
        "url": request.build_absolute_uri(reverse("api-search-detail", args=[query.public_id])),
        "catalog": query.catalog.name,
        "model": str(query.model) if query.model_id else None,
        "query": {"width": query.width, "height": query.height, "bbox": query.bbox},
        "results": results,
        "landmark": landmark,
        "timings_ms": query.timings_ms,
        "error": query.error or None,
    }


class ErrorSerializer(serializers.Serializer):
    """Every error answer of the API."""

    error = serializers.CharField(help_text="What went wrong, for a person to read.")


# Searches: documentation of ``search_payload`` (which renders them).


class SearchFormSerializer(serializers.Serializer):
    """The multipart form of ``POST /api/search`` (validated by ``retrieval.forms.SearchForm``)."""

    image = serializers.FileField(help_text="The photo (JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC).")
    catalog = serializers.CharField(
        required=False, help_text="Catalog name; defaults to the only searchable one, or the one named 'default'."
    )
    top_k = serializers.IntegerField(required=False, min_value=1, max_value=100, default=10)
    bbox = serializers.CharField(required=False, help_text="Region of the photo to search with: x1,y1,x2,y2 pixels.")
    wait = serializers.FloatField(
        required=False, min_value=0, help_text="Seconds to wait for the answer (capped by the server's limit)."
    )


class SearchResultSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    image_id = serializers.IntegerField()
    landmark = serializers.CharField(allow_null=True)
    score = serializers.FloatField(help_text="Inliers + similarity for verified results, else the similarity.")
    similarity = serializers.FloatField(help_text="What the shortlist ranks by (expanded query, augmented catalog).")
    global_score = serializers.FloatField(
        required=False, help_text="Plain cosine similarity of the global descriptors."
    )
    inliers = serializers.IntegerField()
    verified = serializers.BooleanField()
    checked = serializers.BooleanField(required=False, help_text="Whether its local features were matched.")
    width = serializers.IntegerField(required=False, allow_null=True)
    height = serializers.IntegerField(required=False, allow_null=True)
    name = serializers.CharField(required=False, allow_blank=True, help_text="The catalog image's original name.")
    external_id = serializers.CharField(required=False, allow_blank=True)
    image_url = serializers.URLField()
    matches = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField(), min_length=4, max_length=4),
        help_text="Inlier correspondences [x_query, y_query, x_image, y_image] (top verified results only).",
    )


class SearchQueryInfoSerializer(serializers.Serializer):
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)
    bbox = serializers.ListField(child=serializers.FloatField(), allow_null=True, min_length=4, max_length=4)


class RecognitionSerializer(serializers.Serializer):
    name = serializers.CharField()
    confidence = serializers.FloatField(allow_null=True)


class SearchSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=SearchQuery.Status.choices)
    url = serializers.URLField(help_text="Where to poll (GET) while the status is pending or running.")
    catalog = serializers.CharField()
    model = serializers.CharField(allow_null=True, help_text="The feature model that served the search.")
    query = SearchQueryInfoSerializer()
    results = SearchResultSerializer(many=True)
    landmark = RecognitionSerializer(allow_null=True, help_text="The recognised landmark; null: no match.")
    timings_ms = serializers.DictField(child=serializers.FloatField(), help_text="Milliseconds per stage.")
    error = serializers.CharField(allow_null=True, help_text="Why the search failed (status failed).")


class FailedSearchSerializer(SearchSerializer):
    """A failed search (422): ``error`` says why."""

    error = serializers.CharField(help_text="Why the search failed.")


# Catalogs, landmarks, images and jobs.


def thumbnail_url(request: HttpRequest, image_id: int) -> str | None:
    """The thumbnail route, where this site has one."""
    try:
        return request.build_absolute_uri(reverse("catalog-image-thumbnail", args=[image_id]))
    except NoReverseMatch:
        return None


class StatusCountsSerializer(serializers.Serializer):
    pending = serializers.IntegerField()
    processing = serializers.IntegerField()
    indexed = serializers.IntegerField()
    failed = serializers.IntegerField()
    total = serializers.IntegerField()


class CatalogSerializer(serializers.ModelSerializer):
    """A catalog; ``images`` counts its images per status (annotated by
    ``selectors.catalogs_with_counts``)."""

    url = serializers.SerializerMethodField()
    extractor = serializers.SerializerMethodField(help_text="The feature extractor that indexes its new photos.")
    active_model = serializers.SerializerMethodField(help_text="The feature model that serves its searches.")
    images = serializers.SerializerMethodField()
    landmarks = serializers.IntegerField(source="landmark_count", read_only=True)

    class Meta:
        model = Catalog
        fields = [
            "name", "url", "description", "public", "extractor", "active_model", "images", "landmarks", "created_at",
        ]  # fmt: skip

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, catalog: Catalog) -> str:
        return self.context["request"].build_absolute_uri(reverse("api-catalog-detail", args=[catalog.name]))

    def get_extractor(self, catalog: Catalog) -> str:
        from retrieval.services import catalog_extractor_spec

        return catalog_extractor_spec(catalog=catalog)

    def get_active_model(self, catalog: Catalog) -> str | None:
        return str(catalog.active_model) if catalog.active_model_id else None

    @extend_schema_field(StatusCountsSerializer)
    def get_images(self, catalog: Catalog) -> dict[str, int]:
        counts = {status: getattr(catalog, f"images_{status}", 0) for status in CatalogImage.Status.values}
        return {**counts, "total": sum(counts.values())}


class CatalogCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(
        catalog_name_validator.regex, max_length=100, help_text="Letters, digits, '.', '_' and '-'.",
        error_messages={"invalid": catalog_name_validator.message},
    )  # fmt: skip
    description = serializers.CharField(required=False, allow_blank=True, default="")
    public = serializers.BooleanField(required=False, default=True, help_text="Anyone may search it.")


class CatalogUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    public = serializers.BooleanField(required=False)


class LandmarkSerializer(serializers.ModelSerializer):
    images = serializers.IntegerField(source="image_count", read_only=True, help_text="Images of this landmark.")

    class Meta:
        model = Landmark
        fields = ["id", "name", "description", "latitude", "longitude", "images"]


class CatalogImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    catalog = serializers.CharField(source="catalog.name", read_only=True)
    landmark = serializers.CharField(source="landmark.name", read_only=True, allow_null=True, default=None)
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = CatalogImage
        fields = [
            "id", "url", "catalog", "landmark", "status", "failure_reason", "original_name", "external_id", "sha256",
            "width", "height", "file_url", "thumbnail_url", "import_job", "near_duplicate_of",
            "near_duplicate_similarity", "near_duplicate_inliers", "created_at", "indexed_at",
        ]  # fmt: skip

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, image: CatalogImage) -> str:
        return self.context["request"].build_absolute_uri(reverse("api-image-detail", args=[image.pk]))

    @extend_schema_field(OpenApiTypes.URI)
    def get_file_url(self, image: CatalogImage) -> str:
        return self.context["request"].build_absolute_uri(reverse("catalog-image-file", args=[image.pk]))

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_thumbnail_url(self, image: CatalogImage) -> str | None:
        return thumbnail_url(self.context["request"], image.pk)


class UploadFieldsSerializer(serializers.Serializer):
    landmark = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="The landmark shown in all of them."
    )


class UploadFormSerializer(UploadFieldsSerializer):
    """The multipart form of ``POST /api/catalogs/{name}/images`` (the files are checked
    one by one: a refused file does not stop the others)."""

    files = serializers.ListField(child=serializers.FileField(), help_text="One or many photos.")


class DuplicateSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The file's name as uploaded.")
    image_id = serializers.IntegerField(help_text="The image already in the catalog with the same content.")


class RefusedSerializer(serializers.Serializer):
    name = serializers.CharField()
    error = serializers.CharField()


class JobProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    remaining = serializers.IntegerField()
    percent = serializers.FloatField()
    rate = serializers.FloatField(allow_null=True, help_text="Images per second.")
    eta_seconds = serializers.FloatField(allow_null=True)
    running = serializers.BooleanField()


class ImageFailureSerializer(serializers.Serializer):
    image_id = serializers.IntegerField()
    name = serializers.CharField()
    error = serializers.CharField()


class ImportJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    catalog = serializers.CharField(source="catalog.name", read_only=True)
    refused = RefusedSerializer(many=True, read_only=True, help_text="Files not stored, with the reason.")
    progress = serializers.SerializerMethodField(help_text="Indexing of the stored images.")
    failures = serializers.SerializerMethodField(help_text="Stored images whose indexing failed.")

    class Meta:
        model = ImportJob
        fields = [
            "id", "url", "catalog", "source", "submitted", "duplicates", "refused", "created_by", "created_at",
            "finished_at", "progress", "failures",
        ]  # fmt: skip

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, job: ImportJob) -> str:
        return self.context["request"].build_absolute_uri(reverse("api-import-job-detail", args=[job.pk]))

    @extend_schema_field(JobProgressSerializer)
    def get_progress(self, job: ImportJob) -> dict[str, Any]:
        return dataclasses.asdict(selectors.import_job_progress(job=job))

    @extend_schema_field(ImageFailureSerializer(many=True))
    def get_failures(self, job: ImportJob) -> list[dict[str, object]]:
        return selectors.import_job_failures(job=job)


class UploadResultSerializer(serializers.Serializer):
    """What an upload stored: the batch (poll its ``url`` for the indexing progress),
    the new images, the files already in the catalog and those refused."""

    import_job = ImportJobSerializer()
    created = CatalogImageSerializer(many=True)
    duplicates = DuplicateSerializer(many=True)
    refused = RefusedSerializer(many=True)


class UploadRefusedSerializer(UploadResultSerializer):
    """No file was stored (every one refused): the report and the first reason."""

    error = serializers.CharField()


class ReindexOptionsSerializer(serializers.Serializer):
    stale_only = serializers.BooleanField(
        required=False, default=False, help_text="Only images with no descriptor from the current model."
    )


class ReindexJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    catalog = serializers.CharField(source="catalog.name", read_only=True, allow_null=True, default=None)
    model = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = ReindexJob
        fields = [
            "id", "url", "catalog", "model", "status", "stale_only", "error", "created_at", "started_at", "finished_at",
            "progress",
        ]  # fmt: skip

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, job: ReindexJob) -> str:
        return self.context["request"].build_absolute_uri(reverse("api-reindex-job-detail", args=[job.pk]))

    def get_model(self, job: ReindexJob) -> str | None:
        return str(job.model) if job.model_id else None

    @extend_schema_field(JobProgressSerializer)
    def get_progress(self, job: ReindexJob) -> dict[str, Any]:
        return dataclasses.asdict(selectors.reindex_job_progress(job=job))


class JobsSerializer(serializers.Serializer):
    imports = ImportJobSerializer(many=True)
    reindex = ReindexJobSerializer(many=True)
