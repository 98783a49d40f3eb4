"""Search stage times and the product's verification against the seeds' way, same candidates.

    .venv/bin/python bench/search_latency.py ../shared/datasets/paris5 [--spec SPEC] [--seed-queries 5]

Extracts the catalog and the queries with the product's extractor (cached in bench/out/;
catalog features go through the stored blob format, as the search worker reads them),
takes each query's shortlist of 100 by global cosine with DBA + alpha-QE (as the server),
then times, on the same query/candidate pairs:

- **product**: ``verify_best`` with the pipeline's matching settings, every candidate
  (full depth) and with the early stop of the search service (``answer_decided``);
- **seeds' way**: brute-force nearest neighbours (distance < 0.8, as tensorflow/models
  ``research/delf`` matches) and ``skimage.measure.ransac`` with an ``AffineTransform``,
  1000 trials, on the first ``--seed-queries`` queries (it takes ~0.2 s a pair), each
  query's candidates verified by the product and then the seeds' way in turn.

Prints pairs per second of each on those same pairs, their ratio, and the median
per-query extraction, blob decoding and verification times. Every candidate is matched
as a fresh object, as the search worker decodes it. ``--json OUT`` writes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from retrieval.vision.features import LocalFeatures
    from retrieval.vision.shortlist import Shortlist

logger = logging.getLogger("bench.search_latency")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--spec", help="extractor spec (default: LANDMARKS_EXTRACTOR)")
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--seed-queries", type=int, default=5, help="queries verified the seeds' way")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from retrieval.extraction import get_extractor
    from retrieval.vision.datasets import load_retrieval_dataset

    dataset = load_retrieval_dataset(args.dataset)
    extractor = get_extractor(args.spec)
    blobs, X, queries, Q, extract_ms = catalog_and_queries(dataset, extractor)
    start = time.perf_counter()
    stored = [extractor.codec.decode(blob) for blob in blobs]
    decode_ms_per_blob = (time.perf_counter() - start) * 1000 / len(blobs)
    shortlists = [np.array([j for j, _ in s.ranked]) for s in server_shortlists(X, Q, limit=args.shortlist)]
    labels = [image.landmark for image in dataset.images]
    product = _product_verification(extractor.model_name, queries, shortlists, stored, labels)
    seed_pairs, product_pps, seeds_pps = _side_by_side(extractor.model_name, queries[: args.seed_queries], shortlists, stored)
    result = {
        "dataset": dataset.name,
        "model": f"{extractor.model_name}@{extractor.model_version}",
        "queries": len(Q),
        "extract_ms_p50": statistics.median(extract_ms),
        "blob_decode_ms_per_candidate": decode_ms_per_blob,
        "blob_bytes_mean": statistics.fmean(len(b) for b in blobs),
        **product,
        "seeds_way_pairs": seed_pairs,
        "product_pairs_per_s_same_pairs": product_pps,
        "seeds_way_pairs_per_s": seeds_pps,
        "speedup": product_pps / seeds_pps if seed_pairs else None,
    }
    for key, value in result.items():
        logger.info("%-30s %s", key, f"{value:.2f}" if isinstance(value, float) else value)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def catalog_and_queries(dataset: Any, extractor: Any) -> tuple[list[bytes], np.ndarray, list[Any], np.ndarray, list[float]]:
    """Catalog blobs and global descriptors, query feature sets, descriptors and extraction
    times; cached in bench/out per dataset and model."""
    from retrieval.services import image_decode
    from retrieval.vision.preprocessing import crop_bbox

    from django.conf import settings

    # A query's cell counts are not part of the model version (queries are never stored).
    cells = f"q{settings.LANDMARKS_DENSE_QUERY_FINE_CELLS}+{settings.LANDMARKS_DENSE_QUERY_COARSE_CELLS}"
    cache = ROOT / "bench" / "out" / f"latency-{dataset.name}-{extractor.model_name}@{extractor.model_version}-{cells}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    cache.parent.mkdir(parents=True, exist_ok=True)
    blobs, vectors = [], []
    for image in dataset.images:
        features = extractor.extract(image_decode(data=Path(image.path).read_bytes()))
        blobs.append(extractor.codec.encode(features.local))
        vectors.append(features.global_descriptor)
    queries, Q, extract_ms = [], [], []
    for query in dataset.queries:
        rgb, _ = crop_bbox(image_decode(data=Path(query.path).read_bytes()), query.bbox)
        start = time.perf_counter()
        features = extractor.extract_query(rgb)
        extract_ms.append((time.perf_counter() - start) * 1000)
        queries.append(features.local_sets)
        Q.append(features.global_descriptor)
    result = (blobs, np.stack(vectors), queries, np.stack(Q), extract_ms)
    cache.write_bytes(pickle.dumps(result))
    return result


def server_shortlists(X: np.ndarray, Q: np.ndarray, *, limit: int) -> list[Shortlist]:
    """The server's shortlist (DBA catalog, alpha-QE query), by exact search in numpy:
    per query the ranked (catalog row, similarity to the expanded query) pairs."""
    from django.conf import settings

    from retrieval.vision.expansion import database_side_augmentation
    from retrieval.vision.shortlist import exact_nearest, expanded_shortlist

    alpha = settings.LANDMARKS_EXPANSION_ALPHA
    base = database_side_augmentation(X, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS, alpha=alpha)
    return [
        expanded_shortlist(
            q, nearest=exact_nearest(base), vectors_of=lambda rows: base[rows], limit=limit,
            expansion_neighbours=settings.LANDMARKS_QE_NEIGHBOURS, alpha=alpha,
        )
        for q in Q
    ]  # fmt: skip


def _product_verification(
    spec: str, queries: list[Any], shortlists: list[np.ndarray], stored: list[Any], labels: list[str | None]
) -> dict[str, float]:
    """The product's verification of every shortlist: all of it, and where the early stop
    (LANDMARKS_VERIFY_EARLY_STOP) would have ended; pairs per second over all of it."""
    from django.conf import settings

    from retrieval.extraction import min_inliers
    from retrieval.vision.extractors import matching_config
    from retrieval.vision.ranking import answer_decided
    from retrieval.vision.verification import verify_best

    matching, threshold, early = matching_config(spec), min_inliers(spec), settings.LANDMARKS_VERIFY_EARLY_STOP
    full_ms, early_ms, depths = [], [], []
    for query_sets, shortlist in zip(queries, shortlists, strict=True):
        inliers: list[int] = []
        start = time.perf_counter()
        stop_at = None
        for n, j in enumerate(shortlist, start=1):
            inliers.append(verify_best(query_sets, _fresh(stored[j]), matching)[1].inliers)
            if stop_at is None and early and n % early == 0 and n < len(shortlist):
                if answer_decided(inliers, [labels[k] for k in shortlist[:n]], min_inliers=threshold):
                    stop_at = n
                    early_ms.append((time.perf_counter() - start) * 1000)
        full_ms.append((time.perf_counter() - start) * 1000)
        if stop_at is None:
            early_ms.append(full_ms[-1])
        depths.append(stop_at or len(shortlist))
    return {
        "verify_100_ms_p50": statistics.median(full_ms),
        "verify_early_stop_ms_p50": statistics.median(early_ms),
        "verify_depth_p50": statistics.median(depths),
        "product_pairs_per_s": sum(len(s) for s in shortlists) / (sum(full_ms) / 1000),
    }


def _fresh(features: LocalFeatures) -> LocalFeatures:
    """The same arrays without what matching cached on the object (quantised rows): the
    search worker decodes each candidate anew, so every pair pays for its own."""
    return dataclasses.replace(features)


def _side_by_side(
    spec: str, queries: list[Any], shortlists: list[np.ndarray], stored: list[Any]
) -> tuple[int, float, float]:
    """The product's verification and the seeds' way on the same pairs, query by query
    in turn (so that a change in the machine's load falls on both): pairs, and pairs per
    second of each."""
    from retrieval.vision.extractors import matching_config
    from retrieval.vision.verification import verify_best

    matching = matching_config(spec)
    pairs, product_s, seeds_s = 0, 0.0, 0.0
    for query_sets, shortlist in zip(queries, shortlists, strict=False):
        start = time.perf_counter()
        for j in shortlist:
            verify_best(query_sets, _fresh(stored[j]), matching)
        product_s += time.perf_counter() - start
        start = time.perf_counter()
        for j in shortlist:
            seeds_way_inliers(query_sets[0], stored[j])
        seeds_s += time.perf_counter() - start
        pairs += len(shortlist)
    if not pairs:
        return 0, float("nan"), float("nan")
    return pairs, pairs / product_s, pairs / seeds_s


def seeds_way_inliers(query: LocalFeatures, candidate: LocalFeatures) -> int:
    """tensorflow/models ``research/delf`` matching: each query descriptor's nearest
    catalog descriptor within distance 0.8 (brute force here, a KD-tree there), then
    scikit-image's RANSAC with an affine model, 20 px, 1000 trials."""
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    distances = np.sqrt(np.maximum(2.0 - 2.0 * (query.descriptors @ candidate.descriptors.T), 0.0))
    nearest = distances.argmin(axis=1)
    keep = distances[np.arange(len(nearest)), nearest] < 0.8
    src, dst = query.keypoints[keep], candidate.keypoints[nearest[keep]]
    if len(src) < 3:
        return 0
    _, mask = ransac((src, dst), AffineTransform, min_samples=3, residual_threshold=20, max_trials=1000, rng=0)
    return int(mask.sum()) if mask is not None else 0


if __name__ == "__main__":
    sys.exit(main())
