"""The catalog at size: HNSW build, shortlist latency and recall, search, DBA updates.

    .venv/bin/python bench/scale.py --images 20000 [--json out.json] [--dataset ../shared/datasets/paris5]
        [--m 16] [--ef-construction 64] [--ef-search 40,100,200] [--queries 200]

Builds a synthetic catalog of N images in a throw-away embedded PostgreSQL (under
``bench/out/scale-db`` or ``--db-dir``, deleted at the end unless ``--keep``), with the product's tables,
index expression and search code:

- **global descriptors** drawn around real ones: the dataset's catalog photos are
  extracted with the server's model (cached in ``bench/out``); each synthetic *landmark*
  is a real descriptor moved by noise (``--landmark-noise``), each of its photos the
  landmark moved again (``--photo-noise``), ``--photos-per-landmark`` photos each, so that
  a catalog has tight groups (photos of one place) among near ones (similar places);
- **local features**: with ``--distractors FOLDER`` (a pair dataset of other places, by
  default ``../shared/datasets/wxbs``), the catalog is the ``--seed-images`` real photos
  themselves (real descriptors, local features and landmarks) plus N minus that many
  synthetic photos whose local features are the stored blobs of the distractor photos
  (each synthetic landmark one of them): a shortlist holds the query's true photos among
  globally similar photos of other places, as in a real catalog. With ``--distractors
  none`` every synthetic photo carries the blob of the real photo its landmark was drawn
  around, so a query's shortlist holds copies of its own photos filed under many
  landmarks and verification never finds a decisive answer (the cost without the early
  stop). Blobs are copied inside PostgreSQL (real size);
- **row order**: ``--order shuffled`` (default) stores the rows in random order, as
  uploads from many sources interleave; ``--order landmark`` stores one landmark's photos
  after another, as a bulk import of one folder per landmark does;
- **the HNSW index** is built after the load (as a reindex would), with ``--m`` and
  ``--ef-construction``, on the product's expression (``selectors.search_vector_sql``).

Then reports: index build time; shortlist latency (100 nearest, ``--queries`` new photos
of random landmarks) and recall@100 against exact search, for each ``--ef-search``; the
search without extraction (``services.search_rank``: shortlist with expansion,
verification with the early stop, ranking) for the dataset's real queries, on the cache
the build left (``cold_search_*``) and after the search worker's prewarm (``search_*``:
``services.search_working_set_prewarm``, what a started search worker does); the DBA update
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
import re
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
    db_dir = args.db_dir
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
    parser.add_argument(
        "--distractors",
        default=str(ROOT.parent / "shared" / "datasets" / "wxbs"),
        help="pair dataset whose photos give the synthetic photos' local features, or 'none'",
    )
    parser.add_argument("--photos-per-landmark", type=int, default=20)
    parser.add_argument("--landmark-noise", type=float, default=0.8)
    parser.add_argument("--photo-noise", type=float, default=0.5)
    parser.add_argument(
        "--order",
        choices=["shuffled", "landmark"],
        default="shuffled",
        help="row order in the table when the index is built: uploads of many sources interleaved, or one"
        " landmark's photos after another (HNSW recall depends on it, bench/README.md)",
    )
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
    parser.add_argument("--keep", action="store_true", help="keep the database (--db-dir)")
    parser.add_argument(
        "--db-dir", type=Path, default=OUT / "scale-db", help="the throw-away database's folder (emptied first)"
    )
    parser.add_argument(
        "--binary-pools",
        default="",
        help="comma-separated pools: also measure an HNSW index on binary_quantize(descriptor) (Hamming), its"
        " pool re-ranked by the halfvec cosine (pgvector's binary quantisation with re-ranking)",
    )
    return parser.parse_args()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from retrieval import services
    from retrieval.extraction import get_extractor

    extractor = get_extractor()
    seeds = _seeds(args.dataset, extractor, args.seed_images)
    others = None if args.distractors == "none" else _distractor_blobs(Path(args.distractors), extractor)
    rng = np.random.default_rng(0)
    synthetic = args.images - (len(seeds["X"]) if others else 0)
    centres, centre_seed = _landmarks(seeds["X"], synthetic, args, rng)
    catalog, model = _catalog(extractor)
    matrix, landmark_of = _load(catalog, model, seeds, others, centres, centre_seed, args, rng)
    # The exact search reads the descriptors from a file: held in memory (5 GB at 1M) they
    # took the page cache the database's rows need, which a server does not pay for.
    np.save(args.db_dir / "matrix.npy", matrix)
    del matrix
    matrix = np.load(args.db_dir / "matrix.npy", mmap_mode="r")
    build_s = _build_index(model, m=args.m, ef_construction=args.ef_construction)
    result: dict[str, Any] = {
        "images": args.images,
        "model": f"{model.name}@{model.version}",
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_seconds": round(build_s, 1),
        "distractors": args.distractors,
        "order": args.order,
    }
    result["shortlist_uses_index"] = _uses_index(catalog, model, matrix[0])[0]
    result["per_ef_search"] = _shortlists(catalog, model, matrix, centres, args, rng)
    chosen = _chosen(result["per_ef_search"])
    if args.binary_pools:
        result["binary_index"] = _binary_shortlists(catalog, model, matrix, centres, args, rng)
    real = np.arange(len(matrix) - len(seeds["X"]), len(matrix)) if others else np.zeros(0, np.int64)
    result["augment_seconds"] = _augment_catalog(catalog, matrix, landmark_of, real)
    result.update(chosen)
    result["search_shortlist_plan"] = _uses_index(
        catalog, model, seeds["queries"][0].global_descriptor, pool=chosen["ef_search"], analyze=True
    )[1]
    # First on whatever the load and the recall test left in memory ("cold_"), then as a
    # started search worker serves them: it reads the search tables and indexes into
    # PostgreSQL's cache with the same service (searchsite/celery.py).
    cold = _searches(catalog, model, extractor, seeds, args.dataset, ef_search=chosen["ef_search"])
    result.update({f"cold_{key}": value for key, value in cold.items()})
    start = time.perf_counter()
    result["hot_relation_bytes"] = sum(r.bytes for r in services.search_working_set_prewarm())
    result["prewarm_seconds"] = round(time.perf_counter() - start, 1)
    result.update(_searches(catalog, model, extractor, seeds, args.dataset, ef_search=chosen["ef_search"]))
    result["dba_ms_per_new_image"] = _dba_updates(catalog, model, centres, centre_seed, seeds, args, rng)
    result["dba_ms_per_new_image_in_batch"] = _dba_updates(
        catalog, model, centres, centre_seed, seeds, args, rng, together=True
    )
    result.update(_sizes(args.images))
    result.update(_worker_memory(args.dataset))
    result["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["bench_rss_mb_at_end"] = round(_rss_bytes() / 2**20, 1)
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


def _distractor_blobs(folder: Path, extractor: Any) -> list[bytes]:
    """Stored blobs of the second photo of each pair of a pair dataset (photos of places
    that are not the seed dataset's), cached in bench/out per dataset and model."""
    from retrieval.services import image_decode
    from retrieval.vision.datasets import load_pair_dataset

    data = load_pair_dataset(folder)
    cache = OUT / f"scale-distractors-{folder.name}-{extractor.model_name}@{extractor.model_version}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    blobs = [
        extractor.codec.encode(extractor.extract(image_decode(data=pair.image2.read_bytes())).local)
        for pair in tqdm(data.pairs, desc="extracting distractors", unit="img")
    ]
    cache.write_bytes(pickle.dumps(blobs))
    return blobs


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


