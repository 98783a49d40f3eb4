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

The datasets are read by :mod:`retrieval.vision.datasets`, the metrics are the
framework-free ones of :mod:`retrieval.vision.metrics`, and :mod:`retrieval.evaluation.report`
renders the summary built here. Dataset format: ``docs/datasets.md``.
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
from collections.abc import Iterator, Mapping, Sequence
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
from retrieval.services.search import SearchConfig
from retrieval.vision.datasets import (
    DatasetError,
    ImagePair,
    PairDataset,
    QuerySpec,
    RetrievalDataset,
    same_place_groups,
)
from retrieval.vision.extractors.base import Extractor
from retrieval.vision.features import ImageFeatures, LocalFeatures
from retrieval.vision.metrics import (
    epipolar_errors,
    global_average_precision,
    pair_metrics,
    pr_curve,
    rank_by_score,
    recognition_accuracy,
    retrieval_metrics,
    score_queries,
    transfer_errors,
)
from retrieval.vision.verification import (
    Verification,
    VerificationConfig,
    most_inliers,
    tentative_matches,
    verify_matches,
)

logger = logging.getLogger(__name__)

# "global": plain cosine similarity of the global descriptors; "shortlist": the order the
# pgvector shortlist returns (with query expansion and database-side augmentation, where
# the search's results report it as "similarity"); "verified": the final order.
RANKINGS = ("global", "shortlist", "verified")
# A true pair's estimated geometry counts as right when its median error on the
# hand-marked points is at most this many pixels: the transfer error of a homography, or
# the symmetric epipolar distance of a fundamental matrix.
TRANSFER_OK_PX = 10.0
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


