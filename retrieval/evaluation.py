"""Run an evaluation dataset through the server's own services and score it (``evaluate``).

Retrieval sets (``dataset.json``): the catalog images go into a throw-away catalog through
``services.image_ingest`` and ``services.image_index``; each query goes through
``services.search_create`` and ``services.search_execute``, the path of ``POST /api/search``
(shortlist, verification, reranking, recognition). Everything runs in this process and
nothing is sent to the broker. Each search asks for the whole catalog (``top_k`` = catalog
size), so its results give two full rankings: by global similarity alone ("global") and
the final verified order ("verified"). The catalog, its rows and its files are deleted at
the end, also after an error or Ctrl-C.

Pair sets (``pairs.json``): image1 of every pair is extracted as a search query (at all
its sizes) and image2 as a catalog photo, by the server's extractor; the server's
verification (the best of the query's sizes) scores each true pair and every mismatched pair (image1 of one pair against
image2 of every other pair, except pairs that share an image file and so show the same
place) by inliers; estimated homographies are checked against the hand-marked
correspondences.

The metrics themselves are the framework-free ones of :mod:`retrieval.vision.evaluation`.
Dataset format: ``docs/datasets.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import secrets
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, InterfaceError, connection
from django.utils import timezone
from tqdm import tqdm

from retrieval import extraction, selectors, services
from retrieval.errors import RetrievalError
from retrieval.models import Catalog, CatalogImage, Landmark, SearchQuery
from retrieval.vision.evaluation import (
    PAIRS_FILE,
    RETRIEVAL_FILE,
    DatasetError,
    PairDataset,
    QuerySpec,
    RetrievalDataset,
    epipolar_errors,
    global_average_precision,
    load_pair_dataset,
    load_retrieval_dataset,
    pair_metrics,
    rank_by_score,
    recognition_accuracy,
    retrieval_metrics,
    score_queries,
    transfer_errors,
)
from retrieval.vision.features import ImageFeatures, LocalFeatures
from retrieval.vision.verification import Verification, VerificationConfig, tentative_matches, verify_matches

logger = logging.getLogger(__name__)

METRIC_KEYS = ("mAP", "mP@1", "mP@5", "mP@10", "recall@1", "recall@5", "recall@10")
# "global": plain cosine similarity of the global descriptors; "shortlist": the order the
# pgvector shortlist returns (with query expansion and database-side augmentation, where
# the search's results report it as "similarity"); "verified": the final order.
RANKINGS = ("global", "shortlist", "verified")
# A true pair's estimated geometry counts as right when its median error on the
# hand-marked points is at most this many pixels: the transfer error of a homography, or
# the symmetric epipolar distance of a fundamental matrix.
TRANSFER_OK_PX = 10.0
RECALL_GRID = np.linspace(0.0, 1.0, 101)
# The deepest ranking one search can return: the shortlist sets pgvector's hnsw.ef_search
# to its limit, and pgvector accepts at most 1000.
MAX_SEARCH_DEPTH = 1000


@dataclasses.dataclass
class Evaluation:
    """What one run measured.

    Attributes:
        summary: the JSON report (``--json``); fractions in [0, 1], ``None`` where a metric
            is undefined.
        pr_curves: ranking name -> one ``(recall, precision)`` pair of (P,) arrays per
            scored query (for ``--plots``).
        inliers: histogram name -> inlier counts, e.g. true and mismatched pairs.
    """

    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    pr_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = dataclasses.field(default_factory=dict)
    inliers: dict[str, list[int]] = dataclasses.field(default_factory=dict)


# --- entry point ------------------------------------------------------------------------


def load_datasets(folder: Path) -> tuple[RetrievalDataset | None, PairDataset | None]:
    """The retrieval and/or pair set in ``folder``; raises DatasetError when it has neither
    or one is malformed (before anything touches the database)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder does not exist")
    has_retrieval = (folder / RETRIEVAL_FILE).is_file()
    has_pairs = (folder / PAIRS_FILE).is_file()
    if not has_retrieval and not has_pairs:
        raise DatasetError(f"{folder}: no {RETRIEVAL_FILE} or {PAIRS_FILE} (see docs/datasets.md)")
    retrieval = load_retrieval_dataset(folder) if has_retrieval else None
    pairs = load_pair_dataset(folder) if has_pairs else None
    return retrieval, pairs


