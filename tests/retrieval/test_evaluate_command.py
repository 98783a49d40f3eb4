"""``manage.py evaluate`` on a tiny dataset built from real photos (scikit-image's).

Two landmarks of two views each plus two unlabelled distractors make the catalog; the
queries are perspective-warped, rescaled, re-encoded copies. The pairs are photos against
warped copies whose correspondences follow from the known warp.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from retrieval import services
from retrieval.extraction import min_inliers
from retrieval.models import Catalog, CatalogImage, ImageDescriptor, Landmark, SearchQuery
from retrieval.services import augmentation, queueing
from tests.conftest import encode, load_photo

BASE_DIR = Path(__file__).resolve().parents[2]


def _warp(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A perspective-warped copy enlarged 1.3x, and the (3, 3) map from photo to copy."""
    height, width = photo.shape[:2]
    src = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    dst = np.float32([[30, 20], [width - 10, 45], [width - 35, height - 5], [5, height - 30]])
    perspective = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(photo, perspective, (width, height))
    return cv2.resize(warped, (int(width * 1.3), int(height * 1.3))), np.diag([1.3, 1.3, 1.0]) @ perspective


def _write(folder: Path, relative: str, image: np.ndarray) -> str:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image, quality=90))
    return relative


def _correspondences(photo: np.ndarray, homography: np.ndarray) -> list[list[float]]:
    height, width = photo.shape[:2]
    xs, ys = np.meshgrid(np.linspace(0.2, 0.8, 4) * width, np.linspace(0.2, 0.8, 4) * height)
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    mapped = cv2.perspectiveTransform(points[None], homography)[0]
    return np.concatenate([points, mapped], axis=1).round(2).tolist()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    astronaut, coffee = load_photo("astronaut.png"), load_photo("coffee.png")
    images = [
        ("astronaut_1", _write(folder, "images/astronaut_1.jpg", astronaut), "astronaut"),
        ("astronaut_2", _write(folder, "images/astronaut_2.jpg", cv2.resize(astronaut[60:480, 40:460], (504, 504))), "astronaut"),
        ("coffee_1", _write(folder, "images/coffee_1.jpg", coffee), "coffee"),
        ("coffee_2", _write(folder, "images/coffee_2.jpg", coffee[30:380, 80:560]), "coffee"),
        ("chelsea", _write(folder, "images/chelsea.jpg", load_photo("chelsea.png")), None),
        ("rocket", _write(folder, "images/rocket.jpg", load_photo("rocket.jpg")), None),
    ]  # fmt: skip
    queries = [
        {"id": "q_astronaut", "path": _write(folder, "queries/q_astronaut.jpg", _warp(astronaut)[0]),
         "landmark": "astronaut", "bbox": None, "positives": ["astronaut_1", "astronaut_2"], "junk": []},
        {"id": "q_coffee", "path": _write(folder, "queries/q_coffee.jpg", _warp(coffee)[0]),
         "landmark": "coffee", "bbox": [20, 20, 760, 500], "positives": ["coffee_1", "coffee_2"], "junk": ["rocket"]},
    ]  # fmt: skip
    spec = {
        "name": "tiny",
        "kind": "retrieval",
        "source": "scikit-image sample photos",
        "images": [{"id": i, "path": p, "landmark": lm} for i, p, lm in images],
        "queries": queries,
    }
    (folder / "dataset.json").write_text(json.dumps(spec))
    pairs = []
    for name in ("chelsea.png", "motorcycle_left.png", "coffee.png"):
        photo = load_photo(name)
        warped, homography = _warp(photo)
        stem = name.split(".")[0]
        pairs.append(
            {
                "id": stem,
                "image1": _write(folder, f"pairs/{stem}_1.jpg", photo),
                "image2": _write(folder, f"pairs/{stem}_2.jpg", warped),
                "correspondences": _correspondences(photo, homography),
            }
        )
    (folder / "pairs.json").write_text(json.dumps({"name": "tiny-pairs", "kind": "pairs", "pairs": pairs}))
    return folder


def _media_files() -> set[Path]:
    return {p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()}


def _refuse_enqueue(task: object, object_id: int, **kwargs: object) -> None:
    raise AssertionError(f"evaluate sent {task}({object_id}) to the broker")


