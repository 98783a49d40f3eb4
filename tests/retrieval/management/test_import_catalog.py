"""import_catalog: folders, zips, dataset.json and CSV; bad files are reported, the batch goes on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from retrieval.models import Catalog, CatalogImage, ImportJob
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


def test_every_import_records_an_import_job_and_prints_its_id(folder: Path, capsys) -> None:
    (folder / "rocket" / "broken.jpg").write_bytes(b"not an image")
    (folder / "coffee" / "again.jpg").write_bytes((folder / "coffee" / "coffee.jpg").read_bytes())
    with pytest.raises(CommandError):
        call_command("import_catalog", str(folder), catalog="city")
    job = ImportJob.objects.get()
    assert f"import job {job.pk}" in capsys.readouterr().out
    assert (job.source, job.submitted, job.duplicates) == (str(folder), 4, 1)
    assert [r["name"] for r in job.refused] == ["rocket/broken.jpg"] and job.finished_at is not None
    assert sorted(job.images.values_list("original_name", flat=True)) == ["again.jpg", "rocket.jpg"]


def test_import_shows_the_storing_rate_and_time_left(folder: Path, capsys) -> None:
    call_command("import_catalog", str(folder), catalog="city")
    assert "img/s" in capsys.readouterr().err


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / "rocket.jpg").write_bytes(encode(load_photo("rocket.jpg")))
    (tmp_path / "photos" / "sub" / "coffee.png").write_bytes(encode(load_photo("coffee.png"), "PNG"))
    (tmp_path / "outside.jpg").write_bytes(encode(load_photo("astronaut.png")))
    return tmp_path / "photos"


def test_a_csv_imports_its_rows_with_landmarks_and_ids(csv_folder: Path) -> None:
    (csv_folder / "list.csv").write_text("path,landmark,external_id\nrocket.jpg,launch pad,r-1\nsub/coffee.png,cafe\n")
    call_command("import_catalog", str(csv_folder / "list.csv"), catalog="csv")
    images = Catalog.objects.get(name="csv").images.order_by("external_id")
    rows = images.values_list("external_id", "landmark__name", "original_name")
    assert list(rows) == [("coffee", "cafe", "coffee.png"), ("r-1", "launch pad", "rocket.jpg")]
    assert ImportJob.objects.get().source == str(csv_folder / "list.csv")


def test_a_csv_without_a_header_imports_its_first_row(csv_folder: Path) -> None:
    (csv_folder / "list.csv").write_text("rocket.jpg,launch pad\n")
    call_command("import_catalog", str(csv_folder / "list.csv"), catalog="csv")
    assert Catalog.objects.get(name="csv").images.get().landmark.name == "launch pad"


def test_bad_csv_rows_are_refused_with_their_row_number_and_the_good_rows_imported(
    csv_folder: Path, tmp_path: Path, capsys
) -> None:
    lines = [
        "path,landmark",
        "rocket.jpg,launch pad",  # row 2: good
        "../outside.jpg,escape",  # row 3: leaves the folder
        f"{tmp_path / 'outside.jpg'},absolute",  # row 4: absolute, outside
        "https://example.com/x.jpg,web",  # row 5: a URL
        "file:///etc/passwd,web",  # row 6: a URL too
        "missing.jpg,gone",  # row 7: no such file
        "just-one-column",  # row 8: too few columns
        f"{csv_folder / 'sub' / 'coffee.png'},cafe",  # row 9: absolute but inside: good
    ]
    (csv_folder / "list.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CommandError, match="6 file"):
        call_command("import_catalog", str(csv_folder / "list.csv"), catalog="csv")
    err = capsys.readouterr().err
    assert "row 3" in err and "leaves the CSV's folder" in err
    assert "row 4" in err and "row 5" in err and "row 6" in err and "is a URL" in err
    assert "row 7 (missing.jpg): cannot read" in err and "row 8" in err and "expected path,landmark" in err
    assert sorted(Catalog.objects.get(name="csv").images.values_list("landmark__name", flat=True)) == [
        "cafe", "launch pad",
    ]  # fmt: skip
    job = ImportJob.objects.get()
    assert job.submitted == 8 and sorted(r["name"] for r in job.refused)[0].startswith("row 3")


def test_an_empty_csv_exits_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no images found"):
        call_command("import_catalog", str(_write(tmp_path / "x.csv", "path,landmark\n")), catalog="c")


def test_heic_and_avif_files_are_imported_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "photos" / "rocket").mkdir(parents=True)
    (tmp_path / "photos" / "rocket" / "a.heic").write_bytes(encode(load_photo("rocket.jpg"), "HEIF"))
    (tmp_path / "photos" / "rocket" / "b.avif").write_bytes(encode(load_photo("coffee.png"), "AVIF"))
    call_command("import_catalog", str(tmp_path / "photos"), catalog="phone")
    names = sorted(n.rsplit(".", 1)[1] for n in Catalog.objects.get(name="phone").images.values_list("file", flat=True))
    assert names == ["avif", "heic"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.e2e
def test_wait_follows_the_import_jobs_indexing_with_its_rate(celery_worker: object, folder: Path, capsys) -> None:
    call_command("import_catalog", str(folder), catalog="city", wait=True, timeout=300)
    job = ImportJob.objects.get()
    captured = capsys.readouterr()
    assert f"indexed: 2 of 2 (import job {job.pk})" in captured.out
    assert "indexing" in captured.err and "img/s" in captured.err
