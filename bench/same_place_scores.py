"""Same-place scores on a pair set (wxbs): inliers over RANSAC seeds, global cosine, their
fusion, and an a-contrario significance of the inliers.

Every pair is extracted with the product's extractor (default spec; image1 as a search
query, at all its sizes, image2 as a catalog photo) and verified as the server does (the
best of the query's sizes), with RANSAC seeds 0..N-1. For true pairs against mismatched pairs
(image1 of one pair with image2 of every other pair, skipping combinations whose images
are the same file), prints the ROC AUC of:

- ``inliers``: distinct RANSAC inliers, the server's score (one AUC per seed);
- ``cosine``: the cosine similarity of the two global descriptors;
- ``fused``: robust z-scores of cosine and inliers added, each standardised with the
  median and MAD of that score over all scored combinations (no labels, no weight);
- ``a-contrario``: -log10 of the number of false alarms of the inlier set under uniformly
  random matches (Moisan & Stival's ORSA criterion for a fundamental matrix), which
  weighs the inliers against the number of tentative matches and the residuals.

    PYTHONPATH=. .venv/bin/python bench/same_place_scores.py [--dataset ../shared/datasets/wxbs] [--seeds 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
from pathlib import Path

import numpy as np

from retrieval.vision.datasets import load_pair_dataset
from retrieval.vision.features import LocalFeatures
from retrieval.vision.metrics import roc_auc
from retrieval.vision.verification import Verification, tentative_matches, verify_matches


def robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 * MAD): a z-score that outliers (the true pairs) do not move."""
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre))
    return (values - centre) / max(float(spread), 1e-9)


def log10_binomial(n: np.ndarray | int, k: np.ndarray) -> np.ndarray:
    """log10 of C(n, k), elementwise."""
    lgamma = np.vectorize(math.lgamma)
    return (lgamma(np.asarray(n) + 1.0) - lgamma(k + 1.0) - lgamma(np.asarray(n) - k + 1.0)) / math.log(10)


def a_contrario_score(
    verification: Verification,
    f1: LocalFeatures,
    f2: LocalFeatures,
    matches: np.ndarray,
    shapes: tuple[tuple[int, int], tuple[int, int]],
) -> float:
    """-log10 NFA of the best inlier prefix of the fitted fundamental matrix (0 without one).

    For n tentative matches sorted by epipolar residual e_k, a random match falls within
    e_k of its epipolar line with probability alpha_k = 2 * D * e_k / A (D the image
    diagonal, A its area); NFA(k) = 3 (n - 7) C(n, k) C(k, 7) alpha_k^(k - 7).
    """
    fundamental = verification.fundamental
    n = len(matches)
    if fundamental is None or n <= 8:
        return 0.0
    x1 = np.c_[f1.keypoints[matches[:, 0]], np.ones(n)]
    x2 = np.c_[f2.keypoints[matches[:, 1]], np.ones(n)]
    lines2, lines1 = x1 @ fundamental.T, x2 @ fundamental
    algebraic = np.abs(np.sum(x2 * lines2, axis=1))
    alphas = []
    for lines, (height, width) in ((lines1, shapes[0]), (lines2, shapes[1])):
        distance = algebraic / np.maximum(np.hypot(lines[:, 0], lines[:, 1]), 1e-12)
        alphas.append(2 * math.hypot(height, width) * distance / (height * width))
    alpha = np.sort(np.clip(np.maximum(*alphas), 1e-12, 1.0))
    k = np.arange(8, n + 1)
    log_nfa = (
        math.log10(3 * (n - 7))
        + log10_binomial(n, k)
        + log10_binomial(k, np.full_like(k, 7))
        + (k - 7) * np.log10(alpha[k - 1])
    )
    return float(-log_nfa.min())


def _server_extractor(cache: Path):  # type: ignore[no-untyped-def]
    """The server's extractor settings (LANDMARKS_*), with the weights in ``cache``."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    django.setup()
    from retrieval.extraction import extractor_config
    from retrieval.vision.extractors import build_extractor

    return build_extractor(dataclasses.replace(extractor_config(), cache_dir=cache))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/wxbs"))
    parser.add_argument("--cache", type=Path, default=Path("var/models"))
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()

    import cv2

    from retrieval.vision.extractors import matching_config

    extractor = _server_extractor(args.cache)
    matching = matching_config(extractor.model_name)
    pairs = load_pair_dataset(args.dataset).pairs
    paths = sorted({p for pair in pairs for p in (pair.image1, pair.image2)})
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    images = {p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths}
    # image1 of a pair plays the search query (all its sizes), image2 the catalog photo.
    queries = {pair.image1 for pair in pairs}
    features = {p: extractor.extract_query(images[p]) if p in queries else extractor.extract(images[p]) for p in paths}
    combos = [(i, j) for i in range(len(pairs)) for j in range(len(pairs))]
    combos = [(i, j) for i, j in combos if i == j or digest[pairs[i].image1] != digest[pairs[j].image2]]
    true = np.array([i == j for i, j in combos])

    cosine = np.array(
        [
            float(features[pairs[i].image1].global_descriptor @ features[pairs[j].image2].global_descriptor)
            for i, j in combos
        ]
    )
    sets = {i: features[pairs[i].image1].local_sets for i in range(len(pairs))}
    matches = {
        (i, j): [tentative_matches(query, features[pairs[j].image2].local, matching) for query in sets[i]]
        for i, j in combos
    }
    print(f"{extractor.model_name}: {true.sum()} true pairs, {(~true).sum()} mismatched")
    print("| seed | inliers | cosine | fused (z cosine + z inliers) | a-contrario |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    for seed in range(args.seeds):
        config = dataclasses.replace(matching, seed=seed)
        inliers, significance = [], []
        for i, j in combos:
            a, b = pairs[i].image1, pairs[j].image2
            tried = [
                (verify_matches(query.keypoints, features[b].local.keypoints, found, config), query, found)
                for query, found in zip(sets[i], matches[i, j], strict=True)
            ]
            v, query, found = max(tried, key=lambda t: t[0].inliers)  # the server's choice (verify_best)
            inliers.append(v.inliers)
            shapes = (images[a].shape[:2], images[b].shape[:2])
            significance.append(a_contrario_score(v, query, features[b].local, found, shapes))
        inl, sig = np.array(inliers, float), np.array(significance)
        row = [roc_auc(s[true], s[~true]) for s in (inl, cosine, robust_z(cosine) + robust_z(inl), sig)]
        rows.append(row)
        print(f"| {seed} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)
    mean = np.mean(rows, axis=0)
    print("| mean | " + " | ".join(f"{v:.3f}" for v in mean) + " |")


if __name__ == "__main__":
    main()