@pytest.mark.django_db
def test_it_scores_both_rankings_and_pairs_and_deletes_the_catalog(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(queueing, "enqueue", _refuse_enqueue)
    media_before = _media_files()
    out = tmp_path / "out"
    call_command(
        "evaluate", str(tiny_dataset), "--no-progress", "--ransac-seeds", "2",
        json=str(out / "tiny.json"), markdown=str(out / "tiny.md"), plots=str(out / "plots"),
    )  # fmt: skip

    report = json.loads((out / "tiny.json").read_text())
    expected = {"dataset", "queries", "global", "verified", "recognition", "pairs", "timings_ms", "model", "settings"}
    assert expected <= set(report)
    assert report["dataset"] == "tiny" and report["queries"] == 2
    assert report["indexed_images"] == 6 and not report["failed_images"] and not report["failed_queries"]
    assert report["model"].startswith(settings.LANDMARKS_EXTRACTOR + "@")
    for ranking in ("global", "shortlist", "verified"):
        assert set(report[ranking]) == {"mAP", "mP@1", "mP@5", "mP@10", "recall@1", "recall@5", "recall@10"}
        assert all(0.0 <= value <= 1.0 for value in report[ranking].values())
    assert report["verified"]["recall@1"] == 1.0
    assert report["verified"]["mAP"] == 1.0  # both views of each landmark verified, ahead of the rest
    assert report["recognition"]["accuracy"] == 1.0 and report["recognition"]["GAP"] == 1.0
    assert [q["recognised"] for q in report["per_query"]] == ["astronaut", "coffee"]
    assert report["verification"]["auc"] == 1.0

    pairs = report["pairs"]
    assert pairs["true_pairs"] == 3 and pairs["false_pairs"] == 6
    assert pairs["auc"] == 1.0
    assert pairs["ransac_seeds"] == 2 and pairs["auc_by_seed"] == [1.0, 1.0]
    threshold = min_inliers(settings.LANDMARKS_EXTRACTOR)
    assert pairs["true_median_inliers"] >= 30 > threshold > pairs["false_median_inliers"]
    assert pairs["transfer_error_median_px"] < 5.0
    assert {"index", "augment", "extract", "shortlist", "verify", "total", "pair_verify"} <= set(report["timings_ms"])

    markdown = (out / "tiny.md").read_text()
    assert "# Evaluation: tiny" in markdown and "| verified | 100.0 |" in markdown and "## Pairs" in markdown
    assert {p.name for p in (out / "plots").iterdir()} == {
        "precision_recall.png", "candidate_inliers.png", "pair_inliers.png",
    }  # fmt: skip
    assert "verified" in capsys.readouterr().out

    assert not Catalog.objects.exists()
    assert not (CatalogImage.objects.exists() or ImageDescriptor.objects.exists() or SearchQuery.objects.exists())
    assert not Landmark.objects.exists()
    assert _media_files() == media_before


@pytest.mark.django_db
def test_it_deletes_the_catalog_and_its_files_when_interrupted(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queueing, "enqueue", _refuse_enqueue)
    media_before = _media_files()
    index = services.image_index
    calls: list[int] = []

    def index_then_interrupt(*, image_id: int) -> object:
        calls.append(image_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return index(image_id=image_id)

    monkeypatch.setattr(services, "image_index", index_then_interrupt)
    with pytest.raises(CommandError, match="interrupted"):
        call_command("evaluate", str(tiny_dataset), "--no-progress")
    assert len(calls) == 2
    assert not Catalog.objects.exists() and not CatalogImage.objects.exists()
    assert not ImageDescriptor.objects.exists()
    assert _media_files() == media_before


def _retrieval_spec(folder: Path, **changes: object) -> dict[str, object]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / "a.jpg").write_bytes(b"not read")
    spec: dict[str, object] = {
        "name": "broken",
        "kind": "retrieval",
        "images": [{"id": "a", "path": "images/a.jpg"}],
        "queries": [{"id": "q", "path": "images/a.jpg", "positives": ["a"], "junk": []}],
    }
    spec.update(changes)
    return spec


def _unknown_positive(folder: Path) -> None:
    spec = _retrieval_spec(folder, queries=[{"id": "q", "path": "images/a.jpg", "positives": ["a", "zz"]}])
    (folder / "dataset.json").write_text(json.dumps(spec))


def _missing_image(folder: Path) -> None:
    spec = _retrieval_spec(folder, images=[{"id": "a", "path": "images/missing.jpg"}])
    (folder / "dataset.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder.rmdir(), "dataset folder does not exist"),
        (lambda folder: None, "no dataset.json or pairs.json"),
        (lambda folder: (folder / "dataset.json").write_text('{"name": "x", "kind": '), "invalid JSON"),
        (lambda folder: (folder / "pairs.json").write_text('{"name": "x", "kind": "pairs", "pairs": {}}'), "pairs"),
        (_unknown_positive, "unknown catalog ids: zz"),
        (_missing_image, "image file 'images/missing.jpg' does not exist"),
    ],
    ids=["missing-folder", "no-json", "malformed-json", "pairs-not-a-list", "unknown-positive", "missing-image"],
)
def test_it_refuses_a_bad_dataset_with_a_clear_message(tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "dataset"
    folder.mkdir()
    make(folder)
    with pytest.raises(CommandError, match=message):
        call_command("evaluate", str(folder), "--no-progress")


def test_it_refuses_fewer_than_one_ransac_seed(tiny_dataset: Path) -> None:
    with pytest.raises(CommandError, match="--ransac-seeds must be at least 1"):
        call_command("evaluate", str(tiny_dataset), "--no-progress", "--ransac-seeds", "0")


def test_it_exits_non_zero_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "evaluate", str(tmp_path / "nowhere")],
        cwd=BASE_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "CommandError" in result.stderr and "dataset folder does not exist" in result.stderr