def evaluate(
    retrieval: RetrievalDataset | None,
    pairs: PairDataset | None,
    *,
    top_k: int | None = None,
    ransac_seeds: int = 1,
    same_place: Sequence[Sequence[str]] = (),
    progress: bool = True,
) -> Evaluation:
    """Evaluate the loaded sets with the configured extractor and search settings.

    Args:
        top_k: score only the first ``top_k`` results of each ranking (positives further
            down count as not retrieved); ``None`` scores the whole ranked catalog.
        ransac_seeds: pair sets: verify every pair with RANSAC seeds 0..N-1 and report the
            AUC of each seed and their mean (seed 0 is the server's).
        same_place: pair sets: groups of pair ids that show the same place (for files
            without ``place``); they are never combined into mismatched pairs. Raises
            DatasetError for an unknown id.
        progress: show tqdm progress bars (on stderr).
    """
    if ransac_seeds < 1:
        raise ValueError(f"ransac_seeds must be at least 1, got {ransac_seeds}")
    known = {pair.id for pair in pairs.pairs} if pairs is not None else set()
    for group in same_place:
        unknown = sorted(set(group) - known)
        if unknown:
            raise DatasetError(f"same-place group {','.join(group)}: unknown pair ids: {', '.join(unknown)}")
    from retrieval.extraction import get_extractor

    started = time.perf_counter()
    extractor = get_extractor()  # built before anything is timed
    evaluation = Evaluation()
    name = retrieval.name if retrieval else pairs.name if pairs else ""
    summary = evaluation.summary
    summary.update(dataset=name, model=f"{extractor.model_name}@{extractor.model_version}")
    summary["settings"] = search_settings()
    summary["timings_ms"] = {}
    if retrieval is not None:
        _evaluate_retrieval(retrieval, evaluation, top_k=top_k, progress=progress)
    if pairs is not None:
        _evaluate_pairs(pairs, evaluation, seeds=range(ransac_seeds), same_place=same_place, progress=progress)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["finished_at"] = timezone.now().isoformat(timespec="seconds")
    return evaluation


def search_settings() -> dict[str, Any]:
    """The settings that shape extraction and search (retrieval adds its ranking depths)."""
    return {
        "extractor": settings.LANDMARKS_EXTRACTOR,
        "global_image_size": settings.LANDMARKS_GLOBAL_IMAGE_SIZE,
        "global_scales": list(settings.LANDMARKS_GLOBAL_SCALES),
        "max_keypoints": settings.LANDMARKS_MAX_KEYPOINTS,
        "max_local_cells": settings.LANDMARKS_MAX_LOCAL_CELLS,
        "dense_cells": [
            settings.LANDMARKS_DENSE_FINE_CELLS,
            settings.LANDMARKS_DENSE_COARSE_CELLS,
            settings.LANDMARKS_DENSE_QUERY_FINE_CELLS,
            settings.LANDMARKS_DENSE_QUERY_COARSE_CELLS,
        ],
        "verify_early_stop": settings.LANDMARKS_VERIFY_EARLY_STOP,
        "shortlist_size": settings.LANDMARKS_SHORTLIST_SIZE,
        "verify_top": settings.LANDMARKS_VERIFY_TOP,
        "min_inliers": extraction.min_inliers(settings.LANDMARKS_EXTRACTOR),
        "hnsw_ef_search": settings.LANDMARKS_HNSW_EF_SEARCH,
        "qe_neighbours": settings.LANDMARKS_QE_NEIGHBOURS,
        "dba_neighbours": settings.LANDMARKS_DBA_NEIGHBOURS,
        "expansion_alpha": settings.LANDMARKS_EXPANSION_ALPHA,
    }


# --- the throw-away catalog ---------------------------------------------------------------


