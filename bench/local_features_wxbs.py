"""Pair separation of local features on wxbs: RootSIFT, XFeat and dense EfficientNet-Lite
cells, homography vs fundamental matrix.

For every true pair and every mismatched combination (image1 of pair i with image2 of
pair j != i, skipping combinations whose two images are the same file content), the
score is the number of distinct RANSAC inliers. Reports ROC AUC (true vs mismatched),
median inliers, extraction ms per image and matching + RANSAC ms per pair.

    PYTHONPATH=. .venv/bin/python bench/local_features_wxbs.py [--datasets ../shared/datasets] [--cache var/models]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from retrieval.vision.datasets import load_pair_dataset
from retrieval.vision.features import LocalFeatures
from retrieval.vision.matching import match_descriptors
from retrieval.vision.metrics import median, roc_auc
from retrieval.vision.verification import VerificationConfig, _distinct_inliers, verify_matches, verify_pair


def fundamental_inliers(f1: LocalFeatures, f2: LocalFeatures, matches: np.ndarray, config: VerificationConfig) -> int:
    """Distinct inliers of a fundamental matrix fitted with MAGSAC++ (same threshold rule)."""
    if len(matches) < 8:
        return 0
    src = f1.keypoints[matches[:, 0]].astype(np.float32)
    dst = f2.keypoints[matches[:, 1]].astype(np.float32)
    threshold = max(1.0, config.relative_threshold * float(np.ptp(f2.keypoints, axis=0).max()))
    try:
        fmat, mask = cv2.findFundamentalMat(
            src, dst, cv2.USAC_MAGSAC, threshold, config.confidence, config.max_iterations
        )
    except cv2.error:  # OpenCV 5's USAC asserts on some degenerate samples
        return 0
    if fmat is None or mask is None:
        return 0
    return _distinct_inliers(f1.keypoints, f2.keypoints, matches[mask.ravel().astype(bool)])


def score(f1: LocalFeatures, f2: LocalFeatures, config: VerificationConfig, geometry: str) -> int:
    if len(f1) < 4 or len(f2) < 4:
        return 0
    if geometry == "product":  # exactly what the server does with this config
        return verify_pair(f1, f2, config).inliers
    matches = match_descriptors(
        f1.descriptors, f2.descriptors, ratio=config.ratio, mutual=config.mutual, min_similarity=config.min_similarity
    )
    if geometry == "homography":
        return verify_matches(f1.keypoints, f2.keypoints, matches, config).inliers
    return fundamental_inliers(f1, f2, matches, config)


def _extractors(max_features: int, cache: Path) -> dict[str, Any]:
    from retrieval.vision.extractors.effnet_local import EfficientNetLiteLocal
    from retrieval.vision.extractors.rootsift import RootSIFT
    from retrieval.vision.extractors.xfeat import XFeat

    return {
        "rootsift": RootSIFT(max_features=max_features),
        "xfeat": XFeat(max_features=max_features, cache_dir=cache),
        "effnet-lite2-local": EfficientNetLiteLocal(variant="lite2", max_features=2000, cache_dir=cache),
    }


def _variants() -> dict[str, list[tuple[str, VerificationConfig]]]:
    """The matching settings tried per feature."""
    from retrieval.vision.extractors import matching_config

    dense = matching_config("effnet-lite2-gem+effnet-lite2-local")
    return {
        "rootsift": [("ratio0.85+mutual", VerificationConfig())],
        "xfeat": [
            ("ratio0.85+mutual", VerificationConfig()),
            ("mutual+cos0.82", VerificationConfig(ratio=1.0, min_similarity=0.82)),
            ("mutual", VerificationConfig(ratio=1.0)),
            ("ratio0.9+mutual", VerificationConfig(ratio=0.9)),
        ],
        "effnet-lite2-local": [
            ("default: ratio0.95+mutual, F within 0.004", dense),
            ("ratio0.9+mutual", dataclasses.replace(dense, ratio=0.9)),
            ("ratio0.95, homography within 0.03", dataclasses.replace(dense, geometry="homography", relative_threshold=0.03)),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--cache", type=Path, default=Path("var/models"))
    parser.add_argument("--max-features", type=int, default=1000)
    args = parser.parse_args()

    pairs = load_pair_dataset(args.datasets / "wxbs").pairs
    paths = sorted({p for pair in pairs for p in (pair.image1, pair.image2)})
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    images = {p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths}
    combos = [(i, j) for i in range(len(pairs)) for j in range(len(pairs))]
    combos = [(i, j) for i, j in combos if i == j or digest[pairs[i].image1] != digest[pairs[j].image2]]
    extractors, variants = _extractors(args.max_features, args.cache), _variants()
    print(f"{len(pairs)} true pairs, {len(combos) - len(pairs)} mismatched; {len(paths)} images")
    print("| features | matching | geometry | AUC | median inliers true | median inliers mismatched | ms/pair |")
    print("|---|---|---|---|---|---|---|")
    for name, extractor in extractors.items():
        extractor.extract_local(images[paths[0]])  # warm up
        start = time.perf_counter()
        feats = {p: extractor.extract_local(images[p]) for p in paths}
        ms_image = 1000 * (time.perf_counter() - start) / len(paths)
        counts = np.median([len(f) for f in feats.values()])
        for label, config in variants[name]:
            for geometry in ("product",) if name == "effnet-lite2-local" else ("homography", "fundamental"):
                start = time.perf_counter()
                scores = {
                    (i, j): score(feats[pairs[i].image1], feats[pairs[j].image2], config, geometry) for i, j in combos
                }
                ms_pair = 1000 * (time.perf_counter() - start) / len(combos)
                pos = [s for (i, j), s in scores.items() if i == j]
                neg = [s for (i, j), s in scores.items() if i != j]
                print(
                    f"| {name} ({ms_image:.0f} ms/image, {counts:.0f} kp) | {label} | {geometry} "
                    f"| {roc_auc(pos, neg):.3f} "
                    f"| {median(pos):g} | {median(neg):g} | {ms_pair:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
