"""Calibrate the near-duplicate test on real photos (no database needed):
LANDMARKS_NEAR_DUPLICATE_SIMILARITY and LANDMARKS_NEAR_DUPLICATE_SHARE.

    nice .venv/bin/python bench/near_duplicates.py ../shared/datasets/paris5 [--per-landmark 8] [--spec SPEC]

Every catalog photo of the dataset is extracted with the product's extractor (the pool).
For a sample of ``--per-landmark`` photos per landmark, near duplicates are made (JPEG
re-encoded at quality 60, resized to 60 %, centre-cropped to 85 %, brightness +8 %, and all
four at once) and extracted too. Prints, as the index worker would see them:

- the global cosine of each near duplicate to its original (should be high), and
- the cosine of each sampled photo to its nearest *different* photo of the same landmark
  (distinct shots of one place: not duplicates), and to its nearest photo of another landmark;

with the product's verification inliers of each pair, the share of its matches that one
similarity transform carries (``vision.duplicates``), and what each pair of thresholds
flags.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

logger = logging.getLogger("bench.near_duplicates")

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _resized(image: Image.Image) -> Image.Image:
    return image.resize((round(image.width * 0.6), round(image.height * 0.6)), Image.Resampling.LANCZOS)


def _cropped(image: Image.Image) -> Image.Image:
    dx, dy = round(image.width * 0.075), round(image.height * 0.075)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _brighter(image: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.08)


# name -> the near duplicate's bytes from the original photo
VARIANTS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg q=60": lambda im: _jpeg(im, 60),
    "resized 60 %": lambda im: _jpeg(_resized(im), 92),
    "cropped 85 %": lambda im: _jpeg(_cropped(im), 92),
    "brightness +8 %": lambda im: _jpeg(_brighter(im), 92),
    "all four": lambda im: _jpeg(_brighter(_cropped(_resized(im))), 60),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--per-landmark", type=int, default=8, help="sampled photos per landmark")
    parser.add_argument("--spec", help="extractor spec (default: LANDMARKS_EXTRACTOR)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # after Django's LOGGING
    from retrieval.extraction import get_extractor, min_inliers
    from retrieval.vision.datasets import load_retrieval_dataset

    dataset = load_retrieval_dataset(args.dataset)
    extractor = get_extractor(args.spec)
    logger.info("%s: %d catalog photos, extractor %s", dataset.name, len(dataset.images), extractor.model_name)
    # The measured pairs are kept, so that the report can be printed again without extracting.
    cache = ROOT / "bench" / "out" / f"near-duplicates-v2-{dataset.name}-{extractor.model_name}-{args.per_landmark}.pkl"
    if cache.exists():
        rows = pickle.loads(cache.read_bytes())
    else:
        images = list(dataset.images)
        pool = [_extract(extractor, Path(i.path).read_bytes()) for i in images]
        logger.info("pool extracted")
        labels = np.array([i.landmark for i in images])
        rows = _measure(extractor, images, pool, labels, _sample(labels, args.per_landmark))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(rows))
    _report(rows, min_inliers(extractor.model_name))
    return 0


def _extract(extractor: Any, data: bytes) -> Any:
    from retrieval.services import image_decode

    return extractor.extract(image_decode(data=data))


def _sample(labels: np.ndarray, per_landmark: int) -> list[int]:
    """Evenly spaced photos of every landmark (deterministic)."""
    chosen: list[int] = []
    for landmark in sorted(set(labels)):
        members = np.flatnonzero(labels == landmark)
        step = max(1, len(members) // per_landmark)
        chosen += [int(i) for i in members[::step][:per_landmark]]
    return chosen


def _inliers(extractor: Any, a: Any, b: Any) -> int:
    """Inliers as the index worker verifies a new photo (its catalog features) against a stored one."""
    from retrieval.vision.extractors import matching_config
    from retrieval.vision.verification import verify_pair

    return verify_pair(a.local, b.local, matching_config(extractor.model_name)).inliers


def _share(extractor: Any, a: Any, b: Any) -> tuple[float, int]:
    """Share of the tentative matches that one similarity transform carries, and how many
    that is (vision.duplicates, as the index worker tests a new photo)."""
    from retrieval.vision.duplicates import picture_match
    from retrieval.vision.extractors import matching_config

    match = picture_match(a.local, b.local, matching_config(extractor.model_name))
    return match.share, match.inliers


def _measure(extractor: Any, images: list[Any], pool: list[Any], labels: np.ndarray, sample: list[int]) -> list[tuple]:
    """(kind, cosine, inliers, photo id, other id, similarity-transform share, its inliers)
    per compared pair."""
    X = np.stack([f.global_descriptor for f in pool]).astype(np.float32)
    rows = []
    for index in sample:
        original = Image.open(images[index].path)
        original.load()
        for name, make in VARIANTS.items():
            features = _extract(extractor, make(original))
            cosine = float(features.global_descriptor @ X[index])
            rows.append((
                name, cosine, _inliers(extractor, features, pool[index]), images[index].id, images[index].id,
                *_share(extractor, features, pool[index]),
            ))  # fmt: skip
        cosines = X @ X[index]
        cosines[index] = -2.0
        for kind, mask in [("same landmark", labels == labels[index]), ("other landmark", labels != labels[index])]:
            other = int(np.argmax(np.where(mask, cosines, -2.0)))
            rows.append((
                kind, float(cosines[other]), _inliers(extractor, pool[index], pool[other]), images[index].id,
                images[other].id, *_share(extractor, pool[index], pool[other]),
            ))  # fmt: skip
        logger.info("%s done", images[index].id)
    return rows


def _report(rows: list[tuple], min_inliers: int) -> None:
    logger.info("\n| pairs | n | cosine min | p5 | median | max | inliers min | median | >= %d |", min_inliers)
    logger.info("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    kinds = list(VARIANTS) + ["same landmark", "other landmark"]
    for kind in kinds:
        cos = np.array([r[1] for r in rows if r[0] == kind])
        inl = np.array([r[2] for r in rows if r[0] == kind])
        logger.info(
            "| %s | %d | %.4f | %.4f | %.4f | %.4f | %d | %d | %d |",
            kind, len(cos), cos.min(), np.percentile(cos, 5), np.median(cos), cos.max(),
            inl.min(), np.median(inl), int((inl >= min_inliers).sum()),
        )  # fmt: skip
    duplicates = np.array([r[1] for r in rows if r[0] in VARIANTS])
    distinct = np.array([r[1] for r in rows if r[0] == "same landmark"])
    low, high = float(duplicates.min()), float(distinct.max())
    logger.info("\nlowest near-duplicate cosine %.4f, highest distinct-photo cosine %.4f", low, high)
    for r in sorted((r for r in rows if r[0] == "same landmark"), key=lambda r: -r[1])[:5]:
        logger.info("  closest distinct pair: %s ~ %s cosine %.4f, %d inliers", r[3], r[4], r[1], r[2])
    if low > high:
        logger.info("separable: threshold %.3f (midpoint), margin %.4f each side", (low + high) / 2, (low - high) / 2)
    _threshold_table(rows, min_inliers)
    _share_table(rows, min_inliers)


def _share_table(rows: list[tuple], min_inliers: int) -> None:
    """The share of matches one similarity transform carries, per kind, and what cosine
    >= c and share >= s together flag (the index worker's test)."""
    kinds = list(VARIANTS) + ["same landmark", "other landmark"]
    logger.info("\n| pairs | share min | p5 | median | max |")
    logger.info("|---|---:|---:|---:|---:|")
    for kind in kinds:
        share = np.array([r[5] for r in rows if r[0] == kind])
        logger.info(
            "| %s | %.3f | %.3f | %.3f | %.3f |",
            kind, share.min(), np.percentile(share, 5), np.median(share), share.max(),
        )  # fmt: skip
    logger.info("\n| cosine >= | share >= | %s |", " | ".join(kinds))
    logger.info("|---:|---:|%s", "---:|" * len(kinds))
    for cosine in (0.85, 0.88, 0.90):
        for share in (0.4, 0.5, 0.6, 0.7):
            cells = []
            for kind in kinds:
                pairs = [r for r in rows if r[0] == kind]
                flagged = sum(r[1] >= cosine and r[5] >= share and r[6] >= min_inliers for r in pairs)
                cells.append(f"{flagged}/{len(pairs)}")
            logger.info("| %.2f | %.1f | %s |", cosine, share, " | ".join(cells))


def _threshold_table(rows: list[tuple], min_inliers: int) -> None:
    """Per threshold: the near duplicates flagged (cosine >= t and verified), per kind, and
    the distinct photos that would be flagged as well."""
    kinds = list(VARIANTS) + ["same landmark", "other landmark"]
    logger.info("\n| threshold | %s |", " | ".join(kinds))
    logger.info("|---:|%s", "---:|" * len(kinds))
    for threshold in np.arange(0.90, 0.981, 0.01):
        flagged = [sum(r[1] >= threshold and r[2] >= min_inliers for r in rows if r[0] == k) for k in kinds]
        total = [sum(r[0] == k for r in rows) for k in kinds]
        logger.info("| %.2f | %s |", threshold, " | ".join(f"{f}/{n}" for f, n in zip(flagged, total, strict=True)))


if __name__ == "__main__":
    raise SystemExit(main())
