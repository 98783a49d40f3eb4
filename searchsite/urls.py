from django.contrib import admin
from django.urls import include, path

from retrieval import views

urlpatterns = [
    path("", views.search_page, name="search"),
    path("searches/<uuid:public_id>/", views.search_detail_page, name="search-detail"),
    path("searches/<uuid:public_id>/image", views.search_image_file, name="search-image-file"),
    path("images/<int:image_id>/file", views.catalog_image_file, name="catalog-image-file"),
    path("api/", include("retrieval.api.urls")),
    path("admin/login/", views.admin_login, name="admin-login"),  # before the admin's own
    path("admin/", admin.site.urls),
]