def _landmarks(
    X: np.ndarray, synthetic: int, args: argparse.Namespace, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic landmark centres for ``synthetic`` photos and the seed each was drawn around."""
    count = -(-synthetic // args.photos_per_landmark)
    seed_of = rng.integers(0, len(X), size=count)
    return _noisy(X[seed_of], args.landmark_noise, rng), seed_of


def _catalog(extractor: Any) -> tuple[Any, Any]:
    from retrieval.models import Catalog
    from retrieval.services import feature_model_ensure

    model = feature_model_ensure(extractor=extractor)
    catalog = Catalog.objects.create(name=CATALOG, active_model=model)
    return catalog, model


def _copy_rows(cursor: Any, table: str, first: int, columns: np.ndarray, rows: np.ndarray) -> None:
    """COPY (i, landmark, blob, halfvec) rows into ``table`` (``columns``: (n, 2) int, the
    landmark and blob of each row) in PostgreSQL's binary format (pgvector's
    ``halfvec_recv``: int16 dim, int16 unused, big-endian float16 values), built with
    numpy: ~20x faster than formatting the vectors as text."""
    n, dim = rows.shape
    tuples = np.zeros(n, np.dtype([
        ("fields", ">i2"), ("i_len", ">i4"), ("i", ">i4"), ("l_len", ">i4"), ("landmark", ">i4"),
        ("b_len", ">i4"), ("blob", ">i4"), ("v_len", ">i4"),
        ("dim", ">i2"), ("unused", ">i2"), ("v", ">f2", (dim,)),
    ]))  # fmt: skip
    tuples["fields"], tuples["v_len"], tuples["dim"] = 4, 4 + 2 * dim, dim
    tuples["i_len"] = tuples["l_len"] = tuples["b_len"] = 4
    tuples["i"] = np.arange(first, first + n)
    tuples["landmark"], tuples["blob"] = columns[:, 0], columns[:, 1]
    tuples["v"] = rows
    data = b"PGCOPY\n\xff\r\n\x00" + bytes(8) + tuples.tobytes() + b"\xff\xff"
    cursor.copy_expert(f"COPY {table} (i, landmark, blob, embedding) FROM STDIN WITH (FORMAT binary)", io.BytesIO(data))


def _load(
    catalog: Any, model: Any, seeds: dict[str, Any], others: list[bytes] | None, centres: np.ndarray,
    centre_seed: np.ndarray, args: argparse.Namespace, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Insert N images with descriptors (binary COPY for the vectors; blobs copied
    server-side from a table of the real ones); returns the (N, D) float32 plain
    descriptors in row order (the seed photos last when ``others`` is given) and each
    row's landmark (an index into the landmarks created)."""
    from django.db import connection

    from retrieval.models import Landmark

    per = args.photos_per_landmark
    synthetic = args.images - (len(seeds["X"]) if others else 0)
    landmark_of = np.arange(synthetic) // per
    matrix = _noisy(centres[landmark_of], args.photo_noise, rng)
    names = [f"{seeds['landmarks'][centre_seed[i]] or 'landmark'} {i}" for i in range(len(centres))]
    blobs = list(seeds["blobs"])
    if others:
        # Each synthetic landmark shows one place of the distractor set; the seed photos
        # follow as themselves, under their real landmarks.
        blob_of = len(blobs) + landmark_of % len(others)
        blobs += others
        real = sorted({name or "unnamed" for name in seeds["landmarks"]})
        landmark_of = np.concatenate([landmark_of, len(names) + np.array(
            [real.index(name or "unnamed") for name in seeds["landmarks"]]
        )])  # fmt: skip
        names += real
        blob_of = np.concatenate([blob_of, np.arange(len(seeds["X"]))])
        matrix = np.concatenate([matrix, seeds["X"].astype(np.float32)])
    else:
        blob_of = centre_seed[landmark_of]
    created = Landmark.objects.bulk_create([Landmark(catalog=catalog, name=name) for name in names], batch_size=5000)
    landmark_pk = np.array([landmark.pk for landmark in created])[landmark_of]
    columns = np.stack([landmark_pk, blob_of], axis=1)
    with connection.cursor() as cursor:
        cursor.execute("CREATE UNLOGGED TABLE bench_blobs (blob int PRIMARY KEY, data bytea)")
        for index, blob in enumerate(blobs):
            cursor.execute("INSERT INTO bench_blobs VALUES (%s, %s)", [index, blob])
        cursor.execute(
            "CREATE UNLOGGED TABLE bench_rows (i int PRIMARY KEY, landmark int, blob int,"
            f" embedding halfvec({matrix.shape[1]}))"
        )
        chunk = 5000
        for start in tqdm(range(0, len(matrix), chunk), desc="loading vectors", unit="chunk"):
            _copy_rows(cursor, "bench_rows", start, columns[start : start + chunk], matrix[start : start + chunk])
        cursor.execute(f"DROP INDEX IF EXISTS {model.hnsw_index_name}")
        start = time.perf_counter()
        cursor.execute(
            "INSERT INTO retrieval_catalogimage (catalog_id, landmark_id, file, original_name, external_id, sha256,"
            " status, failure_reason, created_at, updated_at, indexed_at, thumbnail)"
            " SELECT %s, r.landmark, 'scale/' || r.i || '.jpg', '', r.i::text, md5(r.i::text),"
            " 'indexed', '', now(), now(), now(), '' FROM bench_rows r"
            f" ORDER BY {'md5(r.i::text)' if args.order == 'shuffled' else 'r.i'}",
            [catalog.pk],
        )
        cursor.execute(
            "INSERT INTO retrieval_imagedescriptor (image_id, catalog_id, model_id, embedding, local_features,"
            " num_local, created_at, updated_at)"
            " SELECT c.id, c.catalog_id, %s, r.embedding, b.data, 0, now(), now()"
            " FROM retrieval_catalogimage c JOIN bench_rows r ON r.i = c.external_id::int"
            " JOIN bench_blobs b ON b.blob = r.blob WHERE c.catalog_id = %s ORDER BY c.id",
            [model.pk, catalog.pk],
        )
        cursor.execute("DROP TABLE bench_rows")
        cursor.execute("ANALYZE retrieval_imagedescriptor")
    logger.info("loaded %d rows in %.0f s", len(matrix), time.perf_counter() - start)
    return matrix, landmark_of


