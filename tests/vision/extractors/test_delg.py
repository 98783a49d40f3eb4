"""The official DELG/DELF SavedModel extractor, on tiny models with the official signatures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.vision import model_fetch
from retrieval.vision.extractors import UnknownModelError, build_extractor, check_spec
from retrieval.vision.model_registry import ExtractionSettings, read_installed
from tests import delg_models
from tests.delg_models import BOX_HEIGHT, BOX_WIDTH, GRID
from tests.vision.extractors import extractor_config

delg = pytest.importorskip("retrieval.vision.extractors.delg")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed: delg:tiny (TF2 signature), delg:tiny-tf1 (TF1 graph), delf:tiny-delf (TF1 + PCA)."""
    build = tmp_path_factory.mktemp("build")
    cache = tmp_path_factory.mktemp("models")
    delg_models.build_delg_tf2(build / "delg")
    delg_models.build_tf1(build / "delg-tf1", with_global=True)
    delg_models.build_tf1(build / "delf" / "model", with_global=False)
    delg_models.write_pca(build / "delf" / "pca")
    for name, kind, folder in [("tiny", "delg", "delg"), ("tiny-tf1", "delg", "delg-tf1"), ("tiny-delf", "delf", "delf")]:
        model_fetch.install(
            name=name, kind=kind, source_path=build / folder, source="test", sha256="0" * 64,
            cache_dir=cache, settings=ExtractionSettings(),
        )  # fmt: skip
    return cache


@pytest.fixture(scope="session")
def tiny(cache_dir: Path) -> delg.DelgExtractor:
    return build_extractor(extractor_config("delg:tiny", cache_dir))  # type: ignore[return-value]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _grid_points(height: float, width: float) -> np.ndarray:
    """The tiny model's lattice in an image of that size, (x, y), row-major."""
    fractions = (np.arange(GRID) + 0.5) / GRID
    fy, fx = np.meshgrid(fractions, fractions, indexing="ij")
    return np.stack([fx.ravel() * width, fy.ravel() * height], axis=1)


def test_it_loads_a_tf2_export_through_its_serving_signature(tiny: delg.DelgExtractor) -> None:
    assert tiny.model.runner.mode == "signature"
    assert (tiny.global_dim, tiny.local_dim) == (2048, 128)
    assert tiny.model_name == "delg:tiny"
    assert tiny.model_version.startswith("delg1-") and "-s1024-n1000-t100-" in tiny.model_version


def test_keypoints_are_box_centres_in_original_pixels_after_the_resize(tiny: delg.DelgExtractor) -> None:
    height, width = 900, 2000  # shrunk to 461 x 1024: the two axes' factors differ slightly
    features = tiny.extract(_photo(height, width))
    resized_h, resized_w = round(height * 1024 / width), 1024
    expected = _grid_points(resized_h, resized_w) / [resized_w / width, resized_h / height]
    k = 50 + 10 * np.arange(GRID * GRID)
    order = np.argsort(-k)[: len(features.local)]
    assert len(features.local) == np.count_nonzero(k >= 100)  # the default score threshold
    np.testing.assert_allclose(features.local.keypoints, expected[order], rtol=1e-5)
    assert features.local.keypoints[:, 0].max() > 1800 > features.local.keypoints[:, 1].max()  # (x, y), not (y, x)
    sizes = (BOX_HEIGHT * height / resized_h + BOX_WIDTH * width / resized_w) / 2
    np.testing.assert_allclose(features.local.scales, sizes, rtol=1e-5)


def test_a_small_photo_is_not_resized(tiny: delg.DelgExtractor) -> None:
    features = tiny.extract(_photo(300, 400))
    order = np.argsort(-(50 + 10 * np.arange(GRID * GRID)))[: len(features.local)]
    np.testing.assert_allclose(features.local.keypoints, _grid_points(300, 400)[order], rtol=1e-6)