def throwaway_catalog_name(dataset_name: str) -> str:
    """``eval-<dataset>-<UTC timestamp>-<random>``, valid as a catalog name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_name).strip("-.")[:50] or "dataset"
    return f"eval-{slug}-{timezone.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def throwaway_catalog(dataset_name: str) -> Iterator[Catalog]:
    """A new catalog that is deleted, with its rows and stored files, when the block ends
    (normally, on an error or on Ctrl-C)."""
    catalog = services.catalog_get_or_create(name=throwaway_catalog_name(dataset_name))
    # Claim the DBA refresh up front, so that indexing never schedules one in a worker
    # (services.catalog_request_augmentation sees it pending); evaluate runs it itself.
    Catalog.objects.filter(pk=catalog.pk).update(augment_pending=True)
    try:
        yield catalog
    finally:
        try:
            catalog_purge(catalog_id=catalog.pk)
        except (DatabaseError, InterfaceError):
            # Ctrl-C in the middle of a query can leave the connection unusable.
            connection.close()
            catalog_purge(catalog_id=catalog.pk)


def catalog_purge(*, catalog_id: int) -> None:
    """Delete a catalog, its images, descriptors, landmarks and searches, and their files."""
    files = list(CatalogImage.objects.filter(catalog_id=catalog_id).values_list("file", flat=True))
    files += SearchQuery.objects.filter(catalog_id=catalog_id).values_list("image", flat=True)
    Catalog.objects.filter(pk=catalog_id).delete()  # cascades to every row above
    for name in files:
        if name:
            with contextlib.suppress(OSError):
                default_storage.delete(name)
    # Remote storages (S3 and the like) have no local path: Django raises
    # NotImplementedError there, and there are no empty folders to remove.
    with contextlib.suppress(NotImplementedError, OSError):
        root = Path(default_storage.path(f"catalog/{catalog_id}"))
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            folder.rmdir()
        root.rmdir()
    logger.info("deleted throw-away catalog %s", catalog_id)


# --- retrieval ----------------------------------------------------------------------------


def _evaluate_retrieval(
    dataset: RetrievalDataset, evaluation: Evaluation, *, top_k: int | None, progress: bool
) -> None:
    summary = evaluation.summary
    timings: dict[str, list[float]] = {"ingest": [], "index": []}
    with throwaway_catalog(dataset.name) as catalog:
        ids_of, failed, duplicates = _index_catalog(dataset, catalog, timings, progress=progress)
        indexed = sum(len(ids) for ids in ids_of.values())
        if settings.LANDMARKS_DBA_NEIGHBOURS > 1:  # what the worker's catalog_augment task does
            start = time.perf_counter()
            services.catalog_augment(catalog_id=catalog.pk)
            timings["augment"] = [(time.perf_counter() - start) * 1000]
        depth = min(max(1, len(ids_of)), MAX_SEARCH_DEPTH)
        if depth < len(ids_of):
            logger.warning("rankings stop at %d of %d catalog images (pgvector's limit)", depth, len(ids_of))
        outcomes = _run_queries(dataset, catalog, ids_of, timings, depth=depth, progress=progress)
    # Each search asked for `depth` results, so its shortlist (max(shortlist_size, top_k))
    # covered the whole catalog; the first verify_top by similarity were verified.
    summary["settings"].update(search_top_k=depth, ranking_depth=min(top_k or indexed, indexed))
    labels = dataset.landmark_of()
    names = [name for name in RANKINGS if any(name in o.rankings for o in outcomes)]
    rankings: dict[str, dict[str, list[str]]] = {name: {} for name in names}
    for outcome in outcomes:
        for name in names:
            ranked = outcome.rankings.setdefault(name, [])
            if len(ranked) < indexed and outcome.error is None:
                logger.warning("query %s: %d of %d catalog images ranked", outcome.id, len(ranked), indexed)
            rankings[name][outcome.id] = ranked[:top_k] if top_k else ranked
    summary.update(
        kind="retrieval",
        source=dataset.source,
        catalog_images=len(dataset.images),
        indexed_images=indexed,
        failed_images=failed,
        duplicate_images=duplicates,
        queries=len(dataset.queries),
        scored_queries=sum(bool(q.positives) for q in dataset.queries),
        failed_queries=[{"id": o.id, "reason": o.error} for o in outcomes if o.error is not None],
    )
    per_query: dict[str, dict[str, Any]] = {o.id: o.row() for o in outcomes}
    for name in names:
        summary[name] = _clean(retrieval_metrics(rankings[name], dataset.queries))
        for scores in score_queries(rankings[name], dataset.queries):
            per_query[scores.query_id][f"ap_{name}"] = _clean(scores.ap)
        evaluation.pr_curves[name] = [
            pr_curve(rankings[name][q.id], q.positives, q.junk) for q in dataset.queries if q.positives
        ]
    if any(label is not None for label in labels.values()):
        summary["recognition"] = _recognition(dataset.queries, outcomes, labels)
    summary["verification"] = _candidate_inliers(dataset.queries, outcomes, evaluation)
    summary["timings_ms"].update(_medians(timings))
    summary["per_query"] = list(per_query.values())


def _index_catalog(
    dataset: RetrievalDataset, catalog: Catalog, timings: dict[str, list[float]], *, progress: bool
) -> tuple[dict[int, list[str]], list[dict[str, str]], list[dict[str, str]]]:
    """Ingest and index every catalog image in this process.

    Returns:
        catalog image pk -> dataset ids (more than one when files are identical), the
        images that failed (id, reason), and the duplicates (id, same_as).
    """
    ids_of: dict[int, list[str]] = {}
    failed: list[dict[str, str]] = []
    duplicates: list[dict[str, str]] = []
    landmarks: dict[str, Landmark | None] = {}
    for item in tqdm(dataset.images, desc="indexing", unit="img", disable=not progress):
        if item.landmark and item.landmark not in landmarks:
            landmarks[item.landmark] = services.landmark_get_or_create(catalog=catalog, name=item.landmark)
        start = time.perf_counter()
        try:
            result = services.image_ingest(
                catalog=catalog,
                data=item.path.read_bytes(),
                filename=item.path.name,
                landmark=landmarks.get(item.landmark) if item.landmark else None,
                external_id=item.id,
                enqueue=False,
            )
        except (RetrievalError, OSError) as exc:
            failed.append({"id": item.id, "reason": getattr(exc, "message", str(exc))})
            continue
        timings["ingest"].append((time.perf_counter() - start) * 1000)
        if not result.created:
            same_as = ids_of[result.image.pk][0]
            duplicates.append({"id": item.id, "same_as": same_as})
            ids_of[result.image.pk].append(item.id)
            continue
        start = time.perf_counter()
        image = services.image_index(image_id=result.image.pk)
        timings["index"].append((time.perf_counter() - start) * 1000)
        if image is None or image.status != CatalogImage.Status.INDEXED:
            failed.append({"id": item.id, "reason": image.failure_reason if image else "deleted"})
            continue
        ids_of[image.pk] = [item.id]
    return ids_of, failed, duplicates


@dataclasses.dataclass
class _QueryOutcome:
    id: str
    truth: str | None
    rankings: dict[str, list[str]]
    inliers: dict[str, int]
    verified_ids: list[str]
    recognised: str | None = None
    confidence: float | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None
    # Results whose local features were matched (all of them before early stopping).
    checked_ids: set[str] = dataclasses.field(default_factory=set)

    def row(self) -> dict[str, Any]:
        verified = self.rankings["verified"]
        return {
            "id": self.id,
            "landmark": self.truth,
            "top_global": self.rankings["global"][0] if self.rankings["global"] else None,
            "top_verified": verified[0] if verified else None,
            "top_inliers": self.inliers.get(verified[0], 0) if verified else None,
            "verified_results": len(self.verified_ids),
            "recognised": self.recognised,
            "confidence": self.confidence,
            "timings_ms": self.timings,
            "error": self.error,
        }


def _run_queries(
    dataset: RetrievalDataset,
    catalog: Catalog,
    ids_of: Mapping[int, list[str]],
    timings: dict[str, list[float]],
    *,
    depth: int,
    progress: bool,
) -> list[_QueryOutcome]:
    """Search every query as ``POST /api/search`` does, asking for ``depth`` results."""
    labels = dataset.landmark_of()
    outcomes = []
    for query in tqdm(dataset.queries, desc="searching", unit="query", disable=not progress):
        outcome = _QueryOutcome(query.id, _query_truth(query, labels), {"global": [], "verified": []}, {}, [])
        outcomes.append(outcome)
        try:
            created = services.search_create(
                catalog=catalog,
                data=query.path.read_bytes(),
                filename=query.path.name,
                top_k=depth,
                bbox=list(query.bbox) if query.bbox else None,
                enqueue=False,
            )
        except (RetrievalError, OSError) as exc:
            outcome.error = getattr(exc, "message", str(exc))
            continue
        services.search_execute(query_id=created.pk)
        done = selectors.search_get(query_id=created.pk)
        assert done is not None
        outcome.timings = dict(done.timings_ms)
        if done.status != SearchQuery.Status.DONE:
            outcome.error = done.error or done.status
            continue
        for stage, ms in done.timings_ms.items():
            timings.setdefault(stage, []).append(float(ms))
        outcome.recognised = done.landmark_name or None
        outcome.confidence = done.landmark_confidence
        _read_results(done.results, ids_of, outcome)
    return outcomes


def _read_results(
    results: Sequence[Mapping[str, Any]], ids_of: Mapping[int, list[str]], outcome: _QueryOutcome
) -> None:
    """The rankings from a search's results: the final order as it is, the others sorted
    by their score (ties keep the final order, which for unverified results is the
    shortlist order)."""
    entries = [entry for entry in results if entry["image_id"] in ids_of]
    outcome.rankings["verified"] = [i for entry in entries for i in ids_of[entry["image_id"]]]
    positions = [str(n) for n in range(len(entries))]
    scores = {"global": "global_score", "shortlist": "similarity"}
    for name, key in scores.items():
        if entries and all(key in entry for entry in entries):
            order = rank_by_score(positions, [entry[key] for entry in entries])
            outcome.rankings[name] = [i for n in order for i in ids_of[entries[int(n)]["image_id"]]]
    for entry in entries:
        for i in ids_of[entry["image_id"]]:
            outcome.inliers[i] = int(entry["inliers"])
            if entry.get("checked", True):
                outcome.checked_ids.add(i)
            if entry["verified"]:
                outcome.verified_ids.append(i)


def _query_truth(query: QuerySpec, labels: Mapping[str, str | None]) -> str | None:
    """The query's landmark, else the one landmark all its positives share."""
    if query.landmark:
        return query.landmark
    found = {labels.get(i) for i in query.positives}
    return found.pop() if len(found) == 1 and None not in found else None