def _augment_catalog(catalog: Any, matrix: np.ndarray, landmark_of: np.ndarray, real: np.ndarray) -> float:
    """Give every row its DBA descriptor and neighbour list, as the first augmentation of a
    real catalog does (``services.augmentation``), so that the search and the DBA update
    run on the steady state. The k nearest rows are found within each row's landmark: by
    construction photos of one landmark are ~0.8 apart in cosine and those of different
    landmarks ~0.5, so this is the exact kNN at a fraction of its cost. The ``real`` rows
    (the seed photos, whose nearest rows are the synthetic photos drawn around them) are
    searched against every row. Binary COPY."""
    from django.conf import settings
    from django.db import connection

    from retrieval.models import DescriptorAugmentation
    from retrieval.vision.expansion import augment_from_neighbours, exact_neighbours

    start = time.perf_counter()
    k, alpha = settings.LANDMARKS_DBA_NEIGHBOURS, settings.LANDMARKS_EXPANSION_ALPHA
    descriptor_of = np.zeros(len(matrix), np.int64)
    image_of = np.zeros(len(matrix), np.int64)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.external_id::int, d.id, c.id FROM retrieval_imagedescriptor d JOIN retrieval_catalogimage c"
            " ON c.id = d.image_id WHERE c.catalog_id = %s AND c.external_id <> ''",
            [catalog.pk],
        )
        for row, descriptor, image in cursor.fetchall():
            descriptor_of[row], image_of[row] = descriptor, image
    order = np.argsort(landmark_of, kind="stable")
    bounds = np.flatnonzero(np.diff(landmark_of[order])) + 1
    groups = [rows[~np.isin(rows, real)] for rows in np.split(order, bounds)]
    table = DescriptorAugmentation._meta.db_table
    pending: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}

    def add(size: int, part: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], *, flush: bool = False) -> None:
        """Queue rows of one neighbour count; COPY them every 2000 landmarks (bounded memory)."""
        pending.setdefault(size, []).append(part)
        for count, parts in pending.items():
            if parts and (flush or len(parts) >= 2000):
                data = _augmentation_copy(*(np.concatenate([p[i] for p in parts]) for i in range(4)), k=count)
                with connection.cursor() as cursor:
                    cursor.copy_expert(
                        f"COPY {table} (descriptor_id, embedding, neighbours, similarities)"
                        " FROM STDIN WITH (FORMAT binary)",
                        io.BytesIO(data),
                    )
                parts.clear()

    for rows in tqdm([g for g in groups if len(g)], desc="augmenting", unit="landmark"):
        top, sims = exact_neighbours(matrix[rows], neighbours=k)
        augmented = augment_from_neighbours(matrix[rows][top], sims, alpha=alpha)
        add(top.shape[1], (descriptor_of[rows], augmented, image_of[rows][top], sims))
    for row in real:
        similarity = matrix @ matrix[row]
        top = np.argsort(-similarity)[:k][None, :]
        augmented = augment_from_neighbours(matrix[top], similarity[top], alpha=alpha)
        add(k, (descriptor_of[[row]], augmented, image_of[top], similarity[top]))
    add(k, (np.zeros(0, np.int64), np.zeros((0, matrix.shape[1]), np.float32), np.zeros((0, k), np.int64),
            np.zeros((0, k), np.float32)), flush=True)  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")
    return round(time.perf_counter() - start, 1)


