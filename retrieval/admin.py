"""Django admin: catalogs, landmarks, images (with a multi-file upload page), searches, jobs."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.html import format_html

from retrieval import services
from retrieval.errors import DuplicateImage, RetrievalError
from retrieval.forms import CatalogUploadForm
from retrieval.models import Catalog, CatalogImage, FeatureModel, ImportJob, Landmark, ReindexJob, SearchQuery


# The index links to the jobs and catalog pages (templates/admin/retrieval_index.html).
admin.site.index_template = "admin/retrieval_index.html"


@admin.register(Catalog)
class CatalogAdmin(admin.ModelAdmin):
    list_display = ["name", "extractor_spec", "active_model", "image_count", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["active_model"]
    actions = ["reindex_catalogs"]

    def save_model(self, request: HttpRequest, obj: Catalog, form: object, change: bool) -> None:
        """A changed extractor goes through the service, which starts the reindex."""
        new_spec = obj.extractor_spec
        previous = Catalog.objects.filter(pk=obj.pk).values_list("extractor_spec", flat=True).first() if change else None
        if change and new_spec and new_spec != previous:
            obj.extractor_spec = previous or ""
            super().save_model(request, obj, form, change)
            try:
                job = services.catalog_select_model(catalog=obj, spec=new_spec)
            except RetrievalError as exc:
                self.message_user(request, exc.message, level=messages.ERROR)
                return
            self.message_user(request, f"Reindex job {job.pk} queued: {obj.name} switches to {new_spec} when it ends.")
            return
        super().save_model(request, obj, form, change)

    @admin.display(description="images")
    def image_count(self, obj: Catalog) -> int:
        return obj.images.count()

    @admin.action(description="Reindex with the current feature model (background job)")
    def reindex_catalogs(self, request: HttpRequest, queryset: QuerySet[Catalog]) -> None:
        for catalog in queryset:
            job = services.reindex_start(catalog=catalog)
            self.message_user(request, f"Reindex job {job.pk} queued for {catalog.name}.")


@admin.register(Landmark)
class LandmarkAdmin(admin.ModelAdmin):
    list_display = ["name", "catalog", "latitude", "longitude"]
    list_filter = ["catalog"]
    search_fields = ["name"]


class NearDuplicateFilter(admin.SimpleListFilter):
    """Photos flagged by the index worker as near duplicates of an earlier one."""

    title = "near duplicate"
    parameter_name = "near_duplicate"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[CatalogImage]) -> QuerySet[CatalogImage]:
        if self.value() in ("yes", "no"):
            return queryset.filter(near_duplicate_of__isnull=self.value() == "no")
        return queryset


@admin.register(CatalogImage)
class CatalogImageAdmin(admin.ModelAdmin):
    list_display = [
        "id", "thumbnail", "original_name", "catalog", "landmark", "status", "near_duplicate", "failure_reason",
        "created_at",
    ]  # fmt: skip
    list_filter = ["catalog", "status", NearDuplicateFilter, "landmark"]
    search_fields = ["original_name", "sha256", "external_id"]
    readonly_fields = [
        "sha256", "width", "height", "status", "failure_reason", "near_duplicate_of", "near_duplicate_similarity",
        "near_duplicate_inliers", "indexed_at", "created_at", "updated_at",
    ]  # fmt: skip
    actions = ["reindex_images"]
    change_list_template = "admin/retrieval/catalogimage/change_list.html"

    class Media:
        # A stylesheet rather than style attributes, which the Content-Security-Policy blocks.
        css = {"all": ["retrieval/admin.css"]}

    @admin.display(description="photo")
    def thumbnail(self, obj: CatalogImage) -> str:
        url = reverse("catalog-image-thumbnail", args=[obj.pk])
        return format_html('<img src="{}" class="catalog-thumbnail" alt="" loading="lazy">', url)

    @admin.display(description="near duplicate of", ordering="near_duplicate_of")
    def near_duplicate(self, obj: CatalogImage) -> str:
        if obj.near_duplicate_of_id is None:
            return "-"
        url = reverse("admin:retrieval_catalogimage_change", args=[obj.near_duplicate_of_id])
        return format_html(
            '<a href="{}">image {}</a> (cosine {}, {} inliers)',
            url, obj.near_duplicate_of_id, obj.near_duplicate_similarity, obj.near_duplicate_inliers,
        )  # fmt: skip

    @admin.action(description="Index again")
    def reindex_images(self, request: HttpRequest, queryset: QuerySet[CatalogImage]) -> None:
        count = services.images_requeue(image_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} image(s) queued for indexing.")

    def get_urls(self) -> list:
        custom = [path("upload/", self.admin_site.admin_view(self.upload_view), name="retrieval_catalogimage_upload")]
        return custom + super().get_urls()

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        return redirect("admin:retrieval_catalogimage_upload")

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        """Upload one or many photos into a catalog, with a landmark.

        Needs ``add_catalogimage``, and ``add_catalog`` to name a new catalog: admin_view
        only checks that the user is staff.
        """
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = CatalogUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            catalog = self._upload_catalog(request, form)
            if catalog is not None:
                job = self._upload_files(request, catalog=catalog, form=form)
                return redirect(reverse("jobs") + f"#import-{job.pk}")
        context = {**self.admin_site.each_context(request), "form": form, "title": "Upload catalog photos", "opts": self.model._meta}
        return render(request, "admin/retrieval/catalogimage/upload.html", context)

    def _upload_files(self, request: HttpRequest, *, catalog: Catalog, form: CatalogUploadForm) -> ImportJob:
        """Store the files as one import batch (the jobs page follows its indexing)."""
        files = form.cleaned_data["files"]
        landmark = services.landmark_get_or_create(catalog=catalog, name=form.cleaned_data["landmark"])
        job = services.import_job_start(
            catalog=catalog, source="admin upload", submitted=len(files), created_by=request.user.get_username()
        )
        added, duplicates, refused = 0, 0, []
        for upload in files:
            try:
                services.image_ingest_unique(
                    catalog=catalog, data=upload.read(), filename=upload.name, landmark=landmark, import_job=job
                )
                added += 1
            except DuplicateImage as exc:
                duplicates += 1
                messages.warning(request, f"Skipped {upload.name}: {exc.message}")
            except RetrievalError as exc:
                refused.append({"name": upload.name, "error": exc.message})
                messages.error(request, f"Skipped {upload.name}: {exc.message}")
        services.import_job_finish(job=job, duplicates=duplicates, refused=refused)
        if added:
            messages.success(
                request, f"{added} image(s) added to {catalog.name} and queued for indexing (import {job.pk})."
            )
        return job

    def _upload_catalog(self, request: HttpRequest, form: CatalogUploadForm) -> Catalog | None:
        """The chosen catalog, or the new one it names; None with a form error when the
        user may not create catalogs or the name is invalid."""
        if form.cleaned_data["catalog"] is not None:
            return form.cleaned_data["catalog"]
        if not request.user.has_perm("retrieval.add_catalog"):
            form.add_error("new_catalog", "You may not create catalogs; choose an existing one.")
            return None
        try:
            return services.catalog_get_or_create(name=form.cleaned_data["new_catalog"].strip())
        except RetrievalError as exc:
            form.add_error("new_catalog", exc.message)
            return None


@admin.register(SearchQuery)
class SearchQueryAdmin(admin.ModelAdmin):
    list_display = ["id", "catalog", "status", "landmark_name", "landmark_confidence", "created_at"]
    list_filter = ["catalog", "status"]
    readonly_fields = [f.name for f in SearchQuery._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ReindexJob)
class ReindexJobAdmin(admin.ModelAdmin):
    list_display = ["id", "catalog", "model", "status", "processed", "total", "failed", "created_at", "finished_at"]
    readonly_fields = [f.name for f in ReindexJob._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(FeatureModel)
class FeatureModelAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "global_dim", "local_dim", "created_at"]
    readonly_fields = ["name", "version", "global_dim", "local_dim", "config", "created_at"]
