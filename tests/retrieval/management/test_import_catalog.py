"""import_catalog: folders, zips and dataset.json; bad files are reported, the batch goes on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from retrieval.models import Catalog, CatalogImage
from tests.conftest import encode, load_photo

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for landmark, photo in [("rocket", "rocket.jpg"), ("coffee", "coffee.png")]:
        (root / landmark).mkdir(parents=True)
        (root / landmark / f"{landmark}.jpg").write_bytes(encode(load_photo(photo)))
    (root / "rocket" / "notes.txt").write_text("not a photo, and not an image suffix: skipped")
    return root


def test_a_folder_imports_one_landmark_per_sub_folder(folder: Path, capsys) -> None:
    call_command("import_catalog", str(folder), catalog="city")
    catalog = Catalog.objects.get(name="city")
    names = sorted(catalog.images.values_list("landmark__name", flat=True))
    assert names == ["coffee", "rocket"]
    assert set(catalog.images.values_list("status", flat=True)) == {CatalogImage.Status.PENDING}
    assert "2 added" in capsys.readouterr().out


def test_a_zip_imports_like_a_folder(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*.jpg"):
            zf.write(path, path.relative_to(folder))
        zf.writestr("__MACOSX/rocket/._rocket.jpg", b"resource fork")
    call_command("import_catalog", str(archive), catalog="zipped")
    assert Catalog.objects.get(name="zipped").images.count() == 2


def test_a_dataset_json_imports_its_images_with_ids_and_landmarks(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(encode(load_photo("astronaut.png")))
    spec = {"name": "t", "kind": "retrieval", "images": [{"id": "img-a", "path": "images/a.jpg", "landmark": "space"}], "queries": []}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    call_command("import_catalog", str(tmp_path / "dataset.json"), catalog="ds")
    image = Catalog.objects.get(name="ds").images.get()
    assert image.external_id == "img-a" and image.landmark.name == "space"


def test_bad_files_are_reported_and_the_rest_of_the_batch_is_imported(folder: Path, capsys) -> None:
    (folder / "rocket" / "broken.jpg").write_bytes(encode(load_photo("rocket.jpg"))[:2000])
    (folder / "rocket" / "empty.png").write_bytes(b"")
    (folder / "rocket" / "tiny.png").write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    with pytest.raises(CommandError, match="3 file"):
        call_command("import_catalog", str(folder), catalog="city")
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "empty.png" in err and "tiny.png" in err
    assert Catalog.objects.get(name="city").images.count() == 2


def test_a_second_import_reports_duplicates_and_adds_nothing(folder: Path, capsys) -> None:
    call_command("import_catalog", str(folder), catalog="city")
    call_command("import_catalog", str(folder), catalog="city")
    captured = capsys.readouterr()
    assert "0 added" in captured.out and "2 already present" in captured.out
    assert "duplicate" in captured.err
    assert Catalog.objects.get(name="city").images.count() == 2


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: _write(tmp / "x.json", "{not json"), "not a dataset.json"),
        (lambda tmp: _write(tmp / "x.zip", "not a zip"), "not a valid zip"),
        (lambda tmp: _write(tmp / "x.txt", "hello"), "neither a folder"),
        (lambda tmp: (tmp / "emptydir").mkdir() or tmp / "emptydir", "no images found"),
    ],
)
def test_unusable_paths_exit_with_a_message(tmp_path: Path, make_path, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("import_catalog", str(make_path(tmp_path)), catalog="c")


def test_an_invalid_catalog_name_exits_with_a_message(folder: Path) -> None:
    with pytest.raises(CommandError, match="Invalid catalog name"):
        call_command("import_catalog", str(folder), catalog="bad name!")


def test_a_dataset_path_leaving_its_folder_is_refused(tmp_path: Path) -> None:
    spec = {"images": [{"id": "x", "path": "../outside.jpg"}]}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(CommandError, match="leaves the dataset folder"):
        call_command("import_catalog", str(tmp_path / "d" / "dataset.json"), catalog="c")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