def evaluate(
    retrieval: RetrievalDataset | None,
    pairs: PairDataset | None,
    *,
    top_k: int | None = None,
    ransac_seeds: int = 1,
    same_place: Sequence[Sequence[str]] = (),
    augment_every: int = 0,
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
        augment_every: retrieval sets: augment the catalog after every N images indexed,
            as a catalog growing by imports is (the first runs in full, later ones
            incrementally: ``services.augmentation``); 0 augments once at the end.
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
        summary["settings"]["augment_every"] = augment_every
        _evaluate_retrieval(retrieval, evaluation, top_k=top_k, augment_every=augment_every, progress=progress)
    if pairs is not None:
        _evaluate_pairs(pairs, evaluation, seeds=range(ransac_seeds), same_place=same_place, progress=progress)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["finished_at"] = timezone.now().isoformat(timespec="seconds")
    return evaluation


def search_settings() -> dict[str, Any]:
    """The settings that shape extraction and search (retrieval adds its ranking depths)."""
    extractor = extraction.extractor_config()
    search = SearchConfig.from_settings()
    return {
        "extractor": extractor.spec,
        "global_image_size": extractor.global_image_size,
        "global_scales": list(extractor.global_scales),
        "max_keypoints": extractor.max_keypoints,
        "max_local_cells": extractor.max_local_cells,
        "dense_cells": [
            extractor.dense_fine_cells,
            extractor.dense_coarse_cells,
            extractor.dense_query_fine_cells,
            extractor.dense_query_coarse_cells,
        ],
        "verify_early_stop": search.verify_early_stop,
        "shortlist_size": search.shortlist_size,
        "verify_top": search.verify_top,
        "min_inliers": extraction.min_inliers(extractor.spec),
        "hnsw_ef_search": search.hnsw_ef_search,
        "qe_neighbours": search.qe_neighbours,
        "dba_neighbours": settings.LANDMARKS_DBA_NEIGHBOURS,
        "expansion_alpha": search.expansion_alpha,
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
    """Delete a catalog, its images, descriptors, landmarks and searches, and their files
    (photos and thumbnails)."""
    images = CatalogImage.objects.filter(catalog_id=catalog_id)
    files = [name for pair in images.values_list("file", "thumbnail") for name in pair]
    files += SearchQuery.objects.filter(catalog_id=catalog_id).values_list("image", flat=True)
    Catalog.objects.filter(pk=catalog_id).delete()  # cascades to every row above
    for name in files:
        if name:
            with contextlib.suppress(OSError):
                default_storage.delete(name)
    # Remote storages (S3 and the like) have no local path: Django raises
    # NotImplementedError there, and there are no empty folders to remove.
    for top in ("catalog", "thumbs"):
        with contextlib.suppress(NotImplementedError, OSError):
            root = Path(default_storage.path(f"{top}/{catalog_id}"))
            for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
                folder.rmdir()
            root.rmdir()
    logger.info("deleted throw-away catalog %s", catalog_id)


# --- retrieval ----------------------------------------------------------------------------


def _evaluate_retrieval(
    dataset: RetrievalDataset, evaluation: Evaluation, *, top_k: int | None, augment_every: int, progress: bool
) -> None:
    summary = evaluation.summary
    timings: dict[str, list[float]] = {"ingest": [], "index": [], "augment": []}
    with throwaway_catalog(dataset.name) as catalog:
        ids_of, failed, duplicates = _index_catalog(
            dataset, catalog, timings, augment_every=augment_every, progress=progress
        )
        indexed = sum(len(ids) for ids in ids_of.values())
        _augment_now(catalog, timings)
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


def _augment_now(catalog: Catalog, timings: dict[str, list[float]]) -> None:
    """What the worker's catalog_augment task does, in this process; afterwards the
    refresh stays claimed, so that indexing never sends one to a worker."""
    if settings.LANDMARKS_DBA_NEIGHBOURS <= 1:
        return
    Catalog.objects.filter(pk=catalog.pk).update(augment_pending=True)
    start = time.perf_counter()
    services.catalog_augment(catalog_id=catalog.pk)
    timings["augment"].append((time.perf_counter() - start) * 1000)
    Catalog.objects.filter(pk=catalog.pk).update(augment_pending=True)


def _index_catalog(
    dataset: RetrievalDataset,
    catalog: Catalog,
    timings: dict[str, list[float]],
    *,
    augment_every: int = 0,
    progress: bool,
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
        if augment_every and len(timings["index"]) % augment_every == 0:
            _augment_now(catalog, timings)
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


# --- pairs --------------------------------------------------------------------------------


@dataclasses.dataclass
class _PairFeatures:
    """Every pair's features: image1 as a search query (all its sizes), image2 as a stored
    catalog photo; ``place[n]`` is pair n's place group (:func:`same_place_groups`)."""

    first: list[ImageFeatures] = dataclasses.field(default_factory=list)
    second: list[ImageFeatures] = dataclasses.field(default_factory=list)
    place: list[int] = dataclasses.field(default_factory=list)
    extract_ms: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _PairInliers:
    """Inlier counts per seed: ``true[s][n]`` is pair n's with ``seeds[s]``; ``false[s]``
    holds every mismatched pair's; ``combinations`` counts the mismatched pairs per seed."""

    true: list[list[int]]
    false: list[list[int]]
    combinations: int = 0


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
    features = _extract_pairs(dataset, extractor, same_place, progress=progress)
    inliers = _PairInliers(true=[[] for _ in seeds], false=[[] for _ in seeds])
    verify_ms: list[float] = []
    rows = _verify_true_pairs(dataset, features, matching, seeds, inliers, verify_ms)
    _verify_mismatched_pairs(rows, features, matching, seeds, inliers, progress=progress)
    evaluation.inliers["pairs: true"] = inliers.true[0]
    evaluation.inliers["pairs: mismatched"] = inliers.false[0]
    evaluation.summary.setdefault("kind", "pairs")
    evaluation.summary["pairs"] = _pairs_summary(dataset, rows, inliers, seeds=seeds, same_place=same_place)
    evaluation.summary["timings_ms"].update(_medians({"pair_extract": features.extract_ms, "pair_verify": verify_ms}))


def _place_keys(dataset: PairDataset, same_place: Sequence[Sequence[str]]) -> list[set[str]]:
    """What ties each pair to a place so far: the file's ``place`` and the groups given by
    the caller (ids checked by :func:`evaluate`); the image digests are added as the files
    are read, and ``same_place_groups`` joins pairs sharing any key."""
    keys: list[set[str]] = [{f"place:{pair.place}"} if pair.place else set() for pair in dataset.pairs]
    index = {pair.id: n for n, pair in enumerate(dataset.pairs)}
    for group_number, group in enumerate(same_place):
        for pair_id in group:
            keys[index[pair_id]].add(f"same-place:{group_number}")
    return keys


def _extract_pairs(
    dataset: PairDataset, extractor: Extractor, same_place: Sequence[Sequence[str]], *, progress: bool
) -> _PairFeatures:
    """Extract image1 of every pair as a search query (all its sizes) and image2 as a
    catalog photo, with the server's extractor; group the pairs by place."""
    keys = _place_keys(dataset, same_place)
    features = _PairFeatures()
    for n, pair in enumerate(tqdm(dataset.pairs, desc="extracting pairs", unit="pair", disable=not progress)):
        features.first.append(_pair_image_features(extractor, pair.image1, keys[n], features.extract_ms, query=True))
        features.second.append(_pair_image_features(extractor, pair.image2, keys[n], features.extract_ms, query=False))
    features.place = same_place_groups(keys)
    return features


def _pair_image_features(
    extractor: Extractor, path: Path, keys: set[str], extract_ms: list[float], *, query: bool
) -> ImageFeatures:
    """Decode and extract one pair image, adding its digest to the pair's place ``keys``
    and the extraction time to ``extract_ms``; a catalog photo's local features go
    through the stored encoding and back."""
    data = path.read_bytes()
    keys.add(hashlib.sha256(data).hexdigest())
    try:
        rgb = services.image_decode(data=data)
    except RetrievalError as exc:
        raise DatasetError(f"{path}: {exc.message}") from None
    start = time.perf_counter()
    features = extractor.extract_query(rgb) if query else extractor.extract(rgb)
    extract_ms.append((time.perf_counter() - start) * 1000)
    if not query:  # as stored: what the server verifies a catalog photo with
        features = dataclasses.replace(features, local=extractor.codec.decode(extractor.codec.encode(features.local)))
    return features


def _verify_true_pairs(
    dataset: PairDataset,
    features: _PairFeatures,
    matching: VerificationConfig,
    seeds: Sequence[int],
    inliers: _PairInliers,
    verify_ms: list[float],
) -> list[dict[str, Any]]:
    """Verify every true pair with each seed (counts into ``inliers.true``); returns the
    per-pair rows, which are seed 0's."""
    rows: list[dict[str, Any]] = []
    for n, pair in enumerate(dataset.pairs):
        start = time.perf_counter()
        verifications = _verify_with_seeds(features.first[n].local_sets, features.second[n].local, matching, seeds)
        verify_ms.append((time.perf_counter() - start) * 1000 / len(seeds))
        verification = verifications[0]
        for counts, v in zip(inliers.true, verifications, strict=True):
            counts.append(v.inliers)
        rows.append(
            {
                "id": pair.id,
                "subset": pair.subset,
                "inliers": verification.inliers,
                "tentative": verification.tentative,
                "transfer_error_px": _clean(_geometry_error(verification, pair)),
            }
        )
    return rows


def _geometry_error(verification: Verification, pair: ImagePair) -> float:
    """Median error of the estimated geometry on the pair's marked points: transfer error
    of a homography, else epipolar distance of a fundamental matrix; nan without either."""
    if verification.homography is not None and len(pair.correspondences):
        return float(np.median(transfer_errors(verification.homography, pair.correspondences)))
    if verification.fundamental is not None and len(pair.correspondences):
        return float(np.median(epipolar_errors(verification.fundamental, pair.correspondences)))
    return math.nan


def _verify_mismatched_pairs(
    rows: list[dict[str, Any]],
    features: _PairFeatures,
    matching: VerificationConfig,
    seeds: Sequence[int],
    inliers: _PairInliers,
    *,
    progress: bool,
) -> None:
    """Verify image1 of each pair against image2 of every pair of another place (counts
    into ``inliers.false``; each row gets its ``max_false_inliers``, seed 0's)."""
    # Pairs that share an image file show the same place: never a mismatched pair.
    place = features.place
    others = [[m for m in range(len(rows)) if place[m] != place[n]] for n in range(len(rows))]
    inliers.combinations = sum(len(o) for o in others)
    with tqdm(total=inliers.combinations, desc="mismatched pairs", unit="pair", disable=not progress) as bar:
        for n, row in enumerate(rows):
            query_sets = features.first[n].local_sets
            against = [_verify_with_seeds(query_sets, features.second[m].local, matching, seeds) for m in others[n]]
            bar.update(len(against))
            for s, counts in enumerate(inliers.false):
                counts.extend(v[s].inliers for v in against)
            row["max_false_inliers"] = max((v[0].inliers for v in against), default=None)


def _pairs_summary(
    dataset: PairDataset,
    rows: list[dict[str, Any]],
    inliers: _PairInliers,
    *,
    seeds: Sequence[int],
    same_place: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """The report's ``pairs`` section. Medians, histograms and per-pair rows are seed 0's
    (the server's); the AUC is reported for every seed and as their mean."""
    true_inliers, false_inliers = inliers.true, inliers.false
    metrics = pair_metrics(true_inliers[0], false_inliers[0])
    aucs = [pair_metrics(t, f)["auc"] for t, f in zip(true_inliers, false_inliers, strict=True)]
    defined = [a for a in aucs if a is not None]
    marked = [row for row, pair in zip(rows, dataset.pairs, strict=True) if len(pair.correspondences)]
    checked = [row["transfer_error_px"] for row in marked]
    errors = [e for e in checked if e is not None]  # a pair without a geometry counts as wrong
    return _clean(
        {
            "name": dataset.name,
            "source": dataset.source,
            "true_pairs": len(true_inliers[0]),
            "false_pairs": len(false_inliers[0]),
            "same_place_skipped": len(rows) * (len(rows) - 1) - inliers.combinations,
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


def _verify_with_seeds(
    query_sets: Sequence[LocalFeatures], candidate: LocalFeatures, matching: VerificationConfig, seeds: Sequence[int]
) -> list[Verification]:
    """Per RANSAC seed, the best verification over the query's feature sets, chosen as
    ``verify_best`` chooses (:func:`most_inliers`); the descriptors are matched once per
    set, not once per seed."""
    matches = [tentative_matches(features, candidate, matching) for features in query_sets]
    best: list[Verification] = []
    for seed in seeds:
        config = dataclasses.replace(matching, seed=seed)
        results = [
            verify_matches(features.keypoints, candidate.keypoints, found, config)
            for features, found in zip(query_sets, matches, strict=True)
        ]
        best.append(most_inliers(results)[1])
    return best


# --- the summary ----------------------------------------------------------------------------


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
