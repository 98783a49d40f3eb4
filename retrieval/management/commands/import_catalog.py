"""Import landmark photos into a catalog: a folder, a zip file or a dataset.json."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval import services
from retrieval.errors import RetrievalError
from retrieval.models import Catalog, CatalogImage

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}

# (landmark or None, display name, external id, a callable returning the bytes)
Entry = tuple[str | None, str, str, Any]


def folder_entries(root: Path) -> Iterator[Entry]:
    """One sub-folder per landmark; files directly in ``root`` have no landmark."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = path.relative_to(root)
        landmark = relative.parts[0] if len(relative.parts) > 1 else None
        yield landmark, str(relative), path.stem, path.read_bytes


def zip_entries(archive: zipfile.ZipFile) -> Iterator[Entry]:
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        parts = Path(info.filename).parts
        if info.is_dir() or Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES or ".." in parts:
            continue
        if any(part.startswith(".") or part == "__MACOSX" for part in parts):
            continue
        landmark = parts[-2] if len(parts) > 1 else None
        yield landmark, info.filename, Path(info.filename).stem, (lambda info=info: archive.read(info))


def dataset_entries(path: Path) -> Iterator[Entry]:
    """The ``images`` list of a dataset.json (see docs/datasets.md)."""
    try:
        spec = json.loads(path.read_text())
        images = spec["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{path} is not a dataset.json with an 'images' list: {exc}") from None
    root = path.parent.resolve()
    for item in images:
        if not isinstance(item, dict) or "path" not in item:
            raise CommandError(f"{path}: every image needs a 'path', got {item!r}")
        file = (root / item["path"]).resolve()
        if root not in file.parents:
            raise CommandError(f"{path}: image path {item['path']!r} leaves the dataset folder")
        yield item.get("landmark"), item["path"], str(item.get("id", Path(item["path"]).stem)), file.read_bytes


class Command(BaseCommand):
    help = (
        "Import photos into a catalog (created if missing). PATH is a folder with one "
        "sub-folder per landmark, a .zip laid out the same way, or a dataset.json."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--catalog", required=True, help="catalog name")
        parser.add_argument("--wait", action="store_true", help="wait until the workers indexed every image")
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")

    def handle(self, *args: Any, path: Path, catalog: str, wait: bool, timeout: float, **options: Any) -> None:
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            target = services.catalog_get_or_create(name=catalog)
        except RetrievalError as exc:
            raise CommandError(exc.message) from None
        archive = None
        if path.is_dir():
            entries = list(folder_entries(path))
        elif path.suffix.lower() == ".zip":
            try:
                archive = zipfile.ZipFile(path)
            except zipfile.BadZipFile as exc:
                raise CommandError(f"{path} is not a valid zip file: {exc}") from None
            entries = list(zip_entries(archive))
        elif path.suffix.lower() == ".json":
            entries = list(dataset_entries(path))
        else:
            raise CommandError(f"{path} is neither a folder, a .zip nor a dataset.json")
        if not entries:
            raise CommandError(f"no images found in {path}")
        added, duplicates, failures = self._ingest(target, entries)
        if archive is not None:
            archive.close()
        self.stdout.write(
            f"catalog {target.name}: {added} added and queued for indexing, "
            f"{duplicates} already present, {len(failures)} refused"
        )
        for name, reason in failures:
            self.stderr.write(f"  refused {name}: {reason}")
        unqueued = target.images.filter(status=CatalogImage.Status.PENDING, queued_at__isnull=True).count()
        if unqueued:
            self.stderr.write(
                f"  the task queue is unreachable: {unqueued} image(s) are stored and will be queued "
                "automatically once it is back (or run this import again)"
            )
        if wait:
            self._wait(target, timeout)
        if failures:
            raise CommandError(f"{len(failures)} file(s) could not be imported (listed above)")

    def _ingest(self, catalog: Catalog, entries: list[Entry]) -> tuple[int, int, list[tuple[str, str]]]:
        added = duplicates = 0
        failures: list[tuple[str, str]] = []
        landmarks: dict[str, Any] = {}
        for landmark_name, name, external_id, read in tqdm(entries, desc="importing", unit="img"):
            try:
                data = read()
            except OSError as exc:
                failures.append((name, f"cannot read: {exc}"))
                continue
            if landmark_name and landmark_name not in landmarks:
                landmarks[landmark_name] = services.landmark_get_or_create(catalog=catalog, name=landmark_name)
            try:
                result = services.image_ingest(
                    catalog=catalog,
                    data=data,
                    filename=Path(name).name,
                    landmark=landmarks.get(landmark_name) if landmark_name else None,
                    external_id=external_id,
                    decode=True,  # report corrupt files now, not as failed images later
                )
            except RetrievalError as exc:
                failures.append((name, exc.message))
                continue
            if result.created:
                added += 1
            else:
                duplicates += 1
                self.stderr.write(f"  duplicate {name}: same content as image {result.image.pk}, not indexed again")
        return added, duplicates, failures

    def _wait(self, catalog: Catalog, timeout: float) -> None:
        waiting = catalog.images.filter(status__in=[CatalogImage.Status.PENDING, CatalogImage.Status.PROCESSING])
        total = catalog.images.count()
        deadline = time.monotonic() + timeout
        with tqdm(total=total, desc="indexing", unit="img") as bar:
            while True:
                left = waiting.count()
                bar.n = total - left
                bar.refresh()
                if left == 0:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(f"{left} image(s) still waiting after {timeout:.0f} s; is a worker running?")
                time.sleep(0.5)
        failed = catalog.images.filter(status=CatalogImage.Status.FAILED)
        for image in failed:
            self.stderr.write(f"  failed {image.original_name}: {image.failure_reason}")
        self.stdout.write(f"indexed: {total - failed.count()} of {total}")
