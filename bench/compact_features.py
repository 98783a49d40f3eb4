"""Compact stored local features on WxBS: how much pair separation each encoding keeps.

The catalog side of every WxBS pair (image2) is extracted once with more cells than any
variant keeps (fine and coarse levels, strongest first), then each variant keeps the top
cells of each level, encodes them as the stored blob would and decodes them again; the
query side (image1) stays float, as a query is never stored. Every true pair and every
mismatched combination (image1 of pair i with image2 of pair j, same places excluded as
``evaluate --same-place`` does) is verified with the server's matching (levels, MSAC)
with RANSAC seeds 0..N-1. Reports the pair AUC (mean and range over the seeds), the median
inliers and the stored bytes per catalog photo.

Codebooks for product quantisation are learned on cells of another photo set given with
``--train`` (a retrieval dataset's catalog, or ``skimage`` for scikit-image's photos).

    PYTHONPATH=. .venv/bin/python bench/compact_features.py ../shared/datasets/wxbs --train ../shared/datasets/paris5 \
        --variants int8:1000+500 pq20:1000+480 --seeds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import pickle
import re
import time
from pathlib import Path

import numpy as np

from retrieval.vision import compact
from retrieval.vision.datasets import load_pair_dataset, load_retrieval_dataset, same_place_groups
from retrieval.vision.extractors.effnet_dense import DenseEfficientNetLite
from retrieval.vision.extractors.registry import matching_config
from retrieval.vision.features import LocalFeatures
from retrieval.vision.metrics import roc_auc
from retrieval.vision.preprocessing import decode_image
from retrieval.vision.verification import tentative_matches, verify_matches

log = logging.getLogger("bench.compact_features")

# The product's matching of the dense cells (int8 products, MSAC 250), read from the registry.
MATCHING = matching_config("effnet-lite2-dense")
QUERY_CELLS = "1000+500"  # the product's query cells per level (LANDMARKS_DENSE_QUERY_*_CELLS)
SAME_PLACE = (("WLABS_kyiv", "WGABS_kyiv"), ("WGALBS_submarine", "WGALBS_submarine2"))


def _extractor(cache: Path, fine: int, coarse: int) -> DenseEfficientNetLite:
    return DenseEfficientNetLite(
        spec="effnet-lite2-dense",
        fine_features=fine,
        coarse_features=coarse,
        query_fine_features=1500,
        query_coarse_features=800,
        cache_dir=cache,
    )


def _pair_cells(folder: Path, cache: Path, out: Path) -> dict:
    path = out / "compact-wxbs-cells.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    dataset = load_pair_dataset(folder)
    extractor = _extractor(cache, 2000, 1000)
    data: dict = {"ids": [], "query": [], "catalog": [], "digests": []}
    for pair in dataset.pairs:
        first, second = pair.image1.read_bytes(), pair.image2.read_bytes()
        data["ids"].append(pair.id)
        data["digests"].append({hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()})
        data["query"].append(extractor.extract_query(decode_image(first)).local)
        data["catalog"].append(extractor.extract(decode_image(second)).local)
    path.write_bytes(pickle.dumps(data))
    return data


def _train_cells(source: str, cache: Path, out: Path, limit: int) -> np.ndarray:
    """(N, D) float32 unit cells of the training photos, both levels."""
    name = Path(source).name if source != "skimage" else "skimage"
    path = out / f"compact-train-{name}-{limit}.npy"
    if path.exists():
        return np.load(path)
    if source == "skimage":
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        files = [p for p in sorted(folder.iterdir()) if p.suffix in {".png", ".jpg"}]
    else:
        files = [image.path for image in load_retrieval_dataset(source).images][:limit]
    extractor = _extractor(cache, 1000, 500)
    rows = []
    for file in files:
        try:
            rgb = decode_image(file.read_bytes())
        except Exception:  # noqa: BLE001 - grey or tiny sample images are skipped
            continue
        if rgb.ndim != 3 or min(rgb.shape[:2]) < 64:
            continue
        rows.append(extractor.extract(rgb).local.descriptors)
    cells = np.concatenate(rows).astype(np.float32)
    np.save(path, cells)
    return cells


def _top(features: LocalFeatures, fine: int, coarse: int) -> LocalFeatures:
    """The strongest ``fine`` cells of the fine level and ``coarse`` of the coarse one
    (levels are told apart by their cell size; rows are strongest first in each)."""
    levels = np.unique(features.scales)
    keep = []
    for level, count in zip(sorted(levels), (fine, coarse), strict=False):
        keep.append(np.flatnonzero(features.scales == level)[:count])
    rows = np.concatenate(keep)
    return LocalFeatures(
        features.keypoints[rows], features.descriptors[rows], features.scores[rows], features.scales[rows]
    )


def _encode(variant: str, features: LocalFeatures, codebooks: dict[str, compact.Codebook]) -> tuple[LocalFeatures, int]:
    """Round trip through the stored encoding; returns the decoded features and the bytes."""
    kind = variant.split(":")[0]
    if kind == "float":
        return features, len(features) * (features.dim * 4 + 12)
    if kind == "int8":
        blob = features.to_bytes(descriptor_dtype="i1")
        return LocalFeatures.from_bytes(blob), len(blob)
    signs = re.fullmatch(r"sign(\d+)r(\d+)", kind)
    if signs:
        # One bit per projected dimension: the catalog cell's signs after a fixed random
        # projection with orthonormal columns (bits >= dims: q.c = Pq.Pc), compared with the
        # projected float query (asymmetric), which is what ``signs @ P`` gives back.
        bits, seed = int(signs[1]), int(signs[2])
        projection = _projection(bits, features.dim, seed)
        codes = np.where(features.descriptors @ projection.T >= 0, 1.0, -1.0) / np.sqrt(bits)
        nbytes = len(features) * (-(-bits // 8) + 2) + 13  # codes + grid keypoints + header
        return dataclasses.replace(features, descriptors=(codes @ projection).astype(np.float32)), nbytes
    codebook = codebooks[kind]
    blob = compact.encode(features, codebook)
    return compact.decode(blob, codebook), len(blob)


def _projection(bits: int, dim: int, seed: int) -> np.ndarray:
    """(bits, dim) with orthonormal columns (bits >= dim), fixed by its seed."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(bits, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _verify_all(
    query: list[LocalFeatures], catalog: list[LocalFeatures], skip: set[tuple[int, int]], seeds: int
) -> tuple[list[list[int]], list[list[int]], float]:
    true = [[] for _ in range(seeds)]
    false = [[] for _ in range(seeds)]
    start = time.perf_counter()
    pairs = 0
    for i, q in enumerate(query):
        for j, c in enumerate(catalog):
            if i != j and (i, j) in skip:
                continue
            matches = tentative_matches(q, c, MATCHING)
            pairs += 1
            for seed in range(seeds):
                inliers = verify_matches(
                    q.keypoints, c.keypoints, matches, dataclasses.replace(MATCHING, seed=seed)
                ).inliers
                (true if i == j else false)[seed].append(inliers)
    return true, false, (time.perf_counter() - start) * 1000 / max(pairs, 1) / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--train", default="skimage")
    parser.add_argument("--train-limit", type=int, default=250)
    parser.add_argument("--variants", nargs="+", default=["int8:1000+500"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--train-seed", type=int, default=0, help="k-means seed of the codebooks")
    parser.add_argument(
        "--query-cells", default=QUERY_CELLS, help="query cells per level, fine+coarse (at most 1500+800)"
    )
    parser.add_argument("--cache", type=Path, default=Path("var/models"))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    data = _pair_cells(args.pairs, args.cache, args.out)
    ids = data["ids"]
    keys = [set(d) for d in data["digests"]]
    for number, group in enumerate(SAME_PLACE):
        for pair_id in group:
            if pair_id in ids:
                keys[ids.index(pair_id)].add(f"group{number}")
    place = same_place_groups(keys)
    skip = {(i, j) for i in range(len(ids)) for j in range(len(ids)) if place[i] == place[j]}
    codebooks: dict[str, compact.Codebook] = {}
    results = []
    for variant in args.variants:
        kind, counts = variant.split(":")
        fine, coarse = (int(n) for n in counts.split("+"))
        if kind not in {"float", "int8"} and not kind.startswith("sign") and kind not in codebooks:
            cells = _train_cells(args.train, args.cache, args.out, args.train_limit)
            codebooks[kind] = compact.train_codebook(cells, compact.CodebookSpec.parse(kind), seed=args.train_seed)
        query_cells = [int(n) for n in args.query_cells.split("+")]
        query = [_top(features, *query_cells) for features in data["query"]]
        catalog, sizes = [], []
        for features in data["catalog"]:
            decoded, nbytes = _encode(kind, _top(features, fine, coarse), codebooks)
            catalog.append(decoded)
            sizes.append(nbytes)
        true, false, ms = _verify_all(query, catalog, skip, args.seeds)
        aucs = [roc_auc(t, f) for t, f in zip(true, false, strict=True)]
        row = {
            "variant": variant,
            "query_cells": args.query_cells,
            "train": args.train,
            "train_seed": args.train_seed,
            "auc_mean": float(np.mean(aucs)),
            "auc_min": float(min(aucs)),
            "auc_max": float(max(aucs)),
            "true_median": float(np.median(true[0])),
            "false_median": float(np.median(false[0])),
            "false_max": int(max(false[0])),
            "bytes_mean": float(np.mean(sizes)),
            "bytes_max": int(max(sizes)),
            "ms_per_pair_and_seed": ms,
        }
        results.append(row)
        log.info(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