def _augmentation_copy(
    descriptors: np.ndarray, vectors: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, *, k: int
) -> bytes:
    """PostgreSQL binary COPY data for (bigint, halfvec, bigint[k], float8[k]) rows."""
    n, dim = vectors.shape

    def array(kind: str) -> list[tuple[str, str, tuple[int, ...]] | tuple[str, str]]:
        # one-dimensional array: ndim, has-null flag, element type OID, length, lower bound, (length, value)s
        return [
            (f"{kind}_len", ">i4"), (f"{kind}_ndim", ">i4"), (f"{kind}_null", ">i4"), (f"{kind}_oid", ">i4"),
            (f"{kind}_size", ">i4"), (f"{kind}_lbound", ">i4"), (f"{kind}_items", [("len", ">i4"), ("value", ">i8" if kind == "n" else ">f8")], (k,)),
        ]  # fmt: skip

    layout = np.dtype(
        [("fields", ">i2"), ("d_len", ">i4"), ("d", ">i8"), ("v_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"),
         ("v", ">f2", (dim,))] + array("n") + array("s")
    )  # fmt: skip
    rows = np.zeros(n, layout)
    rows["fields"], rows["d_len"], rows["d"] = 4, 8, descriptors
    rows["v_len"], rows["dim"], rows["v"] = 4 + 2 * dim, dim, vectors
    for kind, oid, values in (("n", 20, neighbours), ("s", 701, similarities)):
        rows[f"{kind}_len"] = 20 + 12 * k
        rows[f"{kind}_ndim"], rows[f"{kind}_oid"], rows[f"{kind}_size"], rows[f"{kind}_lbound"] = 1, oid, k, 1
        rows[f"{kind}_items"]["len"] = 8
        rows[f"{kind}_items"]["value"] = values
    return b"PGCOPY\n\xff\r\n\x00" + bytes(8) + rows.tobytes() + b"\xff\xff"


