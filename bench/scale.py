"""The catalog at size: HNSW build, shortlist latency and recall, search, DBA updates.

    .venv/bin/python bench/scale.py --images 20000 [--json out.json] [--dataset ../shared/datasets/paris5]
        [--m 16] [--ef-construction 64] [--ef-search 40,100,200] [--queries 200]

Builds a synthetic catalog of N images in a throw-away embedded PostgreSQL (under
``bench/out/scale-db``, deleted at the end unless ``--keep``), with the product's tables,
index expression and search code:

- **global descriptors** drawn around real ones: the dataset's catalog photos are
  extracted with the server's model (cached in ``bench/out``); each synthetic *landmark*
  is a real descriptor moved by noise (``--landmark-noise``), each of its photos the
  landmark moved again (``--photo-noise``), ``--photos-per-landmark`` photos each, so that
  a catalog has tight groups (photos of one place) among near ones (similar places);
- **local features**: every row carries the stored blob of the real photo its landmark
  came from (copied inside PostgreSQL, real size);
- **the HNSW index** is built after the load (as a reindex would), with ``--m`` and
  ``--ef-construction``, on the product's expression (``selectors.search_vector_sql``).

Then reports: index build time; shortlist latency (100 nearest, ``--queries`` new photos
of random landmarks) and recall@100 against exact search, for each ``--ef-search``; the
search without extraction (``services.search_rank``: shortlist with expansion,
verification with the early stop, ranking) for the dataset's real queries; the DBA update
per new image (``services.augmentation``: its neighbours through the index, the rows it
joined refreshed); bytes per image and the database size; the bench's peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

logger = logging.getLogger("bench.scale")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CATALOG = "scale"


def main() -> int:
    args = _arguments()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT))
    db_dir = OUT / "scale-db"
    if db_dir.exists():
        shutil.rmtree(db_dir)
    from searchsite.embedded import EmbeddedPostgres

    postgres = EmbeddedPostgres(db_dir / "postgres")
    os.environ["DATABASE_URL"] = postgres.start()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    os.environ.setdefault("LANDMARKS_DATA_DIR", str(db_dir))
    try:
        result = _run(args)
    finally:
        postgres.stop()
        if not args.keep:
            shutil.rmtree(db_dir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "paris5")
    parser.add_argument("--seed-images", type=int, default=60, help="real catalog photos extracted as seeds")
    parser.add_argument("--photos-per-landmark", type=int, default=20)
    parser.add_argument("--landmark-noise", type=float, default=0.8)
    parser.add_argument("--photo-noise", type=float, default=0.5)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument(
        "--ef-search",
        default="100,200,400",
        help="comma-separated hnsw.ef_search values (the shortlist uses at least 100)",
    )
    parser.add_argument("--queries", type=int, default=200, help="synthetic queries for latency and recall")
    parser.add_argument("--new-images", type=int, default=20, help="images added one by one for the DBA update")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the database under bench/out/scale-db")
    return parser.parse_args()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from retrieval.extraction import get_extractor

    extractor = get_extractor()
    seeds = _seeds(args.dataset, extractor, args.seed_images)
    rng = np.random.default_rng(0)
    centres, centre_seed = _landmarks(seeds["X"], args, rng)
    catalog, model = _catalog(extractor)
    matrix = _load(catalog, model, seeds, centres, centre_seed, args, rng)
    build_s = _build_index(model, m=args.m, ef_construction=args.ef_construction)
    result: dict[str, Any] = {
        "images": args.images,
        "model": f"{model.name}@{model.version}",
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_seconds": round(build_s, 1),
    }
    result["shortlist_uses_index"] = _uses_index(catalog, model, matrix[0])
    result["per_ef_search"] = _shortlists(catalog, model, matrix, centres, args, rng)
    chosen = _chosen(result["per_ef_search"])
    result.update(chosen)
    result.update(_searches(catalog, model, extractor, seeds, ef_search=chosen["ef_search"]))
    result["dba_ms_per_new_image"] = _dba_updates(catalog, model, centres, centre_seed, seeds, args, rng)
    result["dba_ms_per_new_image_in_batch"] = _dba_updates(
        catalog, model, centres, centre_seed, seeds, args, rng, together=True
    )
    result.update(_sizes(args.images))
    result["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _seeds(dataset: Path, extractor: Any, count: int) -> dict[str, Any]:
    """Real global descriptors and blobs of ``count`` catalog photos and the features of
    the dataset's queries, cached in bench/out per dataset and model."""
    from retrieval.services import image_decode
    from retrieval.vision.datasets import load_retrieval_dataset
    from retrieval.vision.preprocessing import crop_bbox

    data = load_retrieval_dataset(dataset)
    cache = OUT / f"scale-seeds-{data.name}-{count}-{extractor.model_name}@{extractor.model_version}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    OUT.mkdir(parents=True, exist_ok=True)
    step = max(1, len(data.images) // count)
    images = data.images[::step][:count]
    blobs, vectors, landmarks = [], [], []
    for image in tqdm(images, desc="extracting seeds", unit="img"):
        features = extractor.extract(image_decode(data=Path(image.path).read_bytes()))
        blobs.append(extractor.codec.encode(features.local))
        vectors.append(features.global_descriptor)
        landmarks.append(image.landmark)
    queries = []
    for query in tqdm(data.queries, desc="extracting queries", unit="img"):
        rgb, _ = crop_bbox(image_decode(data=Path(query.path).read_bytes()), query.bbox)
        queries.append(extractor.extract_query(rgb))
    seeds = {"X": np.stack(vectors), "blobs": blobs, "landmarks": landmarks, "queries": queries}
    cache.write_bytes(pickle.dumps(seeds))
    return seeds


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _noisy(rows: np.ndarray, scale: float, rng: np.random.Generator, block: int = 20_000) -> np.ndarray:
    """Each unit row moved by a random direction of norm ``scale`` (in blocks of rows, so
    that a million 1280-d rows need no float64 copy of them all; the random stream, and
    so the result, is the same as in one piece)."""
    out = np.empty(rows.shape, np.float32)
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        noise = _unit(rng.normal(size=part.shape).astype(np.float32))
        out[start : start + block] = _unit(part + scale * noise)
    return out


def _landmarks(X: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    count = -(-args.images // args.photos_per_landmark)
    seed_of = rng.integers(0, len(X), size=count)
    return _noisy(X[seed_of], args.landmark_noise, rng), seed_of


def _catalog(extractor: Any) -> tuple[Any, Any]:
    from retrieval.models import Catalog
    from retrieval.services import feature_model_ensure

    model = feature_model_ensure(extractor=extractor)
    catalog = Catalog.objects.create(name=CATALOG, active_model=model)
    return catalog, model


def _vector_text(rows: np.ndarray) -> str:
    return "\n".join("[" + ",".join(f"{v:.5f}" for v in row) + "]" for row in rows)


def _load(
    catalog: Any, model: Any, seeds: dict[str, Any], centres: np.ndarray, centre_seed: np.ndarray,
    args: argparse.Namespace, rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Insert N images with descriptors (COPY for the vectors; blobs copied server-side
    from a table of the real ones); returns the (N, D) float32 plain descriptors."""
    from django.db import connection

    from retrieval.models import Landmark

    n, per = args.images, args.photos_per_landmark
    landmark_of = np.arange(n) // per
    matrix = _noisy(centres[landmark_of], args.photo_noise, rng)
    names = [f"{seeds['landmarks'][centre_seed[i]] or 'landmark'} {i}" for i in range(len(centres))]
    created = Landmark.objects.bulk_create([Landmark(catalog=catalog, name=name) for name in names], batch_size=5000)
    landmark_array = "ARRAY[" + ",".join(str(landmark.pk) for landmark in created) + "]"
    with connection.cursor() as cursor:
        cursor.execute("CREATE UNLOGGED TABLE bench_blobs (seed int PRIMARY KEY, blob bytea, num int)")
        for seed, blob in enumerate(seeds["blobs"]):
            cursor.execute("INSERT INTO bench_blobs VALUES (%s, %s, 0)", [seed, blob])
        cursor.execute(f"CREATE UNLOGGED TABLE bench_rows (i int PRIMARY KEY, embedding halfvec({matrix.shape[1]}))")
        chunk = 5000
        for start in tqdm(range(0, n, chunk), desc="loading vectors", unit="chunk"):
            rows = matrix[start : start + chunk]
            text = "\n".join(f"{start + j}\t{line}" for j, line in enumerate(_vector_text(rows).split("\n")))
            cursor.copy_expert("COPY bench_rows (i, embedding) FROM STDIN", io.StringIO(text + "\n"))
        cursor.execute(f"DROP INDEX IF EXISTS {model.hnsw_index_name}")
        seed_array = "ARRAY[" + ",".join(str(int(s)) for s in centre_seed) + "]"
        start = time.perf_counter()
        cursor.execute(
            "INSERT INTO retrieval_catalogimage (catalog_id, landmark_id, file, original_name, external_id, sha256,"
            " status, failure_reason, created_at, updated_at, indexed_at, thumbnail)"
            f" SELECT %s, ({landmark_array})[i / %s + 1], 'scale/' || i || '.jpg', '', i::text, md5(i::text),"
            " 'indexed', '', now(), now(), now(), '' FROM generate_series(0, %s - 1) AS i",
            [catalog.pk, per, n],
        )
        cursor.execute(
            "INSERT INTO retrieval_imagedescriptor (image_id, catalog_id, model_id, embedding, local_features,"
            " num_local, created_at, updated_at)"
            f" SELECT c.id, c.catalog_id, %s, r.embedding, b.blob, 0, now(), now()"
            f" FROM retrieval_catalogimage c JOIN bench_rows r ON r.i = c.external_id::int"
            f" JOIN bench_blobs b ON b.seed = ({seed_array})[r.i / %s + 1] WHERE c.catalog_id = %s",
            [model.pk, per, catalog.pk],
        )
        cursor.execute("DROP TABLE bench_rows")
        cursor.execute("ANALYZE retrieval_imagedescriptor")
    logger.info("loaded %d rows in %.0f s", n, time.perf_counter() - start)
    return matrix


def _build_index(model: Any, *, m: int, ef_construction: int) -> float:
    from django.db import connection

    from retrieval import selectors
    from retrieval.models import ImageDescriptor

    table = ImageDescriptor._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
        start = time.perf_counter()
        cursor.execute(
            f"CREATE INDEX {model.hnsw_index_name} ON {table} USING hnsw "
            f"(({selectors.search_vector_sql(model)}) halfvec_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction}) "
            f"WHERE model_id = {int(model.pk)}"
        )
        return time.perf_counter() - start


def _shortlists(
    catalog: Any, model: Any, matrix: np.ndarray, centres: np.ndarray, args: argparse.Namespace,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:  # fmt: skip
    """Latency and recall@100 of the product's shortlist query for new photos of known
    landmarks, at each ef_search; exact neighbours from the in-memory matrix."""
    from retrieval import selectors
    from retrieval.models import ImageDescriptor

    queries = _noisy(centres[rng.integers(0, len(centres), size=args.queries)], args.photo_noise, rng)
    row_of = dict(
        (int(external), pk)
        for pk, external in ImageDescriptor.objects.filter(catalog=catalog).values_list(
            "image_id", "image__external_id"
        )
    )
    exact = [set(np.argsort(-(matrix @ q))[:100].tolist()) for q in queries]
    rows = []
    for ef in [int(v) for v in args.ef_search.split(",")]:
        latencies, recalls = [], []
        for q, truth in zip(queries, exact, strict=True):
            start = time.perf_counter()
            found = selectors.descriptor_shortlist(catalog=catalog, model=model, query=q, limit=100, ef_search=ef)
            latencies.append((time.perf_counter() - start) * 1000)
            recalls.append(len({row_of[i] for i in truth} & {c.image_id for c in found}) / 100)
        rows.append({
            "ef_search": ef,
            "shortlist_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "shortlist_ms_p95": round(float(np.percentile(latencies, 95)), 2),
            "recall_at_100": round(statistics.fmean(recalls), 4),
        })  # fmt: skip
        logger.info("ef_search %d: %s", ef, rows[-1])
    return rows


def _uses_index(catalog: Any, model: Any, vector: np.ndarray) -> bool:
    """Whether PostgreSQL plans the product's shortlist query on the HNSW index."""
    from django.db import connection

    from retrieval import selectors

    text = "[" + ",".join(f"{float(v):.6g}" for v in vector) + "]"
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + selectors.shortlist_sql(model), {"q": text, "catalog": catalog.pk, "limit": 100})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return model.hnsw_index_name in plan


def _chosen(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The smallest ef_search with recall@100 >= 0.95 (else the best measured)."""
    good = [row for row in rows if row["recall_at_100"] >= 0.95]
    return dict(min(good, key=lambda r: r["ef_search"]) if good else max(rows, key=lambda r: r["recall_at_100"]))


def _searches(catalog: Any, model: Any, extractor: Any, seeds: dict[str, Any], *, ef_search: int) -> dict[str, Any]:
    """The search without extraction for the dataset's real queries, as the worker runs it."""
    import dataclasses

    from retrieval.services.search import SearchConfig, StageTimer, search_rank

    config = dataclasses.replace(SearchConfig.from_settings(), hnsw_ef_search=ef_search)
    totals, verify, depths = [], [], []
    for features in seeds["queries"]:
        timer = StageTimer(queue_ms=0)
        search_rank(
            catalog=catalog, model=model, extractor=extractor, features=features, top_k=10, config=config, timer=timer
        )
        totals.append(timer.total()["total"])
        verify.append(timer.ms["verify"])
        depths.append(timer.ms["verify_depth"])
    return {
        "search_ms_p50": round(statistics.median(totals), 1),
        "search_ms_p95": round(float(np.percentile(totals, 95)), 1),
        "search_verify_ms_p50": round(statistics.median(verify), 1),
        "search_verify_depth_p50": statistics.median(depths),
        "search_queries": len(totals),
    }


def _dba_updates(
    catalog: Any, model: Any, centres: np.ndarray, centre_seed: np.ndarray, seeds: dict[str, Any],
    args: argparse.Namespace, rng: np.random.Generator, *, together: bool = False,
) -> float:  # fmt: skip
    """Median ms to augment one new image incrementally (its row, then the rows it joined);
    ``together``: ms per image when the ``--new-images`` are augmented in one run, as the
    worker does after an import (rows joined by several new images are refreshed once)."""
    from django.conf import settings

    from retrieval.models import CatalogImage, ImageDescriptor
    from retrieval.services.augmentation import descriptors_augment_incremental

    times, added = [], []
    for i in range(args.new_images):
        landmark = int(rng.integers(0, len(centres)))
        vector = _noisy(centres[landmark : landmark + 1], args.photo_noise, rng)[0]
        name = f"new-{'batch' if together else 'one'}-{i}"
        image = CatalogImage.objects.create(
            catalog=catalog, file=f"scale/{name}.jpg", sha256=name, status=CatalogImage.Status.INDEXED
        )
        ImageDescriptor.objects.create(
            image=image, catalog=catalog, model=model, embedding=vector,
            local_features=seeds["blobs"][int(centre_seed[landmark])], num_local=0,
        )  # fmt: skip
        added.append(image.pk)
        if together:
            continue
        start = time.perf_counter()
        descriptors_augment_incremental(
            catalog=catalog, model=model, image_ids=[image.pk], neighbours=settings.LANDMARKS_DBA_NEIGHBOURS
        )
        times.append((time.perf_counter() - start) * 1000)
    if together:
        start = time.perf_counter()
        descriptors_augment_incremental(
            catalog=catalog, model=model, image_ids=added, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS
        )
        return round((time.perf_counter() - start) * 1000 / len(added), 1)
    return round(statistics.median(times), 1)


def _sizes(n: int) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_total_relation_size('retrieval_imagedescriptor'), pg_database_size(current_database())"
        )
        table, database = cursor.fetchone()
    return {"bytes_per_image": round(table / n), "database_bytes": int(database)}


if __name__ == "__main__":
    sys.exit(main())
