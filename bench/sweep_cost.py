"""What the recovery sweep costs on a large catalog when there is nothing to recover.

    .venv/bin/python bench/scale.py --images 100000 --queries 20 --keep --db-dir /tmp/scaledb
    .venv/bin/python bench/sweep_cost.py --db-dir /tmp/scaledb [--runs 7]

Starts the PostgreSQL that ``scale.py --keep`` left in ``--db-dir`` (and a Redis of its
own), applies the migrations, marks every catalog augmented now (the steady state: the
sweep finds nothing), then times ``recovery.work_sweep()`` (beat sends it every
``LANDMARKS_SWEEP_SECONDS``) and prints the plan of its "catalogs changed since their last
DBA refresh" query with the buffers it reads.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.sweep_cost")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-dir", type=Path, required=True, help="a scale.py --keep database folder")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT))
    from searchsite.embedded import EmbeddedPostgres, EmbeddedRedis

    postgres, redis = EmbeddedPostgres(args.db_dir / "postgres"), EmbeddedRedis(args.db_dir / "redis")
    os.environ["DATABASE_URL"] = postgres.start()
    os.environ["REDIS_URL"] = redis.start(persist=False)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    os.environ["LANDMARKS_DATA_DIR"] = str(args.db_dir)
    try:
        _measure(args.runs)
    finally:
        redis.stop()
        postgres.stop()
    return 0


def _measure(runs: int) -> None:
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from django.core.management import call_command
    from django.utils import timezone

    from retrieval import recovery
    from retrieval.models import Catalog, ImageDescriptor

    call_command("migrate", verbosity=0)
    Catalog.objects.update(augmented_at=timezone.now(), augment_pending=False)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        report = recovery.work_sweep()
        times.append((time.perf_counter() - start) * 1000)
    logger.info("%d descriptor rows; sweep %s", ImageDescriptor.objects.count(), report)
    logger.info("sweep ms p50 %.1f (runs: %s)", statistics.median(times), ", ".join(f"{t:.1f}" for t in times))
    logger.info("%s", recovery.stale_augmentations().explain(analyze=True, buffers=True))


if __name__ == "__main__":
    sys.exit(main())
