"""Resident memory of a worker process on a catalog (run by ``scale.py`` on its database).

A fresh process does what a worker does, on the catalog ``scale`` of the database in
``DATABASE_URL``: loads and warms the extractor (``searchsite.celery``), extracts each
query photo of the dataset and runs the search service on it (shortlist, verification,
ranking; the search worker), then extracts ``--photos`` catalog photos and refreshes the
augmentation of as many rows through the index (the index worker's extraction and
incremental DBA). Prints JSON: RSS after the extractor's load and the peak over all of it.

    DATABASE_URL=... .venv/bin/python bench/worker_memory.py ../shared/datasets/paris5 [--photos 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ``getrusage``'s maxrss, which Linux keeps
    across ``execve``, it starts again with the program, not with the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--catalog", default="scale")
    parser.add_argument("--photos", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    from django.conf import settings

    from retrieval import services
    from retrieval.extraction import get_extractor
    from retrieval.models import Catalog, ImageDescriptor
    from retrieval.services.augmentation import descriptors_augment_incremental
    from retrieval.services.search import SearchConfig, StageTimer, search_rank
    from retrieval.vision.datasets import load_retrieval_dataset
    from retrieval.vision.preprocessing import crop_bbox

    extractor = get_extractor()
    extractor.warm_up()
    loaded = _rss_mb()
    catalog = Catalog.objects.select_related("active_model").get(name=args.catalog)
    model = catalog.active_model
    data = load_retrieval_dataset(args.dataset)
    config = SearchConfig.from_settings()
    for query in data.queries:
        rgb, _ = crop_bbox(services.image_decode(data=Path(query.path).read_bytes()), query.bbox)
        features = extractor.extract_query(rgb)
        search_rank(
            catalog=catalog, model=model, extractor=extractor, features=features, top_k=10, config=config,
            timer=StageTimer(queue_ms=0),
        )  # fmt: skip
    for image in data.images[: args.photos]:
        extractor.extract(services.image_decode(data=Path(image.path).read_bytes()))
    rows = list(
        ImageDescriptor.objects.filter(catalog=catalog, model=model).order_by("?").values_list("image_id", flat=True)[
            : args.photos
        ]
    )
    descriptors_augment_incremental(
        catalog=catalog, model=model, image_ids=rows, neighbours=settings.LANDMARKS_DBA_NEIGHBOURS
    )
    peak = _peak_rss_mb()
    print(json.dumps({"worker_rss_mb_after_load": round(loaded, 1), "worker_peak_rss_mb": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
