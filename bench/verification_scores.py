"""Which score of one verification tells "same place" best: both AUC bars of issue 9.

    .venv/bin/python bench/verification_scores.py ../shared/datasets/paris5 ../shared/datasets/wxbs [--seeds 10]

Every score is computed from the same verification (the query size with the most inliers,
as ``verify_best`` keeps it), with RANSAC seeds 0..N-1, on the product's settings
(``LANDMARKS_*``: the default int8 rows, or the compact rows with
``LANDMARKS_LOCAL_CODEBOOK``; catalog photos go through the stored blob and back):

- **paris5**, the candidates a search verifies: the server's shortlist (DBA + alpha-QE,
  exact search), checked in steps of ``LANDMARKS_VERIFY_EARLY_STOP`` until
  ``answer_decided`` on seed 0's inliers, positives against negatives (junk skipped):
  ``evaluate``'s "verified candidates" AUC; and over all 100 shortlisted candidates.
- **wxbs**: the true pairs against image1 of each pair with image2 of every pair of
  another place (``SAME_PLACE`` groups, as docs/quality.md runs ``evaluate``).

The scores: ``inliers`` (the server's); ``selective1`` / ``selective3``: the inliers
weighted by their descriptor cosine to the power 1 / 3 (ASMK's selectivity function,
Tolias et al. ICCV 2013, which down-weights weak matches); ``per_sqrt_tentative``:
inliers / sqrt(tentative matches), the excess over what the number of tentative matches
alone would fit; ``global``: the cosine of the global descriptors (paris5: similarity to
the expanded query, which ranks the shortlist); ``fused``: robust z-scores of ``global``
and ``inliers`` added, each standardised by its median and MAD over all pairs scored.
Prints one table row per score: AUC mean (min-max over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench.verification_scores")
ROOT = Path(__file__).resolve().parents[1]
SAME_PLACE = (("WLABS_kyiv", "WGABS_kyiv"), ("WGALBS_submarine", "WGALBS_submarine2"))


@dataclasses.dataclass(frozen=True)
class Verified:
    """One pair verified with one seed: what the scores are made of.

    Attributes:
        inliers: distinct inliers (the server's score).
        tentative: tentative matches before RANSAC.
        cosines: (K,) float32 descriptor cosine of each inlier match.
    """

    inliers: int
    tentative: int
    cosines: np.ndarray


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """A query/candidate pair: its label, global similarity and one Verified per seed."""

    label: str  # "positive", "negative" or "junk" (left out of every AUC)
    similarity: float
    seeds: tuple[Verified, ...]


SCORES: dict[str, Callable[[Verified], float]] = {
    "inliers": lambda v: float(v.inliers),
    "selective1": lambda v: float(np.clip(v.cosines, 0.0, 1.0).sum()),
    "selective3": lambda v: float((np.clip(v.cosines, 0.0, 1.0) ** 3).sum()),
    "per_sqrt_tentative": lambda v: v.inliers / np.sqrt(max(v.tentative, 1)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("retrieval", type=Path, help="a retrieval dataset (paris5)")
    parser.add_argument("pairs", type=Path, help="a pair dataset (wxbs)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from retrieval.extraction import get_extractor

    extractor = get_extractor()
    checked, shortlisted = _retrieval_records(args.retrieval, extractor, args.seeds)
    pairs = _pair_records(args.pairs, extractor, args.seeds)
    result = {
        "model": f"{extractor.model_name}@{extractor.model_version}",
        "seeds": args.seeds,
        "paris5 checked": _aucs(checked, args.seeds),
        "paris5 all shortlisted": _aucs(shortlisted, args.seeds),
        "wxbs": _aucs(pairs, args.seeds),
    }
    columns = [name for name in result if isinstance(result[name], dict)]
    counts = {"paris5 checked": checked, "paris5 all shortlisted": shortlisted, "wxbs": pairs}
    logger.info("%s, seeds 0-%d", result["model"], args.seeds - 1)
    logger.info("| score | " + " | ".join(
        f"{c} ({sum(r.label == 'positive' for r in counts[c])} / {sum(r.label == 'negative' for r in counts[c])})"
        for c in columns
    ) + " |")  # fmt: skip
    logger.info("|---|" + "---:|" * len(columns))
    for score in result[columns[0]]:
        cells = [result[c][score] for c in columns]
        logger.info(f"| {score} | " + " | ".join(f"{m:.3f} ({lo:.3f}-{hi:.3f})" for m, lo, hi in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _verified(query_sets: Sequence[Any], candidate: Any, matching: Any, seeds: int) -> tuple[Verified, ...]:
    """The pair verified with each seed; per seed the query size with the most inliers."""
    from retrieval.vision.verification import most_inliers, tentative_matches, verify_matches

    matched = [(query, tentative_matches(query, candidate, matching)) for query in query_sets]
    out = []
    for seed in range(seeds):
        config = dataclasses.replace(matching, seed=seed)
        tried = [verify_matches(q.keypoints, candidate.keypoints, m, config) for q, m in matched]
        index, best = most_inliers(tried)
        query = matched[index][0]
        pairs = best.matches
        cosines = np.einsum("kd,kd->k", query.descriptors[pairs[:, 0]], candidate.descriptors[pairs[:, 1]])
        out.append(Verified(best.inliers, best.tentative, cosines.astype(np.float32)))
    return tuple(out)


def _retrieval_records(folder: Path, extractor: Any, seeds: int) -> tuple[list[PairRecord], list[PairRecord]]:
    """paris5's query/candidate records: those the search checks, and all shortlisted."""
    from django.conf import settings

    from retrieval.extraction import min_inliers
    from retrieval.vision.datasets import load_retrieval_dataset
    from retrieval.vision.extractors import matching_config
    from retrieval.vision.ranking import answer_decided
    from search_latency import catalog_and_queries, server_shortlists

    dataset = load_retrieval_dataset(folder)
    blobs, X, queries, Q, _ = catalog_and_queries(dataset, extractor)
    stored = [extractor.codec.decode(blob) for blob in blobs]
    shortlists = server_shortlists(X, Q, limit=settings.LANDMARKS_SHORTLIST_SIZE)
    matching, threshold = matching_config(extractor.model_name), min_inliers(extractor.model_name)
    step = settings.LANDMARKS_VERIFY_EARLY_STOP or len(stored)
    ids = [image.id for image in dataset.images]
    labels = [image.landmark for image in dataset.images]
    checked: list[PairRecord] = []
    shortlisted: list[PairRecord] = []
    for query, query_sets, shortlist in zip(dataset.queries, queries, shortlists, strict=True):
        if not query.positives:
            continue
        records = []
        for j, similarity in shortlist.ranked:
            label = "positive" if ids[j] in query.positives else "junk" if ids[j] in query.junk else "negative"
            records.append(PairRecord(label, similarity, _verified(query_sets, stored[j], matching, seeds)))
        rows = [j for j, _ in shortlist.ranked]
        depth = len(records)
        for n in range(step, len(records), step):
            inliers = [r.seeds[0].inliers for r in records[:n]]
            if answer_decided(inliers, [labels[j] for j in rows[:n]], min_inliers=threshold):
                depth = n
                break
        shortlisted += [r for r in records if r.label != "junk"]
        checked += [r for r in records[:depth] if r.label != "junk"]
    return checked, shortlisted


def _pair_records(folder: Path, extractor: Any, seeds: int) -> list[PairRecord]:
    """WxBS: every true pair and every mismatched combination across places."""
    import hashlib

    from retrieval.services import image_decode
    from retrieval.vision.datasets import load_pair_dataset, same_place_groups
    from retrieval.vision.extractors import matching_config

    dataset = load_pair_dataset(folder)
    cache = ROOT / "bench" / "out" / f"scores-{dataset.name}-{extractor.model_name}@{extractor.model_version}.pkl"
    if cache.exists():
        first, second, keys = pickle.loads(cache.read_bytes())
    else:
        first, second, keys = [], [], []
        for pair in dataset.pairs:
            data1, data2 = pair.image1.read_bytes(), pair.image2.read_bytes()
            keys.append({hashlib.sha256(data1).hexdigest(), hashlib.sha256(data2).hexdigest()})
            first.append(extractor.extract_query(image_decode(data=data1)))
            features = extractor.extract(image_decode(data=data2))  # as stored, as evaluate does
            second.append(
                dataclasses.replace(features, local=extractor.codec.decode(extractor.codec.encode(features.local)))
            )
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((first, second, keys)))
    pair_ids = [pair.id for pair in dataset.pairs]
    for number, group in enumerate(SAME_PLACE):
        for pair_id in group:
            if pair_id in pair_ids:
                keys[pair_ids.index(pair_id)].add(f"group{number}")
    place = same_place_groups(keys)
    matching = matching_config(extractor.model_name)
    records = []
    for i, query in enumerate(first):
        for j, candidate in enumerate(second):
            if i != j and place[i] == place[j]:
                continue
            similarity = float(query.global_descriptor @ candidate.global_descriptor)
            verified = _verified(query.local_sets, candidate.local, matching, seeds)
            records.append(PairRecord("positive" if i == j else "negative", similarity, verified))
    return records


def _aucs(records: Sequence[PairRecord], seeds: int) -> dict[str, tuple[float, float, float]]:
    """Per score: the AUC mean, min and max over the seeds."""
    from retrieval.vision.metrics import roc_auc

    positive = np.array([r.label == "positive" for r in records])
    similarity = np.array([r.similarity for r in records])
    per_seed: dict[str, list[float]] = {name: [] for name in [*SCORES, "global", "fused"]}
    for seed in range(seeds):
        for name, score in SCORES.items():
            values = np.array([score(r.seeds[seed]) for r in records])
            per_seed[name].append(roc_auc(values[positive], values[~positive]))
        inliers = np.array([r.seeds[seed].inliers for r in records], float)
        fused = _robust_z(similarity) + _robust_z(inliers)
        per_seed["fused"].append(roc_auc(fused[positive], fused[~positive]))
        per_seed["global"].append(roc_auc(similarity[positive], similarity[~positive]))
    return {name: (float(np.mean(v)), float(min(v)), float(max(v))) for name, v in per_seed.items()}


def _robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 * MAD)."""
    centre = np.median(values)
    return (values - centre) / max(1.4826 * float(np.median(np.abs(values - centre))), 1e-9)


if __name__ == "__main__":
    sys.exit(main())
