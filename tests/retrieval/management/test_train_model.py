"""train_model: its error exits, and one tiny real run that installs and selects the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from retrieval.models import Catalog, CatalogImage, ReindexJob
from tests.conftest import encode
from tests.factories import CatalogFactory, CatalogImageFactory, LandmarkFactory
from tests.vision.training.test_delg_training import MODELS_CACHE, labelled_photos

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(settings, tmp_path: Path) -> Path:
    settings.MODEL_DIR = tmp_path / "models"
    settings.MODEL_DIR.mkdir()
    for suffix in ("weights.h5", "weights.json"):
        source = MODELS_CACHE / f"efficientnet-lite0.{suffix}"
        if source.is_file():
            shutil.copy(source, settings.MODEL_DIR / source.name)
    return settings.MODEL_DIR


def _catalog(per_landmark: dict[str, int], *, name: str = "paris") -> Catalog:
    catalog = CatalogFactory(name=name)
    images, labels = labelled_photos()
    for landmark_name, count in per_landmark.items():
        landmark = LandmarkFactory(catalog=catalog, name=landmark_name)
        views = [image for image, label in zip(images, labels, strict=True) if label == landmark_name][:count]
        for i, view in enumerate(views):
            CatalogImageFactory(
                catalog=catalog, landmark=landmark, status=CatalogImage.Status.PENDING,
                file=ContentFile(encode(view), name=f"{landmark_name}-{i}.jpg"),
            )  # fmt: skip
    return catalog


def test_it_refuses_an_unknown_catalog(models: Path) -> None:
    with pytest.raises(CommandError, match="no catalog named 'nowhere'"):
        call_command("train_model", "--catalog", "nowhere")


def test_it_needs_two_landmarks(models: Path) -> None:
    _catalog({"astronaut": 4})
    with pytest.raises(CommandError, match="1 landmark.*at least 2"):
        call_command("train_model", "--catalog", "paris")


def test_it_needs_enough_photos_per_landmark(models: Path) -> None:
    _catalog({"astronaut": 3, "chelsea": 1})
    with pytest.raises(CommandError, match="too few labelled photos"):
        call_command("train_model", "--catalog", "paris")


def test_resnet50_needs_a_weights_file(models: Path) -> None:
    _catalog({"astronaut": 2, "chelsea": 2})
    with pytest.raises(CommandError, match="--backbone-weights"):
        call_command("train_model", "--catalog", "paris", "--backbone", "resnet50")


def test_it_trains_installs_and_selects_the_model(models: Path) -> None:
    catalog = _catalog({"astronaut": 3, "chelsea": 3, "coffee": 3})
    args = ["--catalog", "paris", "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--serving-size", "128"]
    call_command("train_model", *args, "--select", "--no-wait", verbosity=0)
    record = json.loads((models / "installed" / "paris-lite0" / "model.json").read_text())
    assert record["kind"] == "delg" and record["source"].startswith("trained:catalog=paris")
    assert record["settings"]["image_size"] == 128 and record["settings"]["global_scales_ind"] == [0, 1, 2]
    assets = models / "installed" / "paris-lite0" / "saved_model" / "assets"
    training = json.loads((assets / "training.json").read_text())
    assert training["classes"] == ["astronaut", "chelsea", "coffee"] and len(training["history"]) == 1
    catalog.refresh_from_db()
    assert catalog.extractor_spec == "delg:paris-lite0"
    assert ReindexJob.objects.filter(catalog=catalog).exists()
    with pytest.raises(CommandError, match="already installed"):
        call_command("train_model", *args, verbosity=0)


def test_it_trains_on_a_resnet50_backbone_from_a_user_weights_file(models: Path, tmp_path: Path) -> None:
    import keras

    weights = tmp_path / "resnet50_notop.weights.h5"  # stands for the user's downloaded file
    keras.applications.ResNet50(include_top=False, weights=None).save_weights(str(weights))
    _catalog({"astronaut": 2, "chelsea": 2})
    args = ["--catalog", "paris", "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--serving-size", "96"]
    call_command("train_model", *args, "--backbone", "resnet50", "--backbone-weights", str(weights), "--name", "r50", verbosity=0)
    record = json.loads((models / "installed" / "r50" / "model.json").read_text())
    assert record["kind"] == "delg"
    training = json.loads((models / "installed" / "r50" / "saved_model" / "assets" / "training.json").read_text())
    assert training["classes"] == ["astronaut", "chelsea"]