def _recognition(
    queries: Sequence[QuerySpec], outcomes: Sequence[_QueryOutcome], labels: Mapping[str, str | None]
) -> dict[str, Any]:
    predictions = [(o.recognised, o.confidence if o.confidence is not None else 0.0) for o in outcomes]
    truths = [o.truth for o in outcomes]
    return {
        "accuracy": _clean(recognition_accuracy(predictions, truths)),
        "GAP": _clean(global_average_precision(predictions, truths)),
        "no_match": sum(o.recognised is None for o in outcomes),
        "queries_with_landmark": sum(t is not None for t in truths),
    }


def _candidate_inliers(
    queries: Sequence[QuerySpec], outcomes: Sequence[_QueryOutcome], evaluation: Evaluation
) -> dict[str, Any]:
    """Inliers of the candidates that were verified (the first ``LANDMARKS_VERIFY_TOP`` by
    similarity, fewer when verification stopped early), positives against negatives: how
    well ``LANDMARKS_MIN_INLIERS`` separates them."""
    positive: list[int] = []
    negative: list[int] = []
    for query, outcome in zip(queries, outcomes, strict=True):
        if outcome.error is not None or not query.positives:
            continue
        checked = outcome.rankings.get("shortlist") or outcome.rankings["global"]
        for i in checked[: settings.LANDMARKS_VERIFY_TOP]:
            if i not in outcome.checked_ids:
                continue
            if i in query.positives:
                positive.append(outcome.inliers.get(i, 0))
            elif i not in query.junk:
                negative.append(outcome.inliers.get(i, 0))
    evaluation.inliers["retrieval: positive candidates"] = positive
    evaluation.inliers["retrieval: negative candidates"] = negative
    metrics = pair_metrics(positive, negative)
    return _clean(
        {
            "positive_candidates": len(positive),
            "negative_candidates": len(negative),
            "positive_median_inliers": metrics["median_positive"],
            "negative_median_inliers": metrics["median_negative"],
            "auc": metrics["auc"],
        }
    )


