"""Searches per second with several clients at once, and how the home page answers meanwhile.

    LANDMARKS_SEARCH_RATE=100000/m make run   # in one terminal (lift the per-IP search limit)
    .venv/bin/python manage.py import_catalog ../shared/datasets/paris5/dataset.json --catalog paris5 --wait
    .venv/bin/python bench/search_load.py ../shared/datasets/paris5 --catalog paris5 --clients 4 --seconds 60

Each client posts the dataset's queries in turn to ``POST /api/search`` (one at a time,
waiting for each answer) until ``--seconds`` have passed; a probe requests ``GET /`` every
half second. Prints searches per second, search latency p50/p90, the home page's latency
p50/p95/max and the number of non-200 answers. Only for a server on this machine: the
URL must be a loopback address.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

logger = logging.getLogger("bench.search_load")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder with dataset.json")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this load test only targets a server on this machine (127.0.0.1 / localhost)")
    if not 1 <= args.clients <= 64 or not 1 <= args.seconds <= 600:
        parser.error("--clients must be 1-64 and --seconds 1-600")

    queries = json.loads((args.dataset / "dataset.json").read_text())["queries"]
    load = Load(dataset=args.dataset, queries=queries, catalog=args.catalog, url=args.url, seconds=args.seconds)
    summary = load.run(clients=args.clients)
    logger.info("%s", json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


@dataclasses.dataclass
class Load:
    """N searching clients and one home-page probe until the deadline; what they saw."""

    dataset: Path
    queries: list[dict]
    catalog: str
    url: str
    seconds: float
    search_ms: list[float] = dataclasses.field(default_factory=list)
    home_ms: list[float] = dataclasses.field(default_factory=list)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    polled: int = 0  # searches answered 202, then polled until done
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def run(self, *, clients: int) -> dict:
        self.deadline = time.monotonic() + self.seconds
        started = time.monotonic()
        threads = [threading.Thread(target=self.client, args=(i * 7,)) for i in range(clients)]
        threads.append(threading.Thread(target=self.probe))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.summary(clients=clients, elapsed=time.monotonic() - started)

    def client(self, offset: int) -> None:
        n = offset
        while time.monotonic() < self.deadline:
            query = self.queries[n % len(self.queries)]
            n += 1
            start = time.perf_counter()
            status = self.search(query)
            with self.lock:
                if status == 200:
                    self.search_ms.append((time.perf_counter() - start) * 1000)
                else:
                    self.errors[f"search {status}"] = self.errors.get(f"search {status}", 0) + 1

    def search(self, query: dict) -> int:
        """POST one query and, when it answers 202 (no waiting slot free), poll as the API says."""
        data = {"catalog": self.catalog, "top_k": "10"}
        if query.get("bbox"):
            data["bbox"] = ",".join(str(v) for v in query["bbox"])
        with open(self.dataset / query["path"], "rb") as handle:
            response = requests.post(f"{self.url}/api/search", data=data, files={"image": handle}, timeout=120)
        if response.status_code == 202:
            with self.lock:
                self.polled += 1
            while response.status_code == 202 and time.monotonic() < self.deadline + 120:
                time.sleep(0.25)
                response = requests.get(response.json()["url"], timeout=60)
        return response.status_code

    def probe(self) -> None:
        while time.monotonic() < self.deadline:
            start = time.perf_counter()
            response = requests.get(f"{self.url}/", timeout=60)
            with self.lock:
                self.home_ms.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    key = f"home {response.status_code}"
                    self.errors[key] = self.errors.get(key, 0) + 1
            time.sleep(0.5)

    def summary(self, *, clients: int, elapsed: float) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            return round(statistics.quantiles(values, n=100)[int(q) - 1], 1) if len(values) >= 2 else None

        search_ms, home_ms = self.search_ms, self.home_ms
        return {
            "clients": clients,
            "seconds": round(elapsed, 1),
            "searches": len(search_ms),
            "searches_per_s": round(len(search_ms) / elapsed, 3),
            "search_ms_p50": round(statistics.median(search_ms), 1) if search_ms else None,
            "search_ms_p90": pct(search_ms, 90),
            "answered_202_then_polled": self.polled,
            "home_requests": len(home_ms),
            "home_ms_p50": round(statistics.median(home_ms), 1) if home_ms else None,
            "home_ms_p95": pct(home_ms, 95),
            "home_ms_max": round(max(home_ms), 1) if home_ms else None,
            "errors": self.errors,
        }


if __name__ == "__main__":
    sys.exit(main())
