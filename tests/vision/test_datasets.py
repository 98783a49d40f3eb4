"""Tests of ``retrieval.vision.datasets``: loading and validating evaluation datasets.

Plain pytest, no Django: run with ``pytest tests/vision/test_datasets.py -p no:django``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from retrieval.vision.datasets import (
    DatasetError,
    DatasetImage,
    ImagePair,
    load_pair_dataset,
    load_retrieval_dataset,
    mismatched_pairs,
    same_place_groups,
)
from retrieval.vision.metrics import retrieval_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]


def _datasets_dir() -> Path:
    override = os.environ.get("LANDMARKS_DATASETS_DIR")
    return Path(override) if override else REPO_ROOT / ".." / "shared" / "datasets"


# --- pairs ------------------------------------------------------------------------------------


def test_mismatched_pairs_pair_each_image1_with_the_next_image2() -> None:
    pairs = [
        ImagePair(f"p{i}", Path(f"{i}_1"), Path(f"{i}_2"), np.zeros((0, 4)), None) for i in range(3)
    ]
    assert mismatched_pairs(pairs) == [
        (Path("0_1"), Path("1_2")),
        (Path("1_1"), Path("2_2")),
        (Path("2_1"), Path("0_2")),
    ]
    assert mismatched_pairs(pairs[:1]) == []


def test_same_place_groups_join_pairs_that_share_an_image_file() -> None:
    groups = same_place_groups([{"a", "b"}, {"c", "d"}, {"e", "a"}, {"f", "g"}, {"g", "h"}])
    assert groups[0] == groups[2] and groups[3] == groups[4]
    assert len({groups[0], groups[1], groups[3]}) == 3


# --- dataset loading: fixtures ------------------------------------------------------------


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[2:6, 2:6] = (200, 40, 40)
    Image.fromarray(pixels).save(path)


def _write_json(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data) if not isinstance(data, str) else data)


@pytest.fixture
def retrieval_folder(tmp_path: Path) -> Path:
    """A valid 3-image, 2-query retrieval dataset with real PNG files."""
    for name in ("images/a.png", "images/b.png", "images/c.png", "q/q1.png", "q/q2.png"):
        _png(tmp_path / name)
    _write_json(tmp_path, "dataset.json", _retrieval_data())
    return tmp_path


def _retrieval_data() -> dict[str, Any]:
    return {
        "name": "tiny",
        "kind": "retrieval",
        "source": "tests",
        "images": [
            {"id": "a", "path": "images/a.png", "landmark": "tower"},
            {"id": "b", "path": "images/b.png", "landmark": "tower"},
            {"id": "c", "path": "images/c.png"},
        ],
        "queries": [
            {
                "id": "q1",
                "path": "q/q1.png",
                "landmark": "tower",
                "bbox": [1, 2, 5, 6],
                "positives": ["a"],
                "junk": ["b"],
            },
            {"id": "q2", "path": "q/q2.png", "bbox": None, "positives": ["c"]},
        ],
    }


def _rewrite(folder: Path, change: Any) -> None:
    data = _retrieval_data()
    change(data)
    _write_json(folder, "dataset.json", data)


@pytest.fixture
def pairs_folder(tmp_path: Path) -> Path:
    """A valid 2-pair dataset with real PNG files."""
    for name in ("images/x1.png", "images/x2.png", "images/y1.png", "images/y2.png"):
        _png(tmp_path / name)
    _write_json(tmp_path, "pairs.json", _pairs_data())
    return tmp_path


def _pairs_data() -> dict[str, Any]:
    return {
        "name": "tinypairs",
        "kind": "pairs",
        "pairs": [
            {
                "id": "x",
                "subset": "S",
                "image1": "images/x1.png",
                "image2": "images/x2.png",
                "correspondences": [[1, 2, 3, 4], [5.5, 6, 7, 8]],
            },
            {
                "id": "y",
                "image1": "images/y1.png",
                "image2": "images/y2.png",
                "correspondences": [],
            },
        ],
    }


def _rewrite_pairs(folder: Path, change: Any) -> None:
    data = _pairs_data()
    change(data)
    _write_json(folder, "pairs.json", data)


# --- dataset loading: valid files -----------------------------------------------------------


def test_load_retrieval_dataset_reads_a_valid_folder(retrieval_folder: Path) -> None:
    ds = load_retrieval_dataset(retrieval_folder)
    assert (ds.name, ds.source) == ("tiny", "tests")
    assert [i.id for i in ds.images] == ["a", "b", "c"]
    assert all(isinstance(i, DatasetImage) for i in ds.images)
    assert all(i.path.is_absolute() and i.path.is_file() for i in ds.images)
    assert ds.images[2].landmark is None
    q1, q2 = ds.queries
    assert q1.bbox == (1.0, 2.0, 5.0, 6.0)
    assert q1.positives == frozenset({"a"}) and q1.junk == frozenset({"b"})
    assert q2.bbox is None and q2.junk == frozenset() and q2.landmark is None
    assert q1.path == retrieval_folder.absolute() / "q" / "q1.png"
    assert ds.landmark_of() == {"a": "tower", "b": "tower", "c": None}


def test_loaded_queries_feed_retrieval_metrics(retrieval_folder: Path) -> None:
    ds = load_retrieval_dataset(retrieval_folder)
    rankings = {"q1": ["b", "a", "c"], "q2": ["c", "a", "b"]}
    assert retrieval_metrics(rankings, ds.queries)["mAP"] == 1.0


def test_load_retrieval_dataset_skips_file_checks_when_asked(retrieval_folder: Path) -> None:
    (retrieval_folder / "images" / "a.png").unlink()
    assert len(load_retrieval_dataset(retrieval_folder, check_files=False).images) == 3


def test_load_pair_dataset_reads_a_valid_folder(pairs_folder: Path) -> None:
    ds = load_pair_dataset(pairs_folder)
    assert ds.name == "tinypairs"
    x, y = ds.pairs
    assert x.subset == "S" and y.subset is None
    assert x.correspondences.dtype == np.float64
    np.testing.assert_array_equal(x.correspondences, [[1, 2, 3, 4], [5.5, 6, 7, 8]])
    assert y.correspondences.shape == (0, 4)
    assert x.image1.is_file() and y.image2.is_file()


# --- dataset loading: errors ----------------------------------------------------------------


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_load_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_retrieval_dataset(tmp_path / "nope")


def test_load_rejects_a_missing_dataset_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing dataset.json"):
        load_retrieval_dataset(tmp_path)


def test_load_retrieval_dataset_hints_at_a_pair_dataset(pairs_folder: Path) -> None:
    with pytest.raises(DatasetError, match="it has pairs.json"):
        load_retrieval_dataset(pairs_folder)


def test_load_rejects_invalid_json(retrieval_folder: Path) -> None:
    _write_json(retrieval_folder, "dataset.json", '{"name": "tiny", ')
    with pytest.raises(DatasetError, match="invalid JSON"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_non_object_top_level(retrieval_folder: Path) -> None:
    _write_json(retrieval_folder, "dataset.json", [1, 2])
    with pytest.raises(DatasetError, match="expected an object"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_the_wrong_kind(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d.update(kind="pairs"))
    with pytest.raises(DatasetError, match="kind must be 'retrieval', got 'pairs'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_missing_top_level_key(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d.pop("queries"))
    with pytest.raises(DatasetError, match="missing key 'queries'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_query_without_positives_key(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][1].pop("positives"))
    with pytest.raises(DatasetError, match=r"queries\[1\] \(q2\): missing key 'positives'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_an_empty_catalog(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d.update(images=[]))
    with pytest.raises(DatasetError, match="images: is empty"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_non_string_id(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["images"][0].update(id=7))
    with pytest.raises(DatasetError, match=r"images\[0\]\.id: expected a non-empty string"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_duplicate_catalog_ids(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["images"][2].update(id="a"))
    with pytest.raises(DatasetError, match=r"images\[2\]: duplicate id 'a'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_duplicate_query_ids(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][1].update(id="q1"))
    with pytest.raises(DatasetError, match=r"queries\[1\]: duplicate id 'q1'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_positives_naming_unknown_catalog_ids(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(positives=["a", "zz"]))
    with pytest.raises(DatasetError, match=r"positives: 1 unknown catalog ids: zz"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_junk_naming_unknown_catalog_ids(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(junk=["ghost"]))
    with pytest.raises(DatasetError, match=r"junk: 1 unknown catalog ids: ghost"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_ids_both_positive_and_junk(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(junk=["a"]))
    with pytest.raises(DatasetError, match="both positive and junk: a"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_repeated_positives(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(positives=["a", "a"]))
    with pytest.raises(DatasetError, match="more than once"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_missing_catalog_image_file(retrieval_folder: Path) -> None:
    (retrieval_folder / "images" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"images\[1\]\.path: image file 'images/b.png'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_missing_query_image_file(retrieval_folder: Path) -> None:
    (retrieval_folder / "q" / "q2.png").unlink()
    with pytest.raises(DatasetError, match="image file 'q/q2.png' does not exist"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_path_escaping_the_folder(retrieval_folder: Path) -> None:
    _png(retrieval_folder.parent / "outside.png")
    _rewrite(retrieval_folder, lambda d: d["images"][0].update(path="../outside.png"))
    with pytest.raises(DatasetError, match="must stay inside the dataset folder"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_an_absolute_path(retrieval_folder: Path) -> None:
    absolute = str(retrieval_folder / "images" / "a.png")
    _rewrite(retrieval_folder, lambda d: d["images"][0].update(path=absolute))
    with pytest.raises(DatasetError, match="must stay inside the dataset folder"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_bbox_without_four_numbers(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(bbox=[1, 2, 3]))
    with pytest.raises(DatasetError, match=r"bbox: expected \[x1, y1, x2, y2\], got 3"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_bbox_with_non_numbers(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(bbox=[1, "2", 3, 4]))
    with pytest.raises(DatasetError, match="bbox: expected finite numbers, got '2'"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_bbox_with_booleans(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(bbox=[0, 0, True, 4]))
    with pytest.raises(DatasetError, match="finite numbers, got True"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_an_inverted_bbox(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(bbox=[5, 2, 1, 6]))
    with pytest.raises(DatasetError, match="x1 < x2 and y1 < y2"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_an_empty_bbox(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["queries"][0].update(bbox=[1, 2, 5, 2]))
    with pytest.raises(DatasetError, match="x1 < x2 and y1 < y2"):
        load_retrieval_dataset(retrieval_folder)


def test_load_rejects_a_non_string_landmark(retrieval_folder: Path) -> None:
    _rewrite(retrieval_folder, lambda d: d["images"][0].update(landmark=3))
    with pytest.raises(DatasetError, match=r"images\[0\]\.landmark"):
        load_retrieval_dataset(retrieval_folder)


def test_load_pair_dataset_rejects_the_wrong_kind(pairs_folder: Path) -> None:
    _rewrite_pairs(pairs_folder, lambda d: d.update(kind="retrieval"))
    with pytest.raises(DatasetError, match="kind must be 'pairs'"):
        load_pair_dataset(pairs_folder)


def test_load_pair_dataset_rejects_a_missing_pairs_file(retrieval_folder: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing pairs.json \(it has dataset.json"):
        load_pair_dataset(retrieval_folder)


def test_load_pair_dataset_rejects_duplicate_pair_ids(pairs_folder: Path) -> None:
    _rewrite_pairs(pairs_folder, lambda d: d["pairs"][1].update(id="x"))
    with pytest.raises(DatasetError, match="duplicate id 'x'"):
        load_pair_dataset(pairs_folder)


def test_load_pair_dataset_rejects_a_missing_image_file(pairs_folder: Path) -> None:
    (pairs_folder / "images" / "y2.png").unlink()
    with pytest.raises(DatasetError, match=r"pairs\[1\] \(y\)\.image2: image file"):
        load_pair_dataset(pairs_folder)


def test_load_pair_dataset_rejects_a_short_correspondence(pairs_folder: Path) -> None:
    _rewrite_pairs(pairs_folder, lambda d: d["pairs"][0]["correspondences"].append([1, 2, 3]))
    with pytest.raises(DatasetError, match=r"correspondences\[2\]: expected \[x1, y1, x2, y2\]"):
        load_pair_dataset(pairs_folder)


def test_load_pair_dataset_rejects_missing_correspondences(pairs_folder: Path) -> None:
    _rewrite_pairs(pairs_folder, lambda d: d["pairs"][0].pop("correspondences"))
    with pytest.raises(DatasetError, match="missing key 'correspondences'"):
        load_pair_dataset(pairs_folder)


# --- the shared datasets --------------------------------------------------------------------


def _shared(name: str) -> Path:
    folder = _datasets_dir() / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present (set LANDMARKS_DATASETS_DIR to the datasets folder)")
    return folder


def test_shared_paris5_loads_and_a_perfect_ranking_scores_one() -> None:
    ds = load_retrieval_dataset(_shared("paris5"))
    assert ds.name == "paris5" and ds.images and ds.queries
    assert all(q.positives for q in ds.queries)
    catalog = [i.id for i in ds.images]
    perfect = {q.id: sorted(catalog, key=lambda i: (i not in q.positives, i)) for q in ds.queries}
    metrics = retrieval_metrics(perfect, ds.queries)
    assert metrics["mAP"] == pytest.approx(1.0)
    assert metrics["mP@10"] == pytest.approx(1.0)
    worst = {q.id: sorted(catalog, key=lambda i: (i in q.positives, i)) for q in ds.queries}
    assert retrieval_metrics(worst, ds.queries)["mAP"] < 0.5


def test_shared_wxbs_loads_with_correspondences() -> None:
    ds = load_pair_dataset(_shared("wxbs"))
    assert ds.name == "wxbs" and len(ds.pairs) >= 2
    assert all(p.correspondences.ndim == 2 and p.correspondences.shape[1] == 4 for p in ds.pairs)
    assert all(p.image1.is_file() and p.image2.is_file() for p in ds.pairs)
