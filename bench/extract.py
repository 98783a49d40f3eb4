"""Time feature extraction per image (global + local) with the configured extractor.

    .venv/bin/python bench/extract.py ../shared/datasets/paris5 --limit 40 [--spec effnet-lite0-gem+rootsift]

Runs in one process on this machine's CPU, like one Celery indexing worker; reports the
median and 90th percentile of decode, global and local extraction per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

logger = logging.getLogger("bench.extract")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--spec", help="extractor spec (default: LANDMARKS_EXTRACTOR)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # after Django's LOGGING
    from retrieval.extraction import get_extractor
    from retrieval.services import image_decode

    spec = json.loads((args.dataset / "dataset.json").read_text())
    paths = [args.dataset / item["path"] for item in spec["images"][: args.limit]]
    extractor = get_extractor(args.spec)
    extractor.extract(image_decode(data=paths[0].read_bytes()))  # warm-up (tracing)
    times: dict[str, list[float]] = {"decode": [], "global": [], "local": [], "total": []}
    for path in paths:
        t0 = time.perf_counter()
        rgb = image_decode(data=path.read_bytes())
        t1 = time.perf_counter()
        extractor.global_extractor.extract_global(rgb)  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        extractor.local_extractor.extract_local(rgb)  # type: ignore[attr-defined]
        t3 = time.perf_counter()
        for key, value in (("decode", t1 - t0), ("global", t2 - t1), ("local", t3 - t2), ("total", t3 - t0)):
            times[key].append(value * 1000)
    report = {
        key: {"median_ms": round(statistics.median(v), 1), "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 1)}
        for key, v in times.items()
    }
    logger.info("%s on %d images:\n%s", extractor.model_name, len(paths), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
