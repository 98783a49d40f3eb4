"""The web pages: search form, results, catalogs, images, thumbnails and jobs; who may see
which, and a 404 page (never a 500) for what does not exist."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone

from retrieval import services
from retrieval.models import Catalog, CatalogImage, ImportJob, ReindexJob, SearchQuery
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory, CatalogImageFactory, LandmarkFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in(django_user_model: type[User]) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_user("reader", password="x"))
    return client


@pytest.fixture
def photo_bytes() -> bytes:
    return encode(load_photo("coffee.png"))


def _real_image(catalog: Catalog, data: bytes, **fields: object) -> CatalogImage:
    image = services.image_ingest(catalog=catalog, data=data, filename="coffee.jpg", enqueue=False).image
    CatalogImage.objects.filter(pk=image.pk).update(**fields)
    image.refresh_from_db()
    return image


# --- search page ---------------------------------------------------------------------


def test_the_search_page_offers_public_catalogs_to_anyone_and_private_ones_when_signed_in(
    client: Client, signed_in: Client
) -> None:
    CatalogFactory(name="paris")
    CatalogFactory(name="secret", public=False)
    anonymous = client.get("/").content.decode()
    assert 'value="paris"' in anonymous and 'value="secret"' not in anonymous
    assert 'value="secret"' in signed_in.get("/").content.decode()


def test_the_search_page_refuses_a_private_catalog_to_an_anonymous_user(client: Client, photo_bytes: bytes) -> None:
    CatalogFactory(name="secret", public=False)
    upload = ContentFile(photo_bytes, name="q.jpg")
    response = client.post("/", {"image": upload, "catalog": "secret"})
    assert response.status_code == 400
    assert "No catalog with that name that you may search" in response.content.decode()
    assert not SearchQuery.objects.exists()


def test_the_search_page_preselects_the_catalog_named_in_the_query_string(client: Client) -> None:
    CatalogFactory(name="paris")
    CatalogFactory(name="rome")
    html = client.get("/?catalog=rome").content.decode()
    assert '<option value="rome" selected>' in html


def test_the_search_page_has_the_drawing_script_and_plain_fields_that_work_without_it(client: Client) -> None:
    CatalogFactory(name="paris")
    html = client.get("/").content.decode()
    assert "retrieval/search.js" in html and "<script>" not in html and "style=" not in html
    assert 'type="file" name="image"' in html and 'accept="image/*"' in html
    assert 'name="bbox"' in html and 'name="catalog"' in html


def test_the_search_page_says_when_there_is_no_catalog_yet(client: Client) -> None:
    assert "There is no catalog to search yet." in client.get("/").content.decode()


# --- results page --------------------------------------------------------------------


def _done_search(catalog: Catalog, results: list[dict], landmark: str = "") -> SearchQuery:
    return SearchQuery.objects.create(
        catalog=catalog,
        image=ContentFile(encode(load_photo("coffee.png")), name="q.jpg"),
        sha256="0" * 64,
        width=400,
        height=400,
        status=SearchQuery.Status.DONE,
        results=results,
        landmark_name=landmark,
        landmark_confidence=0.8 if landmark else None,
        created_at=timezone.now(),
    )


def _result(image: CatalogImage, *, inliers: int, verified: bool) -> dict:
    return {
        "rank": 1, "image_id": image.pk, "landmark": "tower", "score": inliers, "similarity": 0.5, "global_score": 0.5,
        "inliers": inliers, "verified": verified, "checked": True, "width": 640, "height": 480,
        "matches": [[10, 10, 20, 20]] * inliers if verified else [],
    }  # fmt: skip


def test_a_search_without_a_match_explains_why_and_what_to_try(client: Client) -> None:
    catalog = CatalogFactory(name="paris")
    CatalogFactory(name="rome")
    query = _done_search(catalog, [_result(CatalogImageFactory(catalog=catalog), inliers=7, verified=False)])
    html = client.get(f"/searches/{query.public_id}/").content.decode()
    assert "No match" in html
    assert "none reached the verification threshold" in html and "the best had 7 matching points" in html
    assert "a photo taken closer" in html and "less cropped" in html
    assert 'href="/?catalog=rome"' in html  # another catalog to try


def test_the_results_show_catalog_photos_as_thumbnails_with_the_match_points(client: Client) -> None:
    catalog = CatalogFactory(name="paris")
    image = CatalogImageFactory(catalog=catalog)
    query = _done_search(catalog, [_result(image, inliers=30, verified=True)], landmark="tower")
    html = client.get(f"/searches/{query.public_id}/").content.decode()
    assert "Landmark: <strong>tower</strong>" in html
    assert f'href="/images/{image.pk}/thumb"' in html
    assert f"/images/{image.pk}/file" not in html
    assert html.count("10,10,20,20") == 30


def test_an_unknown_search_is_a_404_page(client: Client) -> None:
    response = client.get(f"/searches/{uuid.uuid4()}/")
    assert response.status_code == 404 and "Not found" in response.content.decode()


# --- catalog pages -------------------------------------------------------------------


def test_the_catalog_list_shows_public_catalogs_with_counts_and_private_ones_when_signed_in(
    client: Client, signed_in: Client
) -> None:
    paris = CatalogFactory(name="paris")
    CatalogImageFactory.create_batch(2, catalog=paris, landmark=LandmarkFactory(catalog=paris))
    CatalogImageFactory(catalog=paris, status=CatalogImage.Status.PENDING)
    CatalogFactory(name="secret", public=False)
    html = client.get("/catalogs/").content.decode()
    assert "/catalogs/paris/" in html and "1 landmark · 2 of 3 photos indexed" in html
    assert "secret" not in html
    assert "/catalogs/secret/" in signed_in.get("/catalogs/").content.decode()


def test_the_catalog_page_lists_landmarks_with_counts_and_a_few_thumbnails_each(client: Client) -> None:
    catalog = CatalogFactory(name="paris")
    tower = LandmarkFactory(catalog=catalog, name="Eiffel Tower")
    images = CatalogImageFactory.create_batch(6, catalog=catalog, landmark=tower)
    CatalogImageFactory(catalog=catalog, status=CatalogImage.Status.FAILED)  # no landmark
    html = client.get("/catalogs/paris/").content.decode()
    assert 'id="landmark-eiffel-tower"' in html and "6 photos" in html
    shown = [image.pk for image in images if f'src="/images/{image.pk}/thumb"' in html]
    assert shown == [image.pk for image in images[:4]]
    assert "Without a landmark" in html
    assert "<strong>7</strong> photos" in html and "<strong>1</strong> failed" in html


def test_the_catalog_page_filters_and_pages_landmarks_without_failing_on_bad_numbers(client: Client) -> None:
    catalog = CatalogFactory(name="paris")
    for n in range(30):
        LandmarkFactory(catalog=catalog, name=f"site {n:02d}")
    LandmarkFactory(catalog=catalog, name="Louvre")
    assert "Page 1 of 2" in client.get("/catalogs/paris/?page=abc").content.decode()
    assert "Page 2 of 2" in client.get("/catalogs/paris/?page=999").content.decode()
    filtered = client.get("/catalogs/paris/?q=louv").content.decode()
    assert "Louvre" in filtered and "site 00" not in filtered
    assert client.get("/catalogs/paris/?q=%00&page=-1").status_code == 200


@pytest.mark.parametrize("name", ["nowhere", "secret"])
def test_an_unknown_or_private_catalog_is_a_404_for_an_anonymous_user(client: Client, name: str) -> None:
    CatalogFactory(name="secret", public=False)
    assert client.get(f"/catalogs/{name}/").status_code == 404


# --- image pages and thumbnails ------------------------------------------------------


def test_the_image_page_shows_landmark_status_failure_and_near_duplicate(client: Client) -> None:
    catalog = CatalogFactory(name="paris")
    original = CatalogImageFactory(catalog=catalog)
    image = CatalogImageFactory(
        catalog=catalog,
        landmark=LandmarkFactory(catalog=catalog, name="Louvre"),
        status=CatalogImage.Status.FAILED,
        failure_reason="The image data is truncated or corrupt.",
        near_duplicate_of=original,
        near_duplicate_similarity=0.97,
        near_duplicate_inliers=88,
    )
    html = client.get(f"/images/{image.pk}/").content.decode()
    assert "Louvre" in html and "failed" in html and "The image data is truncated or corrupt." in html
    assert f'href="/images/{original.pk}/"' in html and "similarity 0.970, 88 matching points" in html


def test_an_unknown_image_or_one_of_a_private_catalog_is_a_404_page(client: Client) -> None:
    private = CatalogImageFactory(catalog=CatalogFactory(name="secret", public=False))
    assert client.get("/images/999999/").status_code == 404
    assert client.get("/images/99999999999999999999999/").status_code == 404  # past bigint
    assert client.get(f"/images/{private.pk}/").status_code == 404


def test_the_thumbnail_route_makes_the_thumbnail_once_and_serves_it_as_jpeg(client: Client, photo_bytes: bytes) -> None:
    image = _real_image(CatalogFactory(name="paris"), photo_bytes)
    response = client.get(f"/images/{image.pk}/thumb")
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    body = b"".join(response.streaming_content)
    assert body[:2] == b"\xff\xd8" and len(body) < len(photo_bytes)
    image.refresh_from_db()
    assert image.thumbnail.name == services.thumbnail_name(image=image)
    default_storage.delete(image.file.name)  # later requests need only the thumbnail
    assert client.get(f"/images/{image.pk}/thumb").status_code == 200


def test_the_thumbnail_of_an_unknown_image_or_a_missing_photo_is_a_404(client: Client) -> None:
    broken = CatalogImageFactory(catalog=CatalogFactory(name="paris"))  # its "file" is not an image
    assert client.get("/images/999999/thumb").status_code == 404
    assert client.get("/images/99999999999999999999999/thumb").status_code == 404
    assert client.get(f"/images/{broken.pk}/thumb").status_code == 404


# --- jobs page -----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "signed in, not staff"])
def test_the_jobs_page_sends_non_staff_to_the_admin_login(client: Client, signed_in: Client, who: str) -> None:
    response = (client if who == "anonymous" else signed_in).get("/jobs/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/?next=/jobs/")


def test_the_live_jobs_fragment_is_staff_only(client: Client, signed_in: Client) -> None:
    assert client.get("/jobs/live").status_code == 403
    assert signed_in.get("/jobs/live").status_code == 403


def test_the_jobs_page_shows_an_import_with_its_percentage_and_failures(admin_client: Client) -> None:
    catalog = CatalogFactory(name="paris")
    job = services.import_job_start(catalog=catalog, source="admin upload", submitted=5, created_by="admin")
    CatalogImageFactory.create_batch(2, catalog=catalog, import_job=job, status=CatalogImage.Status.INDEXED)
    CatalogImageFactory(catalog=catalog, import_job=job, status=CatalogImage.Status.PENDING)
    CatalogImageFactory(
        catalog=catalog, import_job=job, status=CatalogImage.Status.FAILED, failure_reason="Feature extraction failed"
    )
    services.import_job_finish(job=job, duplicates=0, refused=[{"name": "notes.txt", "error": "not an image"}])
    for path in ("/jobs/", "/jobs/live"):
        html = admin_client.get(path).content.decode()
        assert f'id="import-{job.pk}"' in html and "75.0%" in html and "2 of 4 indexed" in html
        assert "1 failed" in html and "Feature extraction failed" in html and "notes.txt: not an image" in html
    assert "retrieval/jobs.js" in admin_client.get("/jobs/").content.decode()
    assert "<html" not in admin_client.get("/jobs/live").content.decode()


def test_the_jobs_page_shows_a_reindex_with_its_progress(admin_client: Client) -> None:
    job = ReindexJob.objects.create(
        catalog=CatalogFactory(name="paris"), status="running", total=10, processed=4, started_at=timezone.now()
    )
    html = admin_client.get("/jobs/").content.decode()
    assert f'id="reindex-{job.pk}"' in html and "40.0%" in html and "4 of 10 indexed" in html


def test_the_admin_index_links_to_the_jobs_page(admin_client: Client) -> None:
    assert 'href="/jobs/"' in admin_client.get("/admin/").content.decode()


def test_the_jobs_page_says_when_there_is_nothing(admin_client: Client) -> None:
    assert not ImportJob.objects.exists()
    assert "No imports or reindexes yet." in admin_client.get("/jobs/").content.decode()


def test_a_catalog_page_for_a_name_with_a_nul_character_is_a_404(client: Client) -> None:
    response = client.get("/catalogs/a%00b/")
    assert response.status_code == 404