def _pairs_only(tiny_dataset: Path, folder: Path, places: dict[str, str] | None = None) -> Path:
    """The tiny pair set alone (no retrieval set), optionally with ``place`` fields."""
    spec = json.loads((tiny_dataset / "pairs.json").read_text())
    for pair in spec["pairs"]:
        if places and pair["id"] in places:
            pair["place"] = places[pair["id"]]
    shutil.copytree(tiny_dataset / "pairs", folder / "pairs")
    (folder / "pairs.json").write_text(json.dumps(spec))
    return folder


@pytest.mark.parametrize("given", ["file", "option"])
def test_pairs_of_one_place_are_never_mismatched(tiny_dataset: Path, tmp_path: Path, given: str) -> None:
    from retrieval.evaluation import evaluate
    from retrieval.vision.datasets import load_pair_dataset

    if given == "file":
        folder = _pairs_only(tiny_dataset, tmp_path / "pairs", {"chelsea": "p", "coffee": "p"})
        result = evaluate(None, load_pair_dataset(folder), progress=False)
    else:
        folder = _pairs_only(tiny_dataset, tmp_path / "pairs")
        pairs = load_pair_dataset(folder)
        result = evaluate(None, pairs, same_place=[["chelsea", "coffee"]], progress=False)
    report = result.summary["pairs"]
    assert report["true_pairs"] == 3
    assert report["false_pairs"] == 4 and report["same_place_skipped"] == 2  # chelsea x coffee, both ways
    assert report["per_pair"][0]["max_false_inliers"] is not None  # chelsea still meets motorcycle


def test_it_refuses_an_unknown_pair_in_a_same_place_group(tiny_dataset: Path) -> None:
    with pytest.raises(CommandError, match="unknown pair ids: nope"):
        call_command("evaluate", str(tiny_dataset), "--no-progress", "--same-place", "chelsea,nope")


@pytest.mark.django_db
def test_augmenting_as_the_catalog_grows_gives_the_rankings_of_one_augmentation(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queueing, "enqueue", _refuse_enqueue)
    monkeypatch.setattr(queueing, "send", _refuse_enqueue)  # no DBA refresh goes to a worker either
    monkeypatch.setattr(augmentation, "INCREMENTAL_MAX_SHARE", 1.0)  # every run after the first: incremental
    calls = []
    incremental = augmentation.descriptors_augment_incremental
    monkeypatch.setattr(
        augmentation, "descriptors_augment_incremental", lambda **kw: calls.append(kw) or incremental(**kw)
    )
    reports = {}
    for every in (0, 2):
        path = tmp_path / f"every-{every}.json"
        call_command("evaluate", str(tiny_dataset), "--no-progress", "--augment-every", str(every), json=str(path))
        reports[every] = json.loads(path.read_text())
    assert reports[2]["settings"]["augment_every"] == 2
    assert len(calls) == 2  # after images 4 and 6 (the first run, after image 2, is a full one)
    for ranking in ("shortlist", "verified"):
        assert reports[2][ranking] == reports[0][ranking]


def test_it_refuses_a_negative_augmentation_step(tiny_dataset: Path) -> None:
    with pytest.raises(CommandError, match="--augment-every"):
        call_command("evaluate", str(tiny_dataset), "--no-progress", "--augment-every", "-1")
