"""End to end with real parts: PostgreSQL + pgvector, Redis, a Celery worker, real photos.

Catalog photos are a dozen real photographs shipped with scikit-image; each is its own
"landmark". The query is a perspective-warped, rescaled, re-encoded copy of one of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from retrieval.models import Catalog, CatalogImage, ImageDescriptor, ReindexJob
from tests.conftest import encode, load_photo

pytestmark = [pytest.mark.e2e]


def _wait_indexed(catalog: Catalog, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while catalog.images.filter(status__in=["pending", "processing"]).exists():
        assert time.monotonic() < deadline, "the worker did not index the catalog in time"
        time.sleep(0.2)


@pytest.fixture
def photo_folder(tmp_path: Path, real_photos: dict[str, np.ndarray]) -> Path:
    for name, photo in real_photos.items():
        (tmp_path / "photos" / name).mkdir(parents=True)
        (tmp_path / "photos" / name / f"{name}.jpg").write_bytes(encode(photo, quality=92))
    return tmp_path / "photos"


@pytest.fixture
def indexed_catalog(celery_worker: object, photo_folder: Path) -> Catalog:
    call_command("import_catalog", str(photo_folder), catalog="demo")
    catalog = Catalog.objects.get(name="demo")
    _wait_indexed(catalog)
    catalog.refresh_from_db()
    return catalog


def _farther(photo: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` at half size in the middle of another scene, and the (3, 3) map from the
    photo's pixels to the result's."""
    height, width = photo.shape[:2]
    out = cv2.resize(np.dstack([scene] * 3) if scene.ndim == 2 else scene, (width, height))
    out[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = cv2.resize(
        photo, (width // 2, height // 2), interpolation=cv2.INTER_AREA
    )
    return out, np.array([[0.5, 0, width // 4], [0, 0.5, height // 4], [0, 0, 1]], np.float64)


def _query_warp(photo: np.ndarray) -> np.ndarray:
    """(3, 3) map from the catalog photo's pixels to the query's (_transformed_query)."""
    height, width = photo.shape[:2]
    src = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    dst = np.float32([[30, 20], [width - 10, 45], [width - 35, height - 5], [5, height - 30]])
    return np.diag([1.3, 1.3, 1.0]) @ cv2.getPerspectiveTransform(src, dst)


def _transformed_query(photo: np.ndarray) -> bytes:
    """The photo perspective-warped and enlarged 1.3x, as JPEG."""
    height, width = photo.shape[:2]
    warp = _query_warp(photo)
    return encode(cv2.warpPerspective(photo, warp, (int(width * 1.3), int(height * 1.3))), quality=80)


def test_import_indexes_every_photo_with_the_current_model(indexed_catalog: Catalog) -> None:
    assert indexed_catalog.images.count() == 12
    assert indexed_catalog.images.filter(status=CatalogImage.Status.INDEXED).count() == 12
    descriptor = ImageDescriptor.objects.filter(catalog=indexed_catalog).select_related("model").first()
    assert descriptor is not None and descriptor.num_local > 50
    indexed_catalog.refresh_from_db()
    assert indexed_catalog.active_model_id == descriptor.model_id
    assert descriptor.model.name.startswith("effnet-lite0-gem+rootsift")
    assert np.linalg.norm(np.asarray(descriptor.embedding, np.float32)) == pytest.approx(1.0, abs=1e-2)


def test_search_finds_a_transformed_copy_at_rank_one_with_many_inliers(
    indexed_catalog: Catalog, real_photos: dict[str, np.ndarray], client: Client
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("query.jpg", _transformed_query(real_photos["astronaut"]), "image/jpeg")
    response = client.post("/api/search", {"image": upload, "catalog": "demo", "top_k": 5})
    assert response.status_code == 200, response.content
    body = response.json()
    top = body["results"][0]
    assert top["landmark"] == "astronaut"
    assert top["verified"] and top["inliers"] >= 50
    assert all(not r["verified"] for r in body["results"][1:])
    assert body["landmark"]["name"] == "astronaut" and 0 < body["landmark"]["confidence"] <= 1
    assert {"queue", "extract", "shortlist", "verify", "total"} <= set(body["timings_ms"])
    assert -1 <= top["global_score"] <= 1 and -1 <= top["similarity"] <= 1
    assert len(top["matches"]) >= 50 and len(top["matches"][0]) == 4
    page = client.get(f"/searches/{body['id']}/")
    assert page.status_code == 200 and b"astronaut" in page.content


def test_search_for_an_unrelated_photo_is_no_match(indexed_catalog: Catalog, client: Client) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    unrelated = load_photo("moon.png")  # not in the catalog
    upload = SimpleUploadedFile("q.png", encode(unrelated, "PNG"), "image/png")
    body = client.post("/api/search", {"image": upload, "catalog": "demo"}).json()
    assert body["status"] == "done"
    assert body["landmark"] is None
    assert not any(r["verified"] for r in body["results"])


def test_importing_the_same_files_again_indexes_nothing_twice(indexed_catalog: Catalog, photo_folder: Path, capsys) -> None:
    call_command("import_catalog", str(photo_folder), catalog="demo")
    assert "0 added" in capsys.readouterr().out
    assert indexed_catalog.images.count() == 12
    assert ImageDescriptor.objects.filter(catalog=indexed_catalog).count() == 12


def test_a_corrupt_stored_file_fails_with_a_reason_and_the_worker_goes_on(
    indexed_catalog: Catalog, real_photos: dict[str, np.ndarray]
) -> None:
    from retrieval import services

    broken = indexed_catalog.images.first()
    Path(broken.file.path).write_bytes(b"garbage")
    healthy = services.image_ingest(
        catalog=indexed_catalog, data=encode(np.fliplr(real_photos["coffee"]).copy()), filename="flipped.jpg"
    ).image
    services.images_requeue(image_ids=[broken.pk])
    _wait_indexed(indexed_catalog)
    broken.refresh_from_db()
    healthy.refresh_from_db()
    assert broken.status == "failed" and "not an image" in broken.failure_reason
    assert healthy.status == "indexed"


def test_reindex_runs_in_the_background_and_switches_the_catalog(indexed_catalog: Catalog, settings, capsys) -> None:
    from retrieval.extraction import reset_extractor

    old_model = indexed_catalog.active_model
    settings.LANDMARKS_MAX_KEYPOINTS = 300  # a new model version
    reset_extractor()
    try:
        call_command("reindex", catalog="demo")
    finally:
        reset_extractor()
    job = ReindexJob.objects.get()
    assert job.status == "done" and job.processed == 12 and job.failed == 0
    indexed_catalog.refresh_from_db()
    assert indexed_catalog.active_model_id == job.model_id != old_model.pk
    # Old rows are kept next to the new ones.
    assert ImageDescriptor.objects.filter(model=old_model).count() == 12
    assert ImageDescriptor.objects.filter(model=job.model, num_local__lte=300).count() == 12
    assert "done: 12 processed" in capsys.readouterr().out


def test_selecting_another_model_reindexes_and_switches_when_done(
    indexed_catalog: Catalog, real_photos: dict[str, np.ndarray], client: Client
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    old_model = indexed_catalog.active_model
    # Dense CNN local features, verified with a fundamental matrix (40 inliers to verify).
    call_command("select_model", "effnet-lite0-gem+effnet-lite0-local", catalog="demo")
    indexed_catalog.refresh_from_db()
    assert indexed_catalog.extractor_spec == "effnet-lite0-gem+effnet-lite0-local"
    assert indexed_catalog.active_model.name == "effnet-lite0-gem+effnet-lite0-local" != old_model.name
    assert ImageDescriptor.objects.filter(model=indexed_catalog.active_model).count() == 12
    # The coffee cup seen from twice as far, in another scene: the query enlarged 2x
    # (LANDMARKS_QUERY_SCALES) matches the catalog photo's cells best.
    query, warp = _farther(real_photos["coffee"], load_photo("moon.png"))
    upload = SimpleUploadedFile("q.jpg", encode(query, quality=90), "image/jpeg")
    body = client.post("/api/search", {"image": upload, "catalog": "demo"}).json()
    assert body["model"].startswith("effnet-lite0-gem+effnet-lite0-local@")
    assert body["results"][0]["landmark"] == "coffee" and body["results"][0]["verified"]
    assert body["results"][0]["inliers"] >= 40 and body["landmark"]["name"] == "coffee"
    # The drawn matches are in the query's own pixels whichever size verified: they follow
    # the known map from the catalog photo to the query within a cell.
    drawn = np.array(body["results"][0]["matches"], np.float64)
    expected = cv2.perspectiveTransform(drawn[None, :, 2:], warp)[0]
    assert len(drawn) >= 40 and np.median(np.linalg.norm(expected - drawn[:, :2], axis=1)) < 16.0


def test_the_dense_default_finds_a_photo_taken_twice_as_far_with_one_extraction(
    indexed_catalog: Catalog, real_photos: dict[str, np.ndarray], client: Client, settings: object
) -> None:
    from retrieval.extraction import reset_extractor
    from retrieval.vision.features import LocalFeatures

    # The coarse level is the global pass at 512 px, half the fine level's 1024 px: a photo
    # taken twice as far pairs the query's fine cells with the catalog's coarse ones.
    settings.LANDMARKS_GLOBAL_IMAGE_SIZE = 512  # type: ignore[attr-defined]
    reset_extractor()
    try:
        call_command("select_model", "effnet-lite0-dense", catalog="demo")
        indexed_catalog.refresh_from_db()
        model = indexed_catalog.active_model
        assert model.name == "effnet-lite0-dense"
        rows = ImageDescriptor.objects.filter(model=model)
        assert rows.count() == 12
        blob = bytes(rows.first().local_features)
        assert blob[:4] == b"LFv2" and len(blob) <= 1500 * 132 + 13  # int8 rows, two levels
        assert len(np.unique(LocalFeatures.from_bytes(blob).scales)) == 2
        query, warp = _farther(real_photos["coffee"], load_photo("moon.png"))
        upload = SimpleUploadedFile("q.jpg", encode(query, quality=90), "image/jpeg")
        body = client.post("/api/search", {"image": upload, "catalog": "demo"}).json()
        assert body["model"].startswith("effnet-lite0-dense@")
        top = body["results"][0]
        assert top["landmark"] == "coffee" and top["verified"] and top["inliers"] >= 40
        assert body["landmark"]["name"] == "coffee"
        assert 1 <= body["timings_ms"]["verify_depth"] <= 12
        drawn = np.array(top["matches"], np.float64)
        expected = cv2.perspectiveTransform(drawn[None, :, 2:], warp)[0]
        assert np.median(np.linalg.norm(expected - drawn[:, :2], axis=1)) < 16.0
    finally:
        reset_extractor()


def test_selecting_an_unknown_model_exits_with_a_message(indexed_catalog: Catalog) -> None:
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="unknown extractor"):
        call_command("select_model", "resnet9000+magic", catalog="demo")
    indexed_catalog.refresh_from_db()
    assert indexed_catalog.extractor_spec == ""


def test_the_catalog_is_augmented_once_indexing_is_done(indexed_catalog: Catalog) -> None:
    deadline = time.monotonic() + 60
    while not Catalog.objects.get(pk=indexed_catalog.pk).augmented_at:
        assert time.monotonic() < deadline, "no DBA refresh ran after the import"
        time.sleep(0.2)
    rows = ImageDescriptor.objects.filter(catalog=indexed_catalog)
    assert rows.filter(augmentation__isnull=True).count() == 0
    for vector in rows.values_list("augmentation__embedding", flat=True):
        assert np.linalg.norm(np.asarray(vector, np.float32)) == pytest.approx(1.0, abs=1e-2)
