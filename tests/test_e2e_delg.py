"""End to end with a model in the official DELG format: ``fetch_model --from-file``, then
``select_model`` (a reindex by the real Celery worker), then a search through the API.

The model is a tiny random SavedModel with the official TF2 signature and a 2048-d global
descriptor (tests/delg_models.py): it does not rank well, so the mechanics are checked,
not the quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client

from retrieval.models import Catalog, ImageDescriptor
from tests.conftest import encode
from tests.delg_models import build_delg_tf2, tar_gz
from tests.test_e2e import indexed_catalog, photo_folder  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def model_dir(settings, tmp_path: Path, indexed_catalog: Catalog) -> Iterator[Path]:  # noqa: F811
    """An empty MODEL_DIR for installed models, with the default extractor's converted
    weights linked in (so that nothing is converted again)."""
    from retrieval.extraction import reset_extractor

    models = tmp_path / "models"
    models.mkdir()
    for path in Path(settings.MODEL_DIR).glob("efficientnet-*.weights.*"):
        (models / path.name).symlink_to(path.resolve())
    settings.MODEL_DIR = models
    yield models
    reset_extractor()  # drop the worker's extractor built from this temporary folder


@pytest.fixture
def delg_archive(tmp_path: Path) -> Path:
    folder = build_delg_tf2(tmp_path / "export" / "r50delg_tiny_20200914")
    return tar_gz(folder, tmp_path / "r50delg_tiny_20200914.tar.gz", arcname="r50delg_tiny_20200914")


def test_fetch_from_file_and_select_model_make_search_use_the_delg_model(
    indexed_catalog: Catalog,  # noqa: F811
    model_dir: Path,
    delg_archive: Path,
    real_photos: dict[str, np.ndarray],
    client: Client,
    capsys,
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    old_model = indexed_catalog.active_model
    call_command("fetch_model", "tiny-delg", from_file=delg_archive, kind="delg")
    assert "use it with: delg:tiny-delg" in capsys.readouterr().out
    assert (model_dir / "installed" / "tiny-delg" / "saved_model" / "saved_model.pb").is_file()

    call_command("select_model", "delg:tiny-delg", catalog="demo")  # waits for the worker's reindex
    indexed_catalog.refresh_from_db()
    model = indexed_catalog.active_model
    assert indexed_catalog.extractor_spec == "delg:tiny-delg"
    assert model.name == "delg:tiny-delg" != old_model.name
    assert (model.global_dim, model.local_dim) == (2048, 128)
    rows = ImageDescriptor.objects.filter(model=model)
    assert rows.count() == 12 and all(row.num_local > 0 for row in rows)
    assert np.linalg.norm(np.asarray(rows[0].embedding, np.float32)) == pytest.approx(1.0, abs=1e-2)

    upload = SimpleUploadedFile("q.jpg", encode(real_photos["coffee"], quality=85), "image/jpeg")
    response = client.post("/api/search", {"image": upload, "catalog": "demo", "top_k": 5})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "done"
    assert body["model"].startswith("delg:tiny-delg@delg1-")
    assert len(body["results"]) == 5
    assert {"image_id", "score", "global_score", "inliers"} <= set(body["results"][0])
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
