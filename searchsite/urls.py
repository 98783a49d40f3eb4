from django.contrib import admin
from django.urls import include, path

from retrieval import views

urlpatterns = [
    path("", views.search_page, name="search"),
    path("searches/<uuid:public_id>/", views.search_detail_page, name="search-detail"),
    path("searches/<uuid:public_id>/image", views.search_image_file, name="search-image-file"),
    path("images/<int:image_id>/file", views.catalog_image_file, name="catalog-image-file"),
    # Web pages: catalogs, images, thumbnails, jobs (see README "Web pages").
    path("catalogs/", views.catalog_list_page, name="catalog-list"),
    path("catalogs/<str:name>/", views.catalog_detail_page, name="catalog-detail"),
    path("images/<int:image_id>/", views.catalog_image_page, name="catalog-image"),
    path("images/<int:image_id>/thumb", views.catalog_image_thumbnail, name="catalog-image-thumbnail"),
    path("jobs/", views.jobs_page, name="jobs"),
    path("jobs/live", views.jobs_live, name="jobs-live"),
    path("api/", include("retrieval.api.urls")),
    path("admin/login/", views.admin_login, name="admin-login"),  # before the admin's own
    path("admin/", admin.site.urls),
]