def _build_index(
    model: Any, *, m: int, ef_construction: int, name: str = "", expression: str = "", ops: str = "halfvec_cosine_ops"
) -> float:
    """Seconds to build an HNSW index on the model's rows: the product's (its name and
    expression) unless ``name`` and ``expression`` say otherwise."""
    from django.db import connection

    from retrieval import selectors
    from retrieval.models import ImageDescriptor

    table = ImageDescriptor._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
        start = time.perf_counter()
        cursor.execute(
            f"CREATE INDEX {name or model.hnsw_index_name} ON {table} USING hnsw "
            f"(({expression or selectors.search_vector_sql(model)}) {ops}) "
            f"WITH (m = {m}, ef_construction = {ef_construction}) WHERE model_id = {int(model.pk)}"
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
    exact = [set(row.tolist()) for row in _exact_top(matrix, queries, 100)]
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


def _binary_shortlists(
    catalog: Any, model: Any, matrix: np.ndarray, centres: np.ndarray, args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    """pgvector's binary quantisation with re-ranking, for comparison with the product's
    halfvec index: an HNSW index on the descriptor's signs (Hamming distance) proposes
    ``pool`` rows, the halfvec cosine ranks them, the first 100 count. The index is
    dropped afterwards (the product's search never uses it)."""
    from django.db import connection

    from retrieval.models import ImageDescriptor

    table = ImageDescriptor._meta.db_table
    dim = int(model.global_dim)
    bits = f"binary_quantize(embedding::halfvec({dim}))::bit({dim})"
    name = f"{model.hnsw_index_name}_bq"
    seconds = _build_index(
        model, m=args.m, ef_construction=args.ef_construction, name=name, expression=bits, ops="bit_hamming_ops"
    )
    result: dict[str, Any] = {"build_seconds": round(seconds, 1)}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s::regclass)", [name])
        result["index_bytes"] = int(cursor.fetchone()[0])
    queries = _noisy(centres[rng.integers(0, len(centres), size=args.queries)], args.photo_noise, rng)
    exact = [set(row.tolist()) for row in _exact_top(matrix, queries, 100)]
    external = dict(ImageDescriptor.objects.filter(catalog=catalog).values_list("image_id", "image__external_id"))
    sql = (
        f"SELECT image_id FROM (SELECT image_id, embedding FROM {table} WHERE model_id = {int(model.pk)} "
        f"AND catalog_id = %(catalog)s ORDER BY {bits} <~> binary_quantize(%(q)s::halfvec({dim})) LIMIT %(pool)s) p "
        f"ORDER BY embedding::halfvec({dim}) <=> %(q)s::halfvec({dim}) LIMIT 100"
    )
    result["per_pool"] = []
    for pool in [int(v) for v in args.binary_pools.split(",")]:
        latencies, recalls = [], []
        with connection.cursor() as cursor:
            cursor.execute("SET hnsw.ef_search = %s", [pool])
            for q, truth in zip(queries, exact, strict=True):
                text = "[" + ",".join(f"{float(v):.6g}" for v in q) + "]"
                start = time.perf_counter()
                cursor.execute(sql, {"catalog": catalog.pk, "q": text, "pool": pool})
                found = {int(external[image_id]) for (image_id,) in cursor.fetchall()}
                latencies.append((time.perf_counter() - start) * 1000)
                recalls.append(len(truth & found) / 100)
            cursor.execute("RESET hnsw.ef_search")
        result["per_pool"].append({
            "pool": pool,
            "shortlist_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "shortlist_ms_p95": round(float(np.percentile(latencies, 95)), 2),
            "recall_at_100": round(statistics.fmean(recalls), 4),
        })  # fmt: skip
        logger.info("binary index, pool %d: %s", pool, result["per_pool"][-1])
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {name}")
    return result


def _exact_top(matrix: np.ndarray, queries: np.ndarray, k: int, block: int = 100_000) -> np.ndarray:
    """(Q, k) row indices of the k largest ``queries @ matrix.T``, one pass over the
    (N, D) matrix in blocks (it may be a memory-mapped file)."""
    best_rows = np.zeros((len(queries), 0), np.int64)
    best_sims = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(matrix), block):
        part = np.asarray(matrix[start : start + block])
        sims = np.concatenate([best_sims, queries @ part.T], axis=1)
        ids = np.arange(start, start + len(part))
        rows = np.concatenate([best_rows, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        keep = np.argpartition(-sims, k, axis=1)[:, :k] if sims.shape[1] > k else np.argsort(-sims, axis=1)
        best_rows, best_sims = np.take_along_axis(rows, keep, 1), np.take_along_axis(sims, keep, 1)
    return best_rows


def _uses_index(
    catalog: Any, model: Any, vector: np.ndarray, *, pool: int = 200, analyze: bool = False
) -> tuple[bool, list[str]]:
    """Whether PostgreSQL plans the product's shortlist query on the HNSW index, and the
    plan (run, with its buffer reads, when ``analyze``)."""
    from django.db import connection

    from retrieval import selectors

    text = "[" + ",".join(f"{float(v):.6g}" for v in vector) + "]"
    with connection.cursor() as cursor:
        cursor.execute("SET hnsw.ef_search = %s", [pool])
        cursor.execute(
            ("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ") + selectors.shortlist_sql(model),
            {"q": text, "catalog": catalog.pk, "limit": 100, "pool": pool},
        )
        plan = [re.sub(r"'\[[^']*\]'", "'[...]'", row[0]) for row in cursor.fetchall()]
        cursor.execute("RESET hnsw.ef_search")
    return any(model.hnsw_index_name in line for line in plan), plan


def _chosen(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The smallest ef_search with recall@100 >= 0.95 (else the best measured)."""
    good = [row for row in rows if row["recall_at_100"] >= 0.95]
    return dict(min(good, key=lambda r: r["ef_search"]) if good else max(rows, key=lambda r: r["recall_at_100"]))


def _searches(
    catalog: Any, model: Any, extractor: Any, seeds: dict[str, Any], dataset: Path, *, ef_search: int
) -> dict[str, Any]:
    """The search without extraction for the dataset's real queries, as the worker runs it;
    ``search_recognised``: queries whose recognised landmark is their own (synthetic
    landmarks are named after the real one they were drawn around, plus a number)."""
    import dataclasses

    from retrieval.services.search import SearchConfig, StageTimer, search_rank
    from retrieval.vision.datasets import load_retrieval_dataset

    truths = [query.landmark for query in load_retrieval_dataset(dataset, check_files=False).queries]
    config = dataclasses.replace(SearchConfig.from_settings(), hnsw_ef_search=ef_search)
    totals, shortlist, verify, depths, recognised = [], [], [], [], 0
    for features, truth in zip(seeds["queries"], truths, strict=True):
        timer = StageTimer(queue_ms=0)
        outcome = search_rank(
            catalog=catalog, model=model, extractor=extractor, features=features, top_k=10, config=config, timer=timer
        )
        totals.append(timer.total()["total"])
        shortlist.append(timer.ms["shortlist"])
        verify.append(timer.ms["verify"])
        depths.append(timer.ms["verify_depth"])
        if outcome.recognition is not None and truth and outcome.recognition.landmark.split(" ")[0] == truth:
            recognised += 1
    return {
        "search_ms_p50": round(statistics.median(totals), 1),
        "search_ms_p95": round(float(np.percentile(totals, 95)), 1),
        "search_shortlist_ms_p50": round(statistics.median(shortlist), 1),
        "search_verify_ms_p50": round(statistics.median(verify), 1),
        "search_verify_depth_p50": statistics.median(depths),
        "search_queries": len(totals),
        "search_recognised": recognised,
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


def _worker_memory(dataset: Path) -> dict[str, float]:
    """A worker's RSS on this catalog, measured in a process of its own (this one holds
    the exact-search matrix): ``bench/worker_memory.py``."""
    import subprocess

    from django.db import connections

    connections.close_all()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "worker_memory.py"), str(dataset)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
