"""``/api/``: included from ``searchsite.urls``; the last pattern answers JSON 404s."""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularJSONAPIView

from retrieval.api import views
from retrieval.api.errors import not_found

urlpatterns = [
    path("search", views.SearchView.as_view(), name="api-search"),
    path("search/<str:public_id>", views.SearchDetailView.as_view(), name="api-search-detail"),
    path("catalogs", views.CatalogListView.as_view(), name="api-catalogs"),
    path("catalogs/<str:name>", views.CatalogDetailView.as_view(), name="api-catalog-detail"),
    path("catalogs/<str:name>/landmarks", views.LandmarkListView.as_view(), name="api-catalog-landmarks"),
    path("catalogs/<str:name>/images", views.CatalogImagesView.as_view(), name="api-catalog-images"),
    path("catalogs/<str:name>/reindex", views.ReindexView.as_view(), name="api-catalog-reindex"),
    path("images/<int:image_id>", views.ImageDetailView.as_view(), name="api-image-detail"),
    path("jobs", views.JobListView.as_view(), name="api-jobs"),
    path("jobs/imports/<int:job_id>", views.ImportJobDetailView.as_view(), name="api-import-job-detail"),
    path("jobs/reindex/<int:job_id>", views.ReindexJobDetailView.as_view(), name="api-reindex-job-detail"),
    path("schema/", SpectacularJSONAPIView.as_view(), name="api-schema"),
    path("docs/", views.SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"", not_found),
]
