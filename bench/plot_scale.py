"""The scale curve of ``bench/scale.py`` runs as one figure (bench/README.md).

    .venv/bin/python bench/plot_scale.py bench/out/scale-10k-s12.json bench/out/scale-100k-s12.json \\
        bench/out/scale-1m-s12.json --out bench/scale.svg

Four panels against the catalog size (log scale): shortlist p50 / p95 and recall@100 at
the chosen ef_search, search p50 (extraction excluded) cold and after the prewarm, DBA
per new photo (alone, in a batch), with issue 10's bars as dashed lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files of bench/scale.py --json")
    parser.add_argument("--out", type=Path, default=Path("bench/scale.svg"))
    args = parser.parse_args()
    runs = sorted((json.loads(path.read_text()) for path in args.runs), key=lambda run: run["images"])
    sizes = [run["images"] for run in runs]

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8), constrained_layout=True)
    shortlist, recall, search, dba = axes
    shortlist.plot(sizes, [r["shortlist_ms_p50"] for r in runs], "o-", label="p50")
    shortlist.plot(sizes, [r["shortlist_ms_p95"] for r in runs], "s--", label="p95")
    shortlist.axhline(20, color="grey", linestyle=":", label="bar (p50)")
    shortlist.set(title="shortlist (index search), ms", ylim=(0, None))
    recall.plot(sizes, [r["recall_at_100"] for r in runs], "o-", label="recall@100")
    recall.axhline(0.95, color="grey", linestyle=":", label="bar")
    recall.set(title="recall@100 against exact search", ylim=(0.9, 1.0))
    for run, size in zip(runs, sizes, strict=True):
        recall.annotate(f"ef {run['ef_search']}", (size, run["recall_at_100"]), textcoords="offset points", xytext=(4, -12))
    search.plot(sizes, [r["search_ms_p50"] for r in runs], "o-", label="p50 after the prewarm")
    search.plot(sizes, [r.get("cold_search_ms_p50", float("nan")) for r in runs], "s--", label="p50 on a cold cache")
    search.axhline(300, color="grey", linestyle=":", label="bar")
    search.set(title="search without extraction, ms", ylim=(0, None))
    dba.plot(sizes, [r["dba_ms_per_new_image"] for r in runs], "o-", label="alone")
    dba.plot(sizes, [r["dba_ms_per_new_image_in_batch"] for r in runs], "s--", label="in a batch of 20")
    dba.axhline(50, color="grey", linestyle=":", label="bar")
    dba.set(title="DBA update per new photo, ms", ylim=(0, None))
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("catalog images")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