def pr_curve(ranked_ids: Sequence[str], positives: Set[str], junk: Set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each retrieved positive, junk removed first.

    Returns:
        (P,) recall and (P,) precision, P = positives found in ``ranked_ids`` (a positive
        missing from the ranking is never reached, so recall may stop short of 1).
    """
    kept = [i for i in ranked_ids if i not in junk]
    ranks = np.flatnonzero([i in positives for i in kept]).astype(np.float64)
    found = np.arange(1, len(ranks) + 1, dtype=np.float64)
    return found / max(1, len(positives)), found / (ranks + 1.0)


def interpolated_precision(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray = RECALL_GRID) -> np.ndarray:
    """Precision interpolated at each recall level (best precision at that recall or
    beyond; 0 past the last positive found)."""
    out = np.zeros_like(grid)
    for n, level in enumerate(grid):
        reached = precision[recall >= level - 1e-12]
        out[n] = reached.max() if reached.size else 0.0
    return out


# --- pairs --------------------------------------------------------------------------------


def _evaluate_pairs(
    dataset: PairDataset,
    evaluation: Evaluation,
    *,
    seeds: Sequence[int],
    same_place: Sequence[Sequence[str]],
    progress: bool,
) -> None:
    from retrieval.extraction import get_extractor

    from retrieval.vision.extractors import matching_config

    extractor = get_extractor()
    matching = matching_config(extractor.model_name)
    extract_ms: list[float] = []
    # What ties pairs to one place: their image files' digests, the file's ``place`` and
    # the groups given by the caller (``same_place_groups`` joins pairs sharing any).
    digests: list[set[str]] = [{f"place:{pair.place}"} if pair.place else set() for pair in dataset.pairs]
    index = {pair.id: n for n, pair in enumerate(dataset.pairs)}
    for group_number, group in enumerate(same_place):  # ids checked by evaluate()
        for pair_id in group:
            digests[index[pair_id]].add(f"same-place:{group_number}")

    def features_of(n: int, path: Path, *, query: bool) -> ImageFeatures:
        data = path.read_bytes()
        digests[n].add(hashlib.sha256(data).hexdigest())
        try:
            rgb = services.image_decode(data=data)
        except RetrievalError as exc:
            raise DatasetError(f"{path}: {exc.message}") from None
        start = time.perf_counter()
        features = extractor.extract_query(rgb) if query else extractor.extract(rgb)
        extract_ms.append((time.perf_counter() - start) * 1000)
        return features

    # image1 plays the search query (all its sizes), image2 the stored catalog photo.
    first: list[ImageFeatures] = []
    second: list[ImageFeatures] = []
    for pair in tqdm(dataset.pairs, desc="extracting pairs", unit="pair", disable=not progress):
        first.append(features_of(len(first), pair.image1, query=True))
        second.append(features_of(len(second), pair.image2, query=False))
    place = same_place_groups(digests)
    verify_ms: list[float] = []
    rows: list[dict[str, Any]] = []
    # Inlier counts per seed: true_inliers[s][n] is pair n's with seeds[s].
    true_inliers: list[list[int]] = [[] for _ in seeds]
    false_inliers: list[list[int]] = [[] for _ in seeds]
    for n, pair in enumerate(dataset.pairs):
        start = time.perf_counter()
        verifications = _verify_with_seeds(first[n].local_sets, second[n].local, matching, seeds)
        verify_ms.append((time.perf_counter() - start) * 1000 / len(seeds))
        verification = verifications[0]
        error = math.nan
        if verification.homography is not None and len(pair.correspondences):
            error = float(np.median(transfer_errors(verification.homography, pair.correspondences)))
        elif verification.fundamental is not None and len(pair.correspondences):
            error = float(np.median(epipolar_errors(verification.fundamental, pair.correspondences)))
        for counts, v in zip(true_inliers, verifications, strict=True):
            counts.append(v.inliers)
        rows.append(
            {
                "id": pair.id,
                "subset": pair.subset,
                "inliers": verification.inliers,
                "tentative": verification.tentative,
                "transfer_error_px": _clean(error),
            }
        )
    # Pairs that share an image file show the same place: never a mismatched pair.
    others = [[m for m in range(len(rows)) if place[m] != place[n]] for n in range(len(rows))]
    total = sum(len(o) for o in others)
    with tqdm(total=total, desc="mismatched pairs", unit="pair", disable=not progress) as bar:
        for n, row in enumerate(rows):
            against = [_verify_with_seeds(first[n].local_sets, second[m].local, matching, seeds) for m in others[n]]
            bar.update(len(against))
            for s, counts in enumerate(false_inliers):
                counts.extend(v[s].inliers for v in against)
            row["max_false_inliers"] = max((v[0].inliers for v in against), default=None)
    # Medians, histograms and per-pair rows are seed 0's (the server's); the AUC is
    # reported for every seed and as their mean.
    metrics = pair_metrics(true_inliers[0], false_inliers[0])
    aucs = [pair_metrics(t, f)["auc"] for t, f in zip(true_inliers, false_inliers, strict=True)]
    defined = [a for a in aucs if a is not None]
    marked = [row for row, pair in zip(rows, dataset.pairs, strict=True) if len(pair.correspondences)]
    checked = [row["transfer_error_px"] for row in marked]
    errors = [e for e in checked if e is not None]  # a pair without a geometry counts as wrong
    evaluation.inliers["pairs: true"] = true_inliers[0]
    evaluation.inliers["pairs: mismatched"] = false_inliers[0]
    evaluation.summary.setdefault("kind", "pairs")
    evaluation.summary["pairs"] = _clean(
        {
            "name": dataset.name,
            "source": dataset.source,
            "true_pairs": len(true_inliers[0]),
            "false_pairs": len(false_inliers[0]),
            "same_place_skipped": len(rows) * (len(rows) - 1) - total,
            "same_place_given": [list(group) for group in same_place],
            "auc": statistics.fmean(defined) if defined else None,
            "ransac_seeds": len(seeds),
            "auc_by_seed": aucs,
            "auc_min": min(defined, default=None),
            "auc_max": max(defined, default=None),
            "true_median_inliers": metrics["median_positive"],
            "false_median_inliers": metrics["median_negative"],
            "false_max_inliers": max(false_inliers[0], default=None),
            "transfer_error_median_px": statistics.median(errors) if errors else math.nan,
            f"transfer_within_{TRANSFER_OK_PX:g}px": (
                sum(e <= TRANSFER_OK_PX for e in errors) / len(checked) if checked else math.nan
            ),
            "per_pair": rows,
        }
    )
    evaluation.summary["timings_ms"].update(_medians({"pair_extract": extract_ms, "pair_verify": verify_ms}))


def _verify_with_seeds(
    query_sets: Sequence[LocalFeatures], candidate: LocalFeatures, matching: VerificationConfig, seeds: Sequence[int]
) -> list[Verification]:
    """Per RANSAC seed, the best verification over the query's feature sets (as
    ``verify_best`` does for a search); the descriptors are matched once per set."""
    matches = [tentative_matches(features, candidate, matching) for features in query_sets]
    best: list[Verification] = []
    for seed in seeds:
        config = dataclasses.replace(matching, seed=seed)
        results = [
            verify_matches(features.keypoints, candidate.keypoints, found, config)
            for features, found in zip(query_sets, matches, strict=True)
        ]
        best.append(max(results, key=lambda v: v.inliers))  # the first on ties, as verify_best
    return best


def same_place_groups(digests: Sequence[Set[str]]) -> list[int]:
    """Group pairs that share an image file (same content): group number per pair.

    Some public pair sets reuse one photo in two pairs of the same place (WxBS does);
    mismatched pairs are only formed across groups.
    """
    group = list(range(len(digests)))

    def root(n: int) -> int:
        while group[n] != n:
            group[n] = group[group[n]]
            n = group[n]
        return n

    first_seen: dict[str, int] = {}
    for n, found in enumerate(digests):
        for digest in found:
            if digest in first_seen:
                group[root(n)] = root(first_seen[digest])
            else:
                first_seen[digest] = n
    return [root(n) for n in range(len(digests))]


# --- reports ------------------------------------------------------------------------------


STAGE_ORDER = ("ingest", "index", "augment", "queue", "decode", "extract", "shortlist", "verify", "total")


def _medians(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Median per stage, the search stages in pipeline order."""
    stages = sorted(values, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
    return {stage: round(statistics.median(values[stage]), 2) for stage in stages if values[stage]}


def _clean(value: Any) -> Any:
    """JSON-ready: nan -> None, numpy scalars -> Python, floats rounded to 4 decimals."""
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seed_spread(pairs: Mapping[str, Any]) -> str:
    """" (mean of N RANSAC seeds, min-max)" when more than one seed was run."""
    if pairs.get("ransac_seeds", 1) < 2:
        return ""
    return f" (mean of {pairs['ransac_seeds']} RANSAC seeds, {_num(pairs['auc_min'], 3)}-{_num(pairs['auc_max'], 3)})"


def render_text(summary: Mapping[str, Any]) -> str:
    """The summary printed by the command."""
    lines = [f"dataset {summary['dataset']}   model {summary['model']}   {summary['wall_s']} s"]
    if "global" in summary:
        lines.append(
            f"{summary['catalog_images']} catalog images ({summary['indexed_images']} indexed, "
            f"{len(summary['failed_images'])} failed, {len(summary['duplicate_images'])} duplicates), "
            f"{summary['queries']} queries ({len(summary['failed_queries'])} failed)"
        )
        header = "".join(f"{key:>11}" for key in METRIC_KEYS)
        lines.append(f"{'(%)':<10}{header}")
        for name in (n for n in RANKINGS if n in summary):
            lines.append(f"{name:<10}" + "".join(f"{_pct(summary[name][key]):>11}" for key in METRIC_KEYS))
        if "recognition" in summary:
            r = summary["recognition"]
            lines.append(
                f"recognition: accuracy {_pct(r['accuracy'])} %, GAP {_pct(r['GAP'])} %, "
                f"{r['no_match']} of {summary['queries']} no match"
            )
        v = summary["verification"]
        lines.append(
            f"verified candidates: median inliers {_num(v['positive_median_inliers'])} (positives) vs "
            f"{_num(v['negative_median_inliers'])} (negatives), AUC {_num(v['auc'], 3)}"
        )
    if "pairs" in summary:
        p = summary["pairs"]
        lines.append(
            f"pairs: {p['true_pairs']} true, {p['false_pairs']} mismatched; AUC {_num(p['auc'], 3)}{_seed_spread(p)}; "
            "median "
            f"inliers {_num(p['true_median_inliers'])} vs {_num(p['false_median_inliers'])} (max "
            f"{p['false_max_inliers']}); geometry error on the marked points median "
            f"{_num(p['transfer_error_median_px'])} px"
        )
    if summary["timings_ms"]:
        stages = ", ".join(f"{stage} {ms:g}" for stage, ms in summary["timings_ms"].items())
        lines.append(f"median ms: {stages}")
    return "\n".join(lines)


def render_markdown(summary: Mapping[str, Any]) -> str:
    """A person-readable report with tables."""
    s = summary
    out = [f"# Evaluation: {s['dataset']}", ""]
    out += [f"- model: `{s['model']}`", f"- finished: {s['finished_at']}, wall time {s['wall_s']} s"]
    settings_text = ", ".join(f"{key}={value}" for key, value in s["settings"].items())
    out += [f"- settings: {settings_text}", ""]
    if "global" in s:
        out += [
            "## Retrieval",
            "",
            f"{s['catalog_images']} catalog images ({s['indexed_images']} indexed, {len(s['failed_images'])} "
            f"failed, {len(s['duplicate_images'])} duplicates); {s['queries']} queries, {s['scored_queries']} "
            f"with positives, {len(s['failed_queries'])} failed. Values in %. \"global\" ranks the catalog by "
            "the plain cosine similarity of the global descriptors; \"shortlist\" is the order of the pgvector "
            "shortlist (with query expansion and database-side augmentation when enabled); \"verified\" is the "
            "final order after geometric verification.",
            "",
            "| ranking | " + " | ".join(METRIC_KEYS) + " |",
            "|---|" + "---:|" * len(METRIC_KEYS),
        ]
        for name in (n for n in RANKINGS if n in s):
            out.append(f"| {name} | " + " | ".join(_pct(s[name][key]) for key in METRIC_KEYS) + " |")
        out.append("")
        if "recognition" in s:
            r = s["recognition"]
            out += [
                "## Recognition",
                "",
                "| accuracy (%) | GAP (%) | no match |",
                "|---:|---:|---:|",
                f"| {_pct(r['accuracy'])} | {_pct(r['GAP'])} | {r['no_match']} of {s['queries']} |",
                "",
            ]
        v = s["verification"]
        out += [
            "## Verified candidates",
            "",
            f"Inliers of the first {s['settings']['verify_top']} candidates by similarity "
            f"(min_inliers = {s['settings']['min_inliers']}):",
            "",
            "| | candidates | median inliers |",
            "|---|---:|---:|",
            f"| positives | {v['positive_candidates']} | {_num(v['positive_median_inliers'])} |",
            f"| negatives | {v['negative_candidates']} | {_num(v['negative_median_inliers'])} |",
            "",
            f"AUC (positives vs negatives by inliers): {_num(v['auc'], 3)}",
            "",
            "## Queries",
            "",
            "| query | landmark | AP global | AP verified | top result | its inliers | verified results "
            "| recognised | confidence |",
            "|---|---|---:|---:|---|---:|---:|---|---:|",
        ]
        for q in s["per_query"]:
            out.append(
                f"| {q['id']} | {q['landmark'] or ''} | {_pct(q.get('ap_global'))} | {_pct(q.get('ap_verified'))} "
                f"| {q['top_verified'] or ''} | {q['top_inliers'] if q['top_inliers'] is not None else ''} "
                f"| {q['verified_results']} "
                f"| {q['recognised'] or ('error: ' + q['error'] if q['error'] else 'no match')} "
                f"| {_num(q['confidence'], 2) if q['confidence'] is not None else ''} |"
            )
        out.append("")
        if s["failed_images"]:
            out += ["Failed catalog images:", ""] + [f"- {f['id']}: {f['reason']}" for f in s["failed_images"]]
            out.append("")
    if "pairs" in s:
        p = s["pairs"]
        within = next(key for key in p if key.startswith("transfer_within_"))
        out += [
            "## Pairs",
            "",
            f"{p['true_pairs']} true pairs; {p['false_pairs']} mismatched pairs (image1 of each pair against "
            f"image2 of every other pair; {p['same_place_skipped']} combinations of pairs that share an image "
            "file or a place were skipped as the same place"
            + (
                f"; given as the same place: {'; '.join(', '.join(g) for g in p['same_place_given'])}"
                if p.get("same_place_given")
                else ""
            )
            + ").",
            "",
            "| AUC | median inliers, true | median inliers, mismatched | max inliers, mismatched "
            f"| median geometry error (px) | {within.replace('_', ' ')} (%) |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {_num(p['auc'], 3)}{_seed_spread(p)} | {_num(p['true_median_inliers'])} "
            f"| {_num(p['false_median_inliers'])} | {p['false_max_inliers']} | {_num(p['transfer_error_median_px'])} "
            f"| {_pct(p[within])} |",
            "",
            "The AUC is the mean over RANSAC seeds 0..N-1 (`--ransac-seeds N`); the inlier columns and the "
            "rows below are seed 0's, the server's.",
            "",
            "| pair | inliers | tentative | geometry error (px) | max mismatched inliers |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in p["per_pair"]:
            out.append(
                f"| {row['id']} | {row['inliers']} | {row['tentative']} | {_num(row['transfer_error_px'])} "
                f"| {row['max_false_inliers']} |"
            )
        out.append("")
    if s["timings_ms"]:
        out += ["## Timings (median ms)", "", "| stage | ms |", "|---|---:|"]
        out += [f"| {stage} | {ms:g} |" for stage, ms in s["timings_ms"].items()]
        out.append("")
    return "\n".join(out)


def write_plots(evaluation: Evaluation, folder: Path) -> list[Path]:
    """Precision-recall curves (global vs verified) and inlier histograms as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    name = evaluation.summary["dataset"]
    if any(evaluation.pr_curves.values()):
        fig, ax = plt.subplots(figsize=(6, 5))
        styles = (("tab:blue", "-"), ("tab:green", "-"), ("tab:orange", "--"))  # verified dashed: often on top
        for ranking, (color, style) in zip(RANKINGS, styles, strict=True):
            curves = evaluation.pr_curves.get(ranking, [])
            for recall, precision in curves:
                ax.plot(recall, precision, color=color, alpha=0.15, linewidth=0.8)
            if curves:
                mean = np.mean([interpolated_precision(r, p) for r, p in curves], axis=0)
                m_ap = evaluation.summary[ranking]["mAP"]
                label = f"{ranking} (mAP {_pct(m_ap)} %)"
                ax.plot(RECALL_GRID, mean, color=color, linestyle=style, linewidth=2.5, label=label)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"{name}: precision-recall (thin: per query, thick: mean interpolated)", fontsize=9)
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
        written.append(_save(fig, folder / "precision_recall.png"))
    for prefix, filename in (("retrieval", "candidate_inliers.png"), ("pairs", "pair_inliers.png")):
        groups = {key: v for key, v in evaluation.inliers.items() if key.startswith(prefix + ":")}
        if not any(groups.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        top = max(max(v, default=0) for v in groups.values())
        bins = np.arange(0, top + 2) if top <= 60 else np.linspace(0, top + 1, 61)
        for (key, values), color in zip(groups.items(), ("tab:green", "tab:red"), strict=False):
            ax.hist(values, bins=bins, alpha=0.6, color=color, label=f"{key.split(': ')[1]} (n={len(values)})")
        ax.axvline(extraction.min_inliers(settings.LANDMARKS_EXTRACTOR), color="black", linestyle="--", linewidth=1, label="min_inliers")
        ax.set_yscale("log")
        ax.set(xlabel="inliers", ylabel="count")
        ax.set_title(f"{name}: inliers, {prefix}", fontsize=9)
        ax.legend()
        written.append(_save(fig, folder / filename))
    return written


def _save(fig: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
