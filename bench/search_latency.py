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
  1000 trials, on the first ``--seed-queries`` queries (it takes ~0.2 s a pair).

Prints pairs per second of each, their ratio, and the median per-query extraction,
blob decoding and verification times. ``--json OUT`` writes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrieval.vision.features import LocalFeatures

logger = logging.getLogger("bench.search_latency")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--spec", help="extractor spec (default: LANDMARKS_EXTRACTOR)")
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--seed-queries", type=int, default=5, help="queries verified the seeds' way")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from django.conf import settings

    from retrieval.extraction import get_extractor, min_inliers
    from retrieval.services import image_decode
    from retrieval.vision.datasets import load_retrieval_dataset
    from retrieval.vision.expansion import alpha_query_expansion, database_side_augmentation
    from retrieval.vision.extractors import matching_config
    from retrieval.vision.features import LocalFeatures
    from retrieval.vision.preprocessing import crop_bbox
    from retrieval.vision.ranking import answer_decided
    from retrieval.vision.verification import verify_best

    dataset = load_retrieval_dataset(args.dataset)
    extractor = get_extractor(args.spec)
    matching = matching_config(extractor.model_name)
    threshold = min_inliers(extractor.model_name)
    cache = root / "bench" / "out" / f"latency-{dataset.name}-{extractor.model_name}@{extractor.model_version}.pkl"
    if cache.exists():
        blobs, X, queries, Q, extract_ms = pickle.loads(cache.read_bytes())
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        blobs, vectors = [], []
        for image in dataset.images:
            features = extractor.extract(image_decode(data=Path(image.path).read_bytes()))
            blobs.append(features.local.to_bytes(descriptor_dtype=extractor.descriptor_dtype))
            vectors.append(features.global_descriptor)
        queries, Q, extract_ms = [], [], []
        for query in dataset.queries:
            rgb, offset = crop_bbox(image_decode(data=Path(query.path).read_bytes()), query.bbox)
            start = time.perf_counter()
            features = extractor.extract_query(rgb)
            extract_ms.append((time.perf_counter() - start) * 1000)
            queries.append(features.local_sets)
            Q.append(features.global_descriptor)
        X, Q = np.stack(vectors), np.stack(Q)
        cache.write_bytes(pickle.dumps((blobs, X, queries, Q, extract_ms)))

    start = time.perf_counter()
    stored = [LocalFeatures.from_bytes(blob) for blob in blobs]
    decode_ms_per_blob = (time.perf_counter() - start) * 1000 / len(blobs)
    base = database_side_augmentation(X, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS, alpha=settings.LANDMARKS_EXPANSION_ALPHA)
    labels = [image.landmark for image in dataset.images]
    shortlists = []
    for q in Q:
        sims = base @ q
        top = np.argsort(-sims, kind="stable")[: settings.LANDMARKS_QE_NEIGHBOURS]
        expanded = alpha_query_expansion(q, base[top], sims[top], alpha=settings.LANDMARKS_EXPANSION_ALPHA)
        shortlists.append(np.argsort(-(base @ expanded), kind="stable")[: args.shortlist])

    full_ms, early_ms, depths = [], [], []
    pairs = 0
    product_seconds = 0.0
    for query_sets, shortlist in zip(queries, shortlists, strict=True):
        inliers: list[int] = []
        start = time.perf_counter()
        stop_at = None
        for n, j in enumerate(shortlist, start=1):
            inliers.append(verify_best(query_sets, stored[j], matching)[1].inliers)
            early = settings.LANDMARKS_VERIFY_EARLY_STOP
            if (
                stop_at is None
                and early
                and n % early == 0
                and n < len(shortlist)
                and answer_decided(inliers, [labels[k] for k in shortlist[:n]], min_inliers=threshold)
            ):
                stop_at = n
                early_ms.append((time.perf_counter() - start) * 1000)
        elapsed = time.perf_counter() - start
        full_ms.append(elapsed * 1000)
        if stop_at is None:
            early_ms.append(elapsed * 1000)
        depths.append(stop_at or len(shortlist))
        pairs += len(shortlist)
        product_seconds += elapsed
    product_pps = pairs / product_seconds

    seed_pairs = 0
    start = time.perf_counter()
    for query_sets, shortlist in list(zip(queries, shortlists, strict=True))[: args.seed_queries]:
        for j in shortlist:
            seeds_way_inliers(query_sets[0], stored[j])
            seed_pairs += 1
    seeds_pps = seed_pairs / (time.perf_counter() - start) if seed_pairs else float("nan")

    result = {
        "dataset": dataset.name,
        "model": f"{extractor.model_name}@{extractor.model_version}",
        "queries": len(Q),
        "extract_ms_p50": statistics.median(extract_ms),
        "blob_decode_ms_per_candidate": decode_ms_per_blob,
        "blob_bytes_mean": statistics.fmean(len(b) for b in blobs),
        "verify_100_ms_p50": statistics.median(full_ms),
        "verify_early_stop_ms_p50": statistics.median(early_ms),
        "verify_depth_p50": statistics.median(depths),
        "product_pairs_per_s": product_pps,
        "seeds_way_pairs": seed_pairs,
        "seeds_way_pairs_per_s": seeds_pps,
        "speedup": product_pps / seeds_pps if seed_pairs else None,
    }
    for key, value in result.items():
        logger.info("%-30s %s", key, f"{value:.2f}" if isinstance(value, float) else value)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


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
