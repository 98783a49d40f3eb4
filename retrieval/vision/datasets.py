"""Evaluation datasets: loading and validating ``dataset.json`` and ``pairs.json``.

Pure Python and numpy (nothing here imports Django or TensorFlow). The format is
``/work/shared/datasets/FORMAT.md`` (summarised in ``docs/datasets.md``); the loaders
check everything up front and raise :class:`DatasetError` naming the file and the entry,
so a malformed set fails before anything is indexed. The metrics that score these sets
are in :mod:`retrieval.vision.metrics`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Sequence, Set
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

RETRIEVAL_FILE = "dataset.json"
PAIRS_FILE = "pairs.json"


class DatasetError(ValueError):
    """An evaluation dataset folder or its JSON file is missing or malformed."""


BBox = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class DatasetImage:
    """One catalog image of a ``dataset.json`` (not a stored ``retrieval.models.CatalogImage``).

    ``path`` is absolute (folder / relative path).
    """

    id: str
    path: Path
    landmark: str | None


@dataclasses.dataclass(frozen=True)
class QuerySpec:
    """One query and its ground truth.

    Attributes:
        id: query id (may equal a catalog id in leave-one-out sets; then it is junk).
        path: absolute path of the query image.
        landmark: the landmark shown, if known.
        bbox: ``(x1, y1, x2, y2)`` region of interest in query-image pixels, or ``None``.
        positives: catalog ids that are correct answers (may be empty: not scored).
        junk: catalog ids removed from the ranking before scoring.
    """

    id: str
    path: Path
    landmark: str | None
    bbox: BBox | None
    positives: frozenset[str]
    junk: frozenset[str]


@dataclasses.dataclass(frozen=True)
class RetrievalDataset:
    """A loaded ``dataset.json`` (kind ``retrieval``)."""

    name: str
    source: str | None
    folder: Path
    images: tuple[DatasetImage, ...]
    queries: tuple[QuerySpec, ...]

    def landmark_of(self) -> dict[str, str | None]:
        """Catalog id -> landmark (``None`` where the catalog gives none)."""
        return {image.id: image.landmark for image in self.images}


@dataclasses.dataclass(frozen=True, eq=False)
class ImagePair:
    """One pair of ``pairs.json``.

    Attributes:
        id: pair id.
        image1, image2: absolute image paths.
        correspondences: (N, 4) float64 rows ``[x1, y1, x2, y2]``, image1 -> image2 pixels.
        subset: e.g. ``"WGABS"`` when the file gives one.
        place: the place shown, when the file gives one: pairs of the same place are
            never combined into a mismatched pair.
    """

    id: str
    image1: Path
    image2: Path
    correspondences: np.ndarray
    subset: str | None
    place: str | None = None


@dataclasses.dataclass(frozen=True)
class PairDataset:
    """A loaded ``pairs.json`` (kind ``pairs``)."""

    name: str
    source: str | None
    folder: Path
    pairs: tuple[ImagePair, ...]


def mismatched_pairs(pairs: Sequence[ImagePair]) -> list[tuple[Path, Path]]:
    """Deterministic negatives: image1 of pair i with image2 of pair (i + 1) mod n.

    Args:
        pairs: (n,) true pairs, n >= 2 for any negative.

    Returns:
        n ``(image1, image2)`` path tuples showing different places (empty when n < 2).
    """
    n = len(pairs)
    if n < 2:
        return []
    return [(pairs[i].image1, pairs[(i + 1) % n].image2) for i in range(n)]


def same_place_groups(digests: Sequence[Set[str]]) -> list[int]:
    """Group pairs that share an image file (same content): group number per pair.

    Some public pair sets reuse one photo in two pairs of the same place (WxBS does);
    mismatched pairs are only formed across groups.

    Args:
        digests: (n,) per pair, what ties it to a place (its image files' digests, its
            ``place``, a caller's group); pairs sharing any value are one place.

    Returns:
        (n,) group number per pair; equal numbers mean the same place.
    """
    group = list(range(len(digests)))

    def root(n: int) -> int:
        while group[n] != n:
            group[n] = group[group[n]]
            n = group[n]
        return n

    first_seen: dict[str, int] = {}
    for n, found in enumerate(digests):
        for digest in found:
            if digest in first_seen:
                group[root(n)] = root(first_seen[digest])
            else:
                first_seen[digest] = n
    return [root(n) for n in range(len(digests))]


class _Reader:
    """Strict accessors that raise :class:`DatasetError` naming file and location."""

    def __init__(self, json_path: Path) -> None:
        self.json_path = json_path
        self.folder = json_path.parent

    def fail(self, where: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.json_path}: {where}: {problem}")

    def load(self, kind: str) -> dict[str, Any]:
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: dataset folder does not exist")
        if not self.json_path.is_file():
            other = PAIRS_FILE if self.json_path.name == RETRIEVAL_FILE else RETRIEVAL_FILE
            hint = ""
            if (self.folder / other).is_file():
                hint = f" (it has {other}: another kind of dataset)"
            raise DatasetError(f"{self.folder}: missing {self.json_path.name}{hint}")
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.json_path}: invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise self.fail("top level", f"expected an object, got {type(data).__name__}")
        self.key(data, "kind", str, "top level")
        if data["kind"] != kind:
            raise self.fail("top level", f"kind must be {kind!r}, got {data['kind']!r}")
        self.key(data, "name", str, "top level")
        self.optional(data, "source", str, "top level")
        return data

    def key(self, obj: dict[str, Any], key: str, typ: type, where: str) -> Any:
        if key not in obj:
            raise self.fail(where, f"missing key {key!r}")
        return self.check(obj[key], typ, f"{where}.{key}" if where != "top level" else key)

    def optional(self, obj: dict[str, Any], key: str, typ: type, where: str) -> Any:
        if obj.get(key) is None:
            return None
        return self.key(obj, key, typ, where)

    def check(self, value: Any, typ: type, where: str) -> Any:
        if not isinstance(value, typ) or (typ is str and not value):
            expected = "a non-empty string" if typ is str else f"a {typ.__name__}"
            raise self.fail(where, f"expected {expected}, got {value!r:.80}")
        return value

    def objects(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.key(data, key, list, "top level")
        if not items:
            raise self.fail(key, "is empty")
        for n, item in enumerate(items):
            self.check(item, dict, f"{key}[{n}]")
        return items

    def unique_ids(self, items: list[dict[str, Any]], key: str) -> list[str]:
        ids = [self.key(item, "id", str, f"{key}[{n}]") for n, item in enumerate(items)]
        seen: set[str] = set()
        for n, i in enumerate(ids):
            if i in seen:
                raise self.fail(f"{key}[{n}]", f"duplicate id {i!r}")
            seen.add(i)
        return ids

    def path(self, obj: dict[str, Any], key: str, where: str, check_files: bool) -> Path:
        raw = self.key(obj, key, str, where)
        rel = PurePosixPath(raw)
        if rel.is_absolute() or "\\" in raw or ".." in rel.parts or raw.startswith("~"):
            raise self.fail(f"{where}.{key}", f"path {raw!r} must stay inside the dataset folder")
        path = self.folder / rel
        if check_files and not path.is_file():
            raise self.fail(f"{where}.{key}", f"image file {raw!r} does not exist")
        return path

    def numbers(self, value: Any, where: str) -> list[float]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of numbers, got {value!r:.80}")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise self.fail(where, f"expected finite numbers, got {v!r}")
        return [float(v) for v in value]

    def bbox(self, obj: dict[str, Any], where: str) -> BBox | None:
        if obj.get("bbox") is None:
            return None
        box = self.numbers(obj["bbox"], f"{where}.bbox")
        if len(box) != 4:
            raise self.fail(f"{where}.bbox", f"expected [x1, y1, x2, y2], got {len(box)} numbers")
        x1, y1, x2, y2 = box
        if not (x1 < x2 and y1 < y2):
            raise self.fail(f"{where}.bbox", f"needs x1 < x2 and y1 < y2, got {box}")
        return (x1, y1, x2, y2)

    def id_list(self, obj: dict[str, Any], key: str, where: str, known: Set[str]) -> frozenset[str]:
        ids = self.key(obj, key, list, where)
        for i in ids:
            self.check(i, str, f"{where}.{key}")
        if len(set(ids)) != len(ids):
            raise self.fail(f"{where}.{key}", "lists an id more than once")
        unknown = sorted(set(ids) - known)
        if unknown:
            raise self.fail(
                f"{where}.{key}",
                f"{len(unknown)} unknown catalog ids: {', '.join(unknown[:5])}",
            )
        return frozenset(ids)


def load_retrieval_dataset(folder: str | Path, *, check_files: bool = True) -> RetrievalDataset:
    """Load and validate ``folder/dataset.json`` (FORMAT.md, kind ``retrieval``).

    Checks: the file exists and is JSON; ``kind == "retrieval"``; ``name``, ``images`` and
    ``queries`` are present; ``images`` and ``queries`` are non-empty lists of objects
    with unique non-empty ``id``; every ``path`` is relative, free of ``..`` and (with
    ``check_files``) names an existing file; ``landmark`` is a string or absent/null;
    ``positives`` and ``junk`` (``junk`` may be absent) are lists of known catalog ids,
    without repeats, disjoint;
    ``bbox`` is absent/null or 4 finite numbers with x1 < x2 and y1 < y2. Unknown keys are
    ignored. Queries with empty ``positives`` are allowed (the metrics skip them).

    Args:
        folder: the dataset folder.
        check_files: check that every image file exists.

    Raises:
        DatasetError: the first problem found, naming the file and the entry.
    """
    folder = Path(folder).absolute()
    reader = _Reader(folder / RETRIEVAL_FILE)
    data = reader.load("retrieval")
    images = _read_images(reader, data, check_files=check_files)
    queries = _read_queries(reader, data, frozenset(image.id for image in images), check_files=check_files)
    return RetrievalDataset(
        name=data["name"],
        source=data.get("source"),
        folder=folder,
        images=images,
        queries=queries,
    )


def _read_images(reader: _Reader, data: dict[str, Any], *, check_files: bool) -> tuple[DatasetImage, ...]:
    """The ``images`` of a ``dataset.json``, checked as :func:`load_retrieval_dataset` says."""
    items = reader.objects(data, "images")
    image_ids = reader.unique_ids(items, "images")
    return tuple(
        DatasetImage(
            id=image_id,
            path=reader.path(item, "path", f"images[{n}]", check_files),
            landmark=reader.optional(item, "landmark", str, f"images[{n}]"),
        )
        for n, (image_id, item) in enumerate(zip(image_ids, items, strict=True))
    )


def _read_queries(
    reader: _Reader, data: dict[str, Any], known: Set[str], *, check_files: bool
) -> tuple[QuerySpec, ...]:
    """The ``queries`` of a ``dataset.json``; ``known`` holds the catalog ids."""
    items = reader.objects(data, "queries")
    query_ids = reader.unique_ids(items, "queries")
    queries = []
    for n, (query_id, item) in enumerate(zip(query_ids, items, strict=True)):
        where = f"queries[{n}] ({query_id})"
        positives = reader.id_list(item, "positives", where, known)
        junk = reader.id_list(item, "junk", where, known) if "junk" in item else frozenset()
        if positives & junk:
            both = ", ".join(sorted(positives & junk)[:5])
            raise reader.fail(where, f"ids both positive and junk: {both}")
        queries.append(
            QuerySpec(
                id=query_id,
                path=reader.path(item, "path", where, check_files),
                landmark=reader.optional(item, "landmark", str, where),
                bbox=reader.bbox(item, where),
                positives=positives,
                junk=junk,
            )
        )
    return tuple(queries)


def load_pair_dataset(folder: str | Path, *, check_files: bool = True) -> PairDataset:
    """Load and validate ``folder/pairs.json`` (FORMAT.md, kind ``pairs``).

    Checks: the file exists and is JSON; ``kind == "pairs"``; ``name`` and a non-empty
    ``pairs`` list of objects with unique ``id``; ``image1`` / ``image2`` paths as in
    :func:`load_retrieval_dataset`; ``correspondences`` a list of ``[x1, y1, x2, y2]``
    finite numbers (may be empty); ``subset`` and ``place`` strings or absent.

    Args:
        folder: the dataset folder.
        check_files: check that every image file exists.

    Raises:
        DatasetError: the first problem found, naming the file and the entry.
    """
    folder = Path(folder).absolute()
    reader = _Reader(folder / PAIRS_FILE)
    data = reader.load("pairs")
    items = reader.objects(data, "pairs")
    ids = reader.unique_ids(items, "pairs")
    pairs = []
    for n, (pair_id, item) in enumerate(zip(ids, items, strict=True)):
        where = f"pairs[{n}] ({pair_id})"
        rows = reader.key(item, "correspondences", list, where)
        points = []
        for r, row in enumerate(rows):
            point = reader.numbers(row, f"{where}.correspondences[{r}]")
            if len(point) != 4:
                raise reader.fail(
                    f"{where}.correspondences[{r}]",
                    f"expected [x1, y1, x2, y2], got {len(point)} numbers",
                )
            points.append(point)
        pairs.append(
            ImagePair(
                id=pair_id,
                image1=reader.path(item, "image1", where, check_files),
                image2=reader.path(item, "image2", where, check_files),
                correspondences=np.array(points, dtype=np.float64).reshape(-1, 4),
                subset=reader.optional(item, "subset", str, where),
                place=reader.optional(item, "place", str, where),
            )
        )
    return PairDataset(
        name=data["name"], source=data.get("source"), folder=folder, pairs=tuple(pairs)
    )


def load_datasets(folder: str | Path) -> tuple[RetrievalDataset | None, PairDataset | None]:
    """The retrieval and/or pair set in ``folder``; raises DatasetError when it has neither
    or one is malformed (before anything touches the database)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder does not exist")
    has_retrieval = (folder / RETRIEVAL_FILE).is_file()
    has_pairs = (folder / PAIRS_FILE).is_file()
    if not has_retrieval and not has_pairs:
        raise DatasetError(f"{folder}: no {RETRIEVAL_FILE} or {PAIRS_FILE} (see docs/datasets.md)")
    retrieval = load_retrieval_dataset(folder) if has_retrieval else None
    pairs = load_pair_dataset(folder) if has_pairs else None
    return retrieval, pairs
