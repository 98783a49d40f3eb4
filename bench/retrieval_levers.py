"""Measure each retrieval lever on and off on a retrieval dataset (no database needed).

    .venv/bin/python bench/retrieval_levers.py ../shared/datasets/paris5 [--spec effnet-lite2-gem+rootsift]

Extracts every catalog image and query once with the product's extractor (cached in
bench/out/), verifies every query against every catalog image with the product's
verification, then ranks with the product's functions under each setting: plain cosine,
verified-first at several inlier thresholds, alpha query expansion (QE), database-side
augmentation (DBA) and their combinations, with the pgvector-style two-round shortlist.
Prints mAP / recall@1 per setting (Revisited Oxford/Paris protocol).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench.levers")


ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--spec", help="extractor spec (default: LANDMARKS_EXTRACTOR)")
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument(
        "--thresholds", type=int, nargs="*", default=[], help="extra verified-first inlier thresholds to try"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # after Django's LOGGING
    from retrieval.extraction import get_extractor, min_inliers
    from retrieval.vision.datasets import load_retrieval_dataset
    from retrieval.vision.metrics import retrieval_metrics

    dataset = load_retrieval_dataset(args.dataset)
    extractor = get_extractor(args.spec)
    X, Q, inliers = _features(dataset, extractor)
    levers = Levers(dataset=dataset, X=X, Q=Q, inliers=inliers, shortlist=args.shortlist)
    d = min_inliers(extractor.model_name)
    logger.info("| setting | mAP | mP@10 | recall@1 |\n|---|---|---|---|")
    for name, k, n, mi in _settings(d, args.thresholds):
        ranked = levers.rank(k, n, None, fused=True) if mi == "fused" else levers.rank(k, n, mi)
        m = retrieval_metrics(ranked, dataset.queries)
        logger.info("| %s | %.3f | %.3f | %d/%d |", name, m["mAP"], m["mP@10"], round(m["recall@1"] * len(Q)), len(Q))
    ids = [i.id for i in dataset.images]
    positives = np.array([[ids[j] in q.positives for j in range(len(ids))] for q in dataset.queries])
    logger.info(
        "inliers: max over negatives %d (99th percentile %g); queries with a positive >= %d inliers: %d/%d",
        inliers[~positives].max(), np.percentile(inliers[~positives], 99), d,
        int((np.where(positives, inliers, 0) >= d).any(axis=1).sum()), len(Q),
    )  # fmt: skip
    return 0


def _settings(d: int, thresholds: list[int]) -> list[tuple[str, int, int, int | str | None]]:
    """(name, DBA k, QE n, verified-first threshold or "fused" or None) per row."""
    rows: list[tuple[str, int, int, int | str | None]] = [
        ("global cosine only", 0, 0, None),
        (f"+ verification first (>= {d} inliers)", 0, 0, d),
        ("alpha-QE n=10", 0, 10, None),
        ("DBA k=10", 10, 0, None),
        ("DBA k=5 + alpha-QE n=5", 5, 5, None),
        ("DBA k=10 + alpha-QE n=10", 10, 10, None),
        (f"DBA k=10 + alpha-QE n=10 + verification (>= {d})  [default]", 10, 10, d),
        (f"DBA k=20 + alpha-QE n=10 + verification (>= {d})", 20, 10, d),
    ]
    rows += [(f"DBA k=10 + alpha-QE n=10 + verification (>= {t})", 10, 10, t) for t in thresholds]
    rows += [("DBA k=10 + alpha-QE n=10, fused: z(similarity) + z(inliers)", 10, 10, "fused")]
    return rows


def _features(dataset: Any, extractor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global descriptors of the catalog (N, D) and queries (M, D), and the product's
    verification inliers of every query x catalog pair (M, N); cached in bench/out."""
    from retrieval.services import image_decode
    from retrieval.vision.extractors import matching_config
    from retrieval.vision.preprocessing import crop_bbox
    from retrieval.vision.verification import verify_best

    scales = ",".join(f"{factor:g}" for factor in getattr(extractor, "query_scales", (1.0,)))
    cache = ROOT / "bench" / "out" / f"{dataset.name}-{extractor.model_name}@{extractor.model_version}-q{scales}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    cache.parent.mkdir(parents=True, exist_ok=True)
    matching = matching_config(extractor.model_name)
    db = [extractor.extract(image_decode(data=Path(i.path).read_bytes())) for i in dataset.images]
    queries = []
    for q in dataset.queries:
        rgb, _ = crop_bbox(image_decode(data=Path(q.path).read_bytes()), q.bbox)
        queries.append(extractor.extract_query(rgb))
    X = np.stack([f.global_descriptor for f in db])
    Q = np.stack([f.global_descriptor for f in queries])
    inliers = np.array([[verify_best(q.local_sets, d.local, matching)[1].inliers for d in db] for q in queries])
    cache.write_bytes(pickle.dumps((X, Q, inliers)))
    return X, Q, inliers


def _robust_stats(values: np.ndarray) -> tuple[float, float]:
    centre = float(np.median(values))
    return centre, max(1.4826 * float(np.median(np.abs(values - centre))), 1e-9)


@dataclasses.dataclass
class Levers:
    dataset: Any
    X: np.ndarray  # (N, D) catalog
    Q: np.ndarray  # (M, D) queries
    inliers: np.ndarray  # (M, N)
    shortlist: int

    def rank(self, dba_k: int, qe_n: int, min_inliers: int | None, fused: bool = False) -> dict[str, list[str]]:
        """Each query's ranking of the catalog ids under one setting."""
        from retrieval.vision.expansion import database_side_augmentation
        from retrieval.vision.shortlist import exact_nearest, expanded_shortlist

        X, inliers, ids = self.X, self.inliers, [i.id for i in self.dataset.images]
        base = database_side_augmentation(X, neighbours=dba_k) if dba_k > 1 else X
        # Fused: robust z-scores of similarity and inliers added, each standardised by
        # its distribution over all pairs (catalog x catalog, query x catalog): no labels.
        sim_centre, sim_spread = _robust_stats((base @ base.T)[~np.eye(len(base), dtype=bool)])
        inl_centre, inl_spread = _robust_stats(inliers.ravel().astype(float))
        rankings = {}
        for qi, query in enumerate(self.dataset.queries):
            shortlist = expanded_shortlist(
                self.Q[qi], nearest=exact_nearest(base), vectors_of=lambda rows: base[rows],
                limit=self.shortlist, expansion_neighbours=qe_n, alpha=3.0,
            )  # fmt: skip
            short = np.array([j for j, _ in shortlist.ranked])
            sims = base @ shortlist.query
            score = sims[short]
            if fused:
                score = (score - sim_centre) / sim_spread + (inliers[qi, short] - inl_centre) / inl_spread
            elif min_inliers is not None:
                score = np.where(inliers[qi, short] >= min_inliers, 10.0 + inliers[qi, short], score)
            order = list(short[np.argsort(-score, kind="stable")])
            seen = set(order)
            order += [j for j in np.argsort(-sims, kind="stable") if j not in seen]
            rankings[query.id] = [ids[j] for j in order]
        return rankings


if __name__ == "__main__":
    sys.exit(main())
