"""Import landmark photos into a catalog: a folder, a zip file, a dataset.json or a CSV."""

from __future__ import annotations

import csv
import json
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval import selectors, services
from retrieval.errors import RetrievalError
from retrieval.models import Catalog, CatalogImage, ImportJob

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".avif"}


class Entry(NamedTuple):
    landmark: str | None
    name: str  # the path inside the source; its last part is kept as the image's name
    external_id: str
    read: Any  # a callable returning the bytes
    where: str = ""  # e.g. "row 3" of a CSV, added to messages about the entry

    @property
    def label(self) -> str:
        return f"{self.where} ({self.name})" if self.where else self.name


# A refused row or file: (what, why)
Failure = tuple[str, str]


def folder_entries(root: Path) -> Iterator[Entry]:
    """One sub-folder per landmark; files directly in ``root`` have no landmark."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = path.relative_to(root)
        landmark = relative.parts[0] if len(relative.parts) > 1 else None
        yield Entry(landmark, str(relative), path.stem, path.read_bytes)


def zip_entries(archive: zipfile.ZipFile) -> Iterator[Entry]:
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        parts = Path(info.filename).parts
        if info.is_dir() or Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES or ".." in parts:
            continue
        if any(part.startswith(".") or part == "__MACOSX" for part in parts):
            continue
        landmark = parts[-2] if len(parts) > 1 else None
        yield Entry(landmark, info.filename, Path(info.filename).stem, (lambda info=info: archive.read(info)))


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
        yield Entry(item.get("landmark"), item["path"], str(item.get("id", Path(item["path"]).stem)), file.read_bytes)


# scheme://...: the CSV names local files only; the command never fetches anything.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CSV_HELP = "expected path,landmark[,external_id]"


def csv_entries(path: Path) -> tuple[list[Entry], list[Failure]]:
    """Rows ``path,landmark[,external_id]`` (an optional header row starts with ``path``);
    paths are relative to the CSV's folder and may not leave it. Bad rows come back as
    failures naming their row, so that the good ones are still imported."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{path} is not a readable UTF-8 CSV file: {exc}") from None
    root = path.parent.resolve()
    entries: list[Entry] = []
    failures: list[Failure] = []
    for number, row in rows:
        cells = [cell.strip() for cell in row]
        if not any(cells) or (number == 1 and cells[0].lower() == "path"):
            continue
        entry = _csv_entry(root, cells, where=f"row {number}")
        if isinstance(entry, Entry):
            entries.append(entry)
        else:
            failures.append((f"row {number}", entry))
    return entries, failures


def _csv_entry(root: Path, cells: list[str], *, where: str) -> Entry | str:
    """The row's entry, or why it is refused."""
    if not 2 <= len(cells) <= 3 or not cells[0]:
        return f"{_CSV_HELP}, got {cells!r}"
    name, landmark = cells[0], cells[1] or None
    if _URL.match(name):
        return f"{name!r} is a URL; only files next to the CSV are imported"
    file = (root / name).resolve()
    if root not in file.parents:
        return f"{name!r} leaves the CSV's folder"
    external_id = cells[2] if len(cells) == 3 and cells[2] else Path(name).stem
    return Entry(landmark, name, external_id, file.read_bytes, where)


class Command(BaseCommand):
    help = (
        "Import photos into a catalog (created if missing). PATH is a folder with one "
        "sub-folder per landmark, a .zip laid out the same way, a dataset.json, or a .csv "
        "of path,landmark[,external_id] rows (paths relative to the CSV)."
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
        refused: list[Failure] = []
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
        elif path.suffix.lower() == ".csv":
            entries, refused = csv_entries(path)
        else:
            raise CommandError(f"{path} is neither a folder, a .zip, a dataset.json nor a .csv")
        if not entries and not refused:
            raise CommandError(f"no images found in {path}")
        job = services.import_job_start(catalog=target, source=str(path), submitted=len(entries) + len(refused))
        self.stdout.write(f"import job {job.pk}: {len(entries) + len(refused)} file(s) for catalog {target.name}")
        added, duplicates, failures = self._ingest(target, entries, job)
        failures = refused + failures
        if archive is not None:
            archive.close()
        services.import_job_finish(
            job=job, duplicates=duplicates, refused=[{"name": name, "error": error} for name, error in failures]
        )
        self.stdout.write(
            f"catalog {target.name}: {added} added and queued for indexing, "
            f"{duplicates} already present, {len(failures)} refused (import job {job.pk})"
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
            self._wait(job, timeout)
        if failures:
            raise CommandError(f"{len(failures)} file(s) could not be imported (listed above)")

    def _ingest(self, catalog: Catalog, entries: list[Entry], job: ImportJob) -> tuple[int, int, list[Failure]]:
        """Store the entries (tqdm shows images/s and the time left); returns (added,
        duplicates, failures)."""
        added = duplicates = 0
        failures: list[Failure] = []
        landmarks: dict[str, Any] = {}
        for entry in tqdm(entries, desc="storing", unit="img"):
            try:
                data = entry.read()
            except OSError as exc:
                failures.append((entry.label, f"cannot read: {exc}"))
                continue
            if entry.landmark and entry.landmark not in landmarks:
                landmarks[entry.landmark] = services.landmark_get_or_create(catalog=catalog, name=entry.landmark)
            try:
                result = services.image_ingest(
                    catalog=catalog,
                    data=data,
                    filename=Path(entry.name).name,
                    landmark=landmarks.get(entry.landmark) if entry.landmark else None,
                    external_id=entry.external_id,
                    import_job=job,
                    decode=True,  # report corrupt files now, not as failed images later
                )
            except RetrievalError as exc:
                failures.append((entry.label, exc.message))
                continue
            if result.created:
                added += 1
            else:
                duplicates += 1
                self.stderr.write(
                    f"  duplicate {entry.label}: same content as image {result.image.pk}, not indexed again"
                )
        return added, duplicates, failures

    def _wait(self, job: ImportJob, timeout: float) -> None:
        """Follow the job's indexing with its rate and ETA (``selectors.import_job_progress``)."""
        deadline = time.monotonic() + timeout
        progress = selectors.import_job_progress(job=job)
        bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {postfix}"
        with tqdm(total=progress.total, desc="indexing", unit="img", bar_format=bar_format) as bar:
            while True:
                progress = selectors.import_job_progress(job=job)
                bar.n = progress.done + progress.failed
                bar.set_postfix_str(_rate_text(progress), refresh=True)
                if progress.remaining == 0:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"{progress.remaining} image(s) of import job {job.pk} still waiting after {timeout:.0f} s; "
                        "is a worker running?"
                    )
                time.sleep(0.5)
        for failure in selectors.import_job_failures(job=job, limit=1000):
            self.stderr.write(f"  failed {failure['name']}: {failure['error']}")
        self.stdout.write(f"indexed: {progress.done} of {progress.total} (import job {job.pk})")


def _rate_text(progress: selectors.JobProgress) -> str:
    if progress.rate is None:
        return "measuring the rate"
    eta = "" if progress.eta_seconds is None else f", about {progress.eta_seconds:.0f} s left"
    return f"{progress.rate:.2f} img/s{eta}"
