"""Search every query of a dataset through a running server's POST /api/search.

Measures what a user sees: is a photo of the right landmark at rank 1, the recognised
landmark, and the time of each search stage (medians over the queries).

    LANDMARKS_SEARCH_RATE=100000/m make run   # in one terminal (lift the per-IP search limit)
    .venv/bin/python manage.py import_catalog ../shared/datasets/paris5/dataset.json --catalog paris5 --wait
    .venv/bin/python bench/search_api.py ../shared/datasets/paris5 --catalog paris5 --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import requests

logger = logging.getLogger("bench.search_api")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder with dataset.json")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--json", type=Path, help="write per-query results here")
    args = parser.parse_args()

    spec = json.loads((args.dataset / "dataset.json").read_text())
    rows = [_search(args.dataset, query, catalog=args.catalog, url=args.url) for query in spec["queries"]]
    summary = _summary(rows)
    logger.info("\n%s", json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "queries": rows}, indent=2))
    return 0 if summary["answered"] == len(rows) else 1


def _search(dataset: Path, query: dict, *, catalog: str, url: str) -> dict:
    """POST one query; its top result, recognition and stage times (or its HTTP error)."""
    data = {"catalog": catalog, "top_k": "10"}
    if query.get("bbox"):
        data["bbox"] = ",".join(str(v) for v in query["bbox"])
    start = time.perf_counter()
    with open(dataset / query["path"], "rb") as handle:
        response = requests.post(f"{url}/api/search", data=data, files={"image": handle}, timeout=300)
    wall_ms = (time.perf_counter() - start) * 1000
    body = response.json()
    if response.status_code != 200:
        logger.error("%s: HTTP %s %s", query["id"], response.status_code, body.get("error"))
        return {"id": query["id"], "ok": False, "status": response.status_code}
    top = body["results"][0] if body["results"] else {}
    row = {
        "id": query["id"],
        "truth": query.get("landmark"),
        "top_landmark": top.get("landmark"),
        "top_is_positive": top.get("external_id") in set(query["positives"]),
        "top_inliers": top.get("inliers"),
        "recognised": (body["landmark"] or {}).get("name"),
        "confidence": (body["landmark"] or {}).get("confidence"),
        "timings_ms": {**body["timings_ms"], "http_wall": round(wall_ms, 1)},
        "ok": True,
    }
    logger.info(
        "%-28s top=%-14s inliers=%-4s recognised=%-14s %.0f ms",
        query["id"], top.get("landmark"), top.get("inliers"), row["recognised"], wall_ms,
    )  # fmt: skip
    return row


def _summary(rows: list[dict]) -> dict:
    done = [r for r in rows if r["ok"]]
    stages = sorted({k for r in done for k in r["timings_ms"]})
    return {
        "queries": len(rows),
        "answered": len(done),
        "rank1_right_landmark": sum(r["top_landmark"] == r["truth"] for r in done),
        "rank1_positive": sum(r["top_is_positive"] for r in done),
        "recognised_right": sum(r["recognised"] == r["truth"] for r in done),
        "no_match": sum(r["recognised"] is None for r in done),
        "median_ms": {
            k: round(statistics.median(r["timings_ms"][k] for r in done if k in r["timings_ms"]), 1) for k in stages
        },
    }


if __name__ == "__main__":
    sys.exit(main())