def test_descriptors_are_normalised_like_the_official_pipeline(tiny: delg.DelgExtractor) -> None:
    photo = _photo(240, 320, seed=3)
    raw = tiny.model.runner(
        photo, image_scales=delg_models_scales(), max_feature_num=1000, score_threshold=100.0, global_scales_ind=(3, 4, 5)
    )
    assert raw.global_descriptors.shape == (3, 2048) and raw.features.shape[1] == 128
    features = tiny.extract(photo)
    np.testing.assert_allclose(np.linalg.norm(features.local.descriptors, axis=1), 1.0, atol=1e-5)
    order = np.argsort(-raw.scores, kind="stable")
    expected_local = raw.features[order] / np.linalg.norm(raw.features[order], axis=1, keepdims=True)
    np.testing.assert_allclose(features.local.descriptors, expected_local, atol=1e-5)
    per_scale = raw.global_descriptors / np.linalg.norm(raw.global_descriptors, axis=1, keepdims=True)
    expected_global = per_scale.sum(axis=0) / np.linalg.norm(per_scale.sum(axis=0))
    assert features.global_descriptor.dtype == np.float32
    np.testing.assert_allclose(features.global_descriptor, expected_global, atol=1e-6)
    # Not the plain normalised sum of the raw rows: each scale counts once.
    plain = raw.global_descriptors.sum(axis=0) / np.linalg.norm(raw.global_descriptors.sum(axis=0))
    assert not np.allclose(features.global_descriptor, plain, atol=1e-3)


def delg_models_scales() -> tuple[float, ...]:
    return ExtractionSettings().image_scales


def test_the_score_threshold_and_keypoint_limit_reach_the_model(cache_dir: Path) -> None:
    model = read_installed(cache_dir, "tiny", kind="delg")
    strict = dataclasses.replace(model, settings=ExtractionSettings(score_threshold=300.0))
    extractor = delg.DelgExtractor(spec="delg:tiny", model=strict, max_keypoints=5)
    features = extractor.extract(_photo(200, 200))
    np.testing.assert_array_equal(features.local.scores, [400, 390, 380, 370, 360])
    assert extractor.model_version != build_extractor(extractor_config("delg:tiny", cache_dir)).model_version
    assert "-n5-t300-" in extractor.model_version


def test_a_tf1_export_is_pruned_by_tensor_names(cache_dir: Path) -> None:
    extractor = build_extractor(extractor_config("delg:tiny-tf1", cache_dir, max_keypoints=10))
    assert extractor.model.runner.mode == "graph"  # type: ignore[attr-defined]
    assert (extractor.global_dim, extractor.local_dim) == (32, delg_models.RAW_DELF_DIM)
    features = extractor.extract(_photo(500, 700))
    assert len(features.local) == 10 and features.global_descriptor.shape == (32,)
    assert np.linalg.norm(features.global_descriptor) == pytest.approx(1.0, abs=1e-5)
    order = np.argsort(-(50 + 10 * np.arange(GRID * GRID)))[:10]
    np.testing.assert_allclose(features.local.keypoints, _grid_points(500, 700)[order], rtol=1e-5)


def test_delf_local_features_get_the_installed_pca(cache_dir: Path, tmp_path: Path) -> None:
    model = read_installed(cache_dir, "tiny-delf", kind="delf")
    local = delg.DelfLocal(model=model, max_features=1000)
    assert local.dim == 40 and local.model.runner.mode == "graph"
    photo = _photo(256, 256, seed=5)
    features = local.extract_local(photo)
    arrays = delg_models.write_pca(tmp_path / "pca")  # the same seed: the same PCA
    raw = local.model.runner(
        photo, image_scales=delg_models_scales(), max_feature_num=1000, score_threshold=100.0, global_scales_ind=()
    )
    order = np.argsort(-raw.scores, kind="stable")
    normalised = raw.features[order] / np.linalg.norm(raw.features[order], axis=1, keepdims=True)
    projected = (normalised - arrays["mean"]) @ arrays["matrix"][:40].T
    expected = projected / np.linalg.norm(projected, axis=1, keepdims=True)
    np.testing.assert_allclose(features.descriptors, expected, atol=1e-5)
    assert "delf1-" in local.config_tag


