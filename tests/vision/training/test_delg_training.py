"""A short DELG training run on 3 landmarks x 4 photos (real photos, cropped and
rescaled), its export with the official signature, and DelgExtractor serving it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.vision.extractors.delg import DelgExtractor
from retrieval.vision.model_fetch import install, tree_sha256
from retrieval.vision.model_registry import ExtractionSettings
from retrieval.vision.training.delg_model import DelgConfig, arcface_logits
from retrieval.vision.training.trainer import TrainingSettings, export, stratified_split, train
from tests.conftest import load_photo

LANDMARKS = ("astronaut.png", "chelsea.png", "coffee.png")
MODELS_CACHE = Path(__file__).resolve().parents[3] / "var" / "models"


def labelled_photos(seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Four views of each photo: random crops of 60-100 % of each side, some darker."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for name in LANDMARKS:
        photo = load_photo(name)
        height, width = photo.shape[:2]
        for _ in range(4):
            h, w = int(height * rng.uniform(0.6, 1.0)), int(width * rng.uniform(0.6, 1.0))
            y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            view = photo[y : y + h, x : x + w].astype(np.float32) * rng.uniform(0.8, 1.0)
            images.append(view.astype(np.uint8))
            labels.append(name.split(".")[0])
    return images, labels


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The EfficientNet-Lite0 weights, copied from the shared cache when converted there."""
    directory = tmp_path_factory.mktemp("models")
    for suffix in ("weights.h5", "weights.json"):
        source = MODELS_CACHE / f"efficientnet-lite0.{suffix}"
        if source.is_file():
            shutil.copy(source, directory / source.name)
    return directory


@pytest.fixture(scope="module")
def trained(cache_dir: Path):  # noqa: ANN201
    images, labels = labelled_photos()
    settings = TrainingSettings(image_size=96, epochs=3, batch_size=4, learning_rate=3e-3, patience=3)
    return train(images, labels, config=DelgConfig(), settings=settings, cache_dir=cache_dir, progress=False)


def test_it_splits_by_label_with_a_fixed_seed() -> None:
    labels = [0] * 10 + [1] * 4 + [2]
    train_idx, val_idx = stratified_split(labels, fraction=0.2, seed=3)
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(15))
    assert [int(np.sum(np.asarray(labels)[val_idx] == k)) for k in range(3)] == [2, 1, 0]
    again = stratified_split(labels, fraction=0.2, seed=3)
    assert np.array_equal(again[1], val_idx)


def test_arcface_adds_the_margin_to_the_true_class_only() -> None:
    cosine = np.array([[0.5, 0.2]], np.float32)
    logits = arcface_logits(cosine, np.array([0]), scale=10.0, margin=0.3).numpy()
    assert logits[0, 0] == pytest.approx(10 * np.cos(np.arccos(0.5) + 0.3), rel=1e-5)
    assert logits[0, 1] == pytest.approx(2.0, rel=1e-5)


def test_training_lowers_the_loss(trained) -> None:  # noqa: ANN001
    assert trained.classes == ["astronaut", "chelsea", "coffee"]
    assert trained.train_images == 9 and trained.validation_images == 3
    assert len(trained.history) >= 1 and all(np.isfinite(r["train_loss"]) for r in trained.history)
    assert trained.final_train_loss < trained.initial_train_loss


def test_its_export_runs_in_the_delg_extractor(trained, tmp_path: Path) -> None:  # noqa: ANN001
    folder = export(trained, tmp_path / "export" / "saved_model", metadata={"catalog": "test"})
    record = json.loads((folder / "assets" / "training.json").read_text())
    assert record["classes"] == trained.classes and record["catalog"] == "test"
    settings = ExtractionSettings(
        image_size=160, image_scales=(0.7071, 1.0), global_scales_ind=(0, 1), score_threshold=0.0
    )
    model = install(
        name="tiny-trained", kind="delg", source_path=folder.parent, source="trained", sha256=tree_sha256(folder),
        cache_dir=tmp_path / "models", settings=settings,
    )  # fmt: skip
    extractor = DelgExtractor(spec="delg:tiny-trained", model=model, max_keypoints=50)
    assert (extractor.global_dim, extractor.local_dim) == (512, 128)
    features = extractor.extract(load_photo("coffee.png"))  # 600 x 400
    assert features.global_descriptor.shape == (512,)
    assert np.linalg.norm(features.global_descriptor) == pytest.approx(1.0, abs=1e-5)
    local = features.local
    assert local.descriptors.shape == (50, 128)
    assert np.allclose(np.linalg.norm(local.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(local.scores) <= 0)
    assert local.keypoints.min() >= 0 and local.keypoints[:, 0].max() < 600 and local.keypoints[:, 1].max() < 400