def test_a_delf_spec_pairs_delf_local_features_with_a_global_extractor(cache_dir: Path, monkeypatch) -> None:
    from retrieval.vision.extractors import efficientnet_lite

    class FakeGlobal:
        version = "fake"

        def __init__(self, **kwargs: object) -> None:
            self.variant = kwargs["variant"]

        dim = 4

        def extract_global(self, image: np.ndarray) -> np.ndarray:
            return np.array([1, 0, 0, 0], np.float32)

    monkeypatch.setattr(efficientnet_lite, "EfficientNetLiteGeM", FakeGlobal)
    extractor = build_extractor(extractor_config("delf:tiny-delf", cache_dir))
    assert extractor.global_extractor.variant == "lite2"  # type: ignore[attr-defined]
    assert extractor.local_dim == 40 and extractor.model_version.startswith("fake+delf1-")
    other = build_extractor(extractor_config("effnet-lite0-gem+delf:tiny-delf", cache_dir))
    assert other.global_extractor.variant == "lite0"  # type: ignore[attr-defined]
    assert len(other.extract(_photo(100, 120)).local) > 0


def test_check_spec_accepts_installed_models_only(cache_dir: Path) -> None:
    check_spec("delg:tiny", cache_dir=cache_dir)
    check_spec("delf:tiny-delf", cache_dir=cache_dir)
    check_spec("effnet-lite0-gem+delf:tiny-delf", cache_dir=cache_dir)
    check_spec("effnet-lite0-gem+rootsift")
    for spec, message in [
        ("delg:tiny", "need the model directory"),
        ("delg:missing", "not installed"),
        ("delf:tiny", "is a delg model"),
        ("delg:../etc", "invalid model name"),
        ("resnet9000+delf:tiny-delf", "global part"),
        ("delg", "unknown extractor"),
    ]:
        with pytest.raises(UnknownModelError, match=message):
            check_spec(spec, cache_dir=None if message.startswith("need") else cache_dir)


def test_a_model_without_the_official_tensors_is_refused(cache_dir: Path) -> None:
    # The DELF graph has no input_global_scales_ind / global_descriptors: not a DELG model.
    with pytest.raises(delg.ModelFormatError, match="not an official DELG graph"):
        delg.SavedModelRunner(read_installed(cache_dir, "tiny-delf").saved_model_dir, with_global=True)


def test_a_photo_too_small_after_resizing_is_refused(tiny: delg.DelgExtractor) -> None:
    with pytest.raises(ValueError, match="too small"):
        tiny.extract(_photo(4000, 30))  # 1024 x 8 after resizing


def test_datum_files_and_npz_pca_are_read(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    delg_models.write_datum(tmp_path / "a.datum", array)
    np.testing.assert_array_equal(delg.read_datum(tmp_path / "a.datum"), array)
    np.savez(tmp_path / "pca.npz", mean=np.zeros(4), matrix=np.eye(4), variances=np.ones(4) * 4)
    pca = delg.load_pca(tmp_path, ExtractionSettings(pca_dim=2, use_whitening=True))
    assert pca is not None and pca.dim == 2
    np.testing.assert_allclose(pca.apply(np.array([[0.6, 0.8, 0, 0]], np.float32)), [[0.6, 0.8]], atol=1e-6)
    assert delg.load_pca(tmp_path / "none", ExtractionSettings()) is None


def test_settings_in_model_json_are_used(cache_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(cache_dir / "installed" / "tiny", copy / "installed" / "tiny")
    record = json.loads((copy / "installed" / "tiny" / "model.json").read_text())
    record["settings"]["image_size"] = 256
    (copy / "installed" / "tiny" / "model.json").write_text(json.dumps(record))
    extractor = build_extractor(extractor_config("delg:tiny", copy))
    assert "-s256-" in extractor.model_version
    points = extractor.extract(_photo(512, 512)).local.keypoints
    np.testing.assert_allclose(points.max(axis=0), _grid_points(512, 512).max(axis=0), rtol=1e-5)
