"""Download, verify and install DELG/DELF model archives (``manage.py fetch_model``).

A download streams into a temporary file next to the models (urllib, with a timeout and
a progress bar), is checked against its sha256, unpacked safely (no absolute paths, no
``..``, no links leading out, no device files), and its SavedModel folder (the one with
``saved_model.pb``) is moved into ``<MODEL_DIR>/installed/<name>/`` next to
``model.json`` (see ``model_registry``). Nothing is installed unless every step
succeeded; temporary files are removed on any error. No Django, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from retrieval.vision.model_registry import (
    KINDS,
    METADATA_FILE,
    OFFICIAL_MODELS,
    PCA_DIR,
    SAVED_MODEL_DIR,
    ExtractionSettings,
    InstalledModel,
    installed_root,
    validate_name,
)

MAX_UNPACKED_BYTES = 16 << 30
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PCA_FILES = ("mean.datum", "pca_proj_mat.datum", "pca_vars.datum")


class FetchError(RuntimeError):
    """A model could not be downloaded or installed; nothing was installed."""


class NetworkUnavailable(FetchError):
    """The download server could not be reached."""


class ChecksumMismatch(FetchError):
    """The file is not the expected one."""


class UnsafeArchive(FetchError):
    """The archive would write outside its folder, or holds links or device files."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(root: Path, *, exclude: tuple[str, ...] = (METADATA_FILE,)) -> str:
    """One sha256 over a folder's files: their relative paths and contents, in order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative in exclude:
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def normalise_sha256(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256.match(value):
        raise FetchError(f"not a sha256 (64 hexadecimal digits): {value!r}")
    return value


# --- download -------------------------------------------------------------------------


def _no_network_message(url: str, reason: object, name: str) -> str:
    return (
        f"cannot download {url}: {reason}. No network here? Download the file on another machine, "
        f"copy it here, and run: manage.py fetch_model {name} --from-file FILE"
    )


def download(url: str, directory: Path, *, name: str, timeout: float = 60.0, progress: bool = True) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file in ``directory``.

    Returns:
        The file and its sha256; the caller removes the file.
    Raises:
        NetworkUnavailable: the server cannot be reached (or does not answer in time).
        FetchError: an HTTP error, or an interrupted or short download; the partial file
            is removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".download-{name}-", suffix=".part", delete=False)
    path = Path(handle.name)
    digest = hashlib.sha256()
    received = 0
    try:
        with handle:
            request = urllib.request.Request(url, headers={"User-Agent": "landmarks-fetch-model"})
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https only, checked)
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                label = PurePosixPath(urllib.parse.urlparse(url).path).name or name
                bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress)
                with bar:
                    while chunk := response.read(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        if total is not None and received != total:
            raise FetchError(f"download of {url} interrupted: received {received:,} of {total:,} bytes; try again")
    except urllib.error.HTTPError as exc:
        path.unlink(missing_ok=True)
        raise FetchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        path.unlink(missing_ok=True)
        raise NetworkUnavailable(_no_network_message(url, exc.reason, name)) from None
    except (TimeoutError, socket.timeout) as exc:
        path.unlink(missing_ok=True)
        if received == 0:
            raise NetworkUnavailable(_no_network_message(url, f"no answer in {timeout:g} s", name)) from None
        raise FetchError(f"download of {url} interrupted after {received:,} bytes: {exc or 'timed out'}") from None
    except (http.client.HTTPException, OSError) as exc:
        path.unlink(missing_ok=True)
        reason = f"{type(exc).__name__}: {exc}"
        raise FetchError(f"download of {url} interrupted after {received:,} bytes: {reason}") from None
    except BaseException:  # FetchError above, KeyboardInterrupt: never leave a partial file
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest()


# --- unpacking ------------------------------------------------------------------------


def _check_member_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise UnsafeArchive(f"archive member {name!r} would be written outside the target folder")
    return path


def _inside(root: Path, target: Path) -> bool:
    return target.resolve().is_relative_to(root.resolve())


def safe_unpack(archive: Path, destination: Path) -> None:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip into ``destination`` (created).

    Raises:
        UnsafeArchive: absolute or ``..`` member names, links leading outside, device
            files, or more than MAX_UNPACKED_BYTES in all.
        FetchError: not an archive, or a corrupt one.
    """
    destination.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, destination)
        elif tarfile.is_tarfile(archive):
            _unpack_tar(archive, destination)
        else:
            raise FetchError(f"{archive.name} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise FetchError(f"cannot unpack {archive.name}: {type(exc).__name__}: {exc}") from None
    for path in destination.rglob("*"):  # belt and braces: nothing may point outside
        if path.is_symlink() and not _inside(destination, path):
            raise UnsafeArchive(f"archive member {path.relative_to(destination)} links outside the target folder")


def _unpack_tar(archive: Path, destination: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        total = 0
        for member in members:
            relative = _check_member_name(member.name)
            if member.issym() or member.islnk():
                base = (destination / relative).parent if member.issym() else destination
                link = PurePosixPath(member.linkname)
                if link.is_absolute() or not _inside(destination, base / link):
                    raise UnsafeArchive(f"archive member {member.name!r} links outside the target folder")
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchive(f"archive member {member.name!r} is a device or other special file")
            total += max(member.size, 0)
        if total > MAX_UNPACKED_BYTES:
            raise UnsafeArchive(f"archive unpacks to {total:,} bytes, more than {MAX_UNPACKED_BYTES:,}")
        tar.extractall(destination, members=members, filter="data")


def _unpack_zip(archive: Path, destination: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            _check_member_name(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchive(f"archive member {info.filename!r} is a symbolic link")
            total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise UnsafeArchive(f"archive unpacks to {total:,} bytes, more than {MAX_UNPACKED_BYTES:,}")
        for info in infos:
            zf.extract(info, destination)


def _copy_folder(source: Path, destination: Path) -> None:
    for path in source.rglob("*"):
        if path.is_symlink() and not _inside(source, path):
            raise UnsafeArchive(f"{path} links outside {source}")
    shutil.copytree(source, destination, symlinks=False)


def find_saved_model(root: Path) -> Path:
    """The one folder under ``root`` holding ``saved_model.pb`` (or ``.pbtxt``)."""
    found = sorted({p.parent for pattern in ("saved_model.pb", "saved_model.pbtxt") for p in root.rglob(pattern)})
    if not found:
        raise FetchError("no SavedModel in it (no saved_model.pb): is this a DELG/DELF model archive?")
    if len(found) > 1:
        listed = ", ".join(str(p.relative_to(root)) for p in found)
        raise FetchError(f"several SavedModels in it ({listed}); unpack it and pass the one folder with --from-file")
    return found[0]


def find_pca(root: Path) -> list[Path]:
    """DELF's PCA files (``pca/mean.datum``, ``pca_proj_mat.datum``, ``pca_vars.datum``)
    or a ``pca.npz``, wherever they are in the archive; [] when there are none."""
    for mean in sorted(root.rglob("mean.datum")):
        if (mean.parent / "pca_proj_mat.datum").is_file():
            return [mean.parent / f for f in _PCA_FILES if (mean.parent / f).is_file()]
    return sorted(root.rglob("pca.npz"))[:1]


# --- installing -----------------------------------------------------------------------


def install(
    *,
    name: str,
    kind: str,
    source_path: Path,
    source: str,
    sha256: str,
    cache_dir: Path,
    settings: ExtractionSettings,
    force: bool = False,
) -> InstalledModel:
    """Install the model in ``source_path`` (an archive or an unpacked folder) as ``name``.

    The new folder is assembled next to the installed ones and renamed into place, so a
    failure leaves the previous state, and readers never see half a model.
    """
    validate_name(name)
    if kind not in KINDS:
        raise FetchError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    root = installed_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists() and not force:
        raise FetchError(f"{name} is already installed in {target}; pass --force to replace it")
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".staging-{name}-"))
    try:
        unpacked = staging / "unpacked"
        if source_path.is_dir():
            _copy_folder(source_path, unpacked)
        else:
            safe_unpack(source_path, unpacked)
        saved_model = find_saved_model(unpacked)
        pca_files = find_pca(unpacked)
        layout = staging / "model"
        layout.mkdir()
        if pca_files:
            (layout / PCA_DIR).mkdir()
            for path in pca_files:
                shutil.copy2(path, layout / PCA_DIR / path.name)
        os.rename(saved_model, layout / SAVED_MODEL_DIR)
        model = InstalledModel(
            name=name,
            kind=kind,
            source=source,
            sha256=sha256,
            model_sha256=tree_sha256(layout),
            installed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            settings=settings,
            directory=target,
        )
        (layout / METADATA_FILE).write_text(model.to_json())
        if target.exists():
            old = staging / "previous"
            os.rename(target, old)
        os.rename(layout, target)
        return model
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class FetchResult:
    model: InstalledModel
    verified: bool  # the sha256 was checked against a known value


def fetch(
    name: str,
    *,
    cache_dir: Path,
    from_file: Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    kind: str | None = None,
    timeout: float = 60.0,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FetchResult:
    """Download (or take ``from_file``), verify and install the model ``name``.

    ``name`` is an official model (``OFFICIAL_MODELS``) or, with ``kind`` and ``url`` or
    ``from_file``, any DELG/DELF SavedModel. A download is installed only when its
    sha256 matches a known checksum (the registry's or ``sha256``); a local file with
    no known checksum is installed with a warning showing its sha256.
    """
    kind, settings, expected = _what_to_install(name, kind=kind, sha256=sha256)
    target = installed_root(cache_dir) / name
    if not force and target.exists():
        raise FetchError(f"{name} is already installed in {target}; pass --force to replace it")
    request = _Request(name=name, kind=kind, settings=settings, expected=expected, cache_dir=cache_dir, force=force)
    if from_file is not None:
        return _install_file(request, Path(from_file).expanduser(), log=log)
    official = OFFICIAL_MODELS.get(name)
    url = url or (official.url if official is not None else None)
    if url is None:
        raise FetchError(f"{name} is not an official model: pass --url URL or --from-file FILE")
    return _install_download(request, url, timeout=timeout, progress=progress)


@dataclasses.dataclass(frozen=True)
class _Request:
    """What ``fetch`` installs: checked name and kind, settings, the sha256 to expect."""

    name: str
    kind: str
    settings: ExtractionSettings
    expected: str | None
    cache_dir: Path
    force: bool


def _what_to_install(name: str, *, kind: str | None, sha256: str | None) -> tuple[str, ExtractionSettings, str | None]:
    """(kind, extraction settings, expected sha256 or None) of model ``name``; FetchError
    when the name, kind or checksum contradicts the registry of official models."""
    try:
        validate_name(name)
    except ValueError as exc:
        raise FetchError(str(exc)) from None
    official = OFFICIAL_MODELS.get(name)
    if official is None and kind is None:
        raise FetchError(
            f"{name!r} is not an official model ({', '.join(OFFICIAL_MODELS)}); "
            "to install your own SavedModel pass --kind delg or --kind delf with --from-file or --url"
        )
    if official is not None and kind is not None and kind != official.kind:
        raise FetchError(f"{name} is a {official.kind} model, not {kind}")
    kind = kind or official.kind  # type: ignore[union-attr]
    settings = official.settings if official is not None else ExtractionSettings()
    expected = normalise_sha256(sha256) if sha256 else None
    if official is not None and official.sha256 is not None:
        if expected is not None and expected != official.sha256:
            raise ChecksumMismatch(
                f"--sha256 {expected} differs from the checksum recorded for {name}: {official.sha256}"
            )
        expected = official.sha256
    return kind, settings, expected


def _install_file(request: _Request, source_path: Path, *, log: Callable[[str], None]) -> FetchResult:
    if not source_path.exists():
        raise FetchError(f"no such file: {source_path}")
    actual = tree_sha256(source_path, exclude=()) if source_path.is_dir() else file_sha256(source_path)
    _check(actual, request.expected, what=str(source_path))
    if request.expected is None:
        log(f"warning: no known checksum for {request.name}; installing {source_path} unverified (sha256 {actual})")
    model = install(
        name=request.name, kind=request.kind, source_path=source_path, source=f"file:{source_path.resolve()}",
        sha256=actual, cache_dir=request.cache_dir, settings=request.settings, force=request.force,
    )  # fmt: skip
    return FetchResult(model, verified=request.expected is not None)


def _install_download(request: _Request, url: str, *, timeout: float, progress: bool) -> FetchResult:
    name = request.name
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise FetchError(f"only http and https downloads are supported, not {url!r}")
    if request.expected is None:
        raise FetchError(
            f"no checksum is known for {name}, so a download cannot be verified and is not installed. "
            f"Download {url} yourself, check its sha256 against a source you trust, then run "
            f"`manage.py fetch_model {name} --sha256 HEX` (or with --from-file FILE)"
        )
    downloads = Path(request.cache_dir) / "downloads"
    path, actual = download(url, downloads, name=name, timeout=timeout, progress=progress)
    try:
        _check(actual, request.expected, what=url)
        model = install(
            name=name, kind=request.kind, source_path=path, source=url, sha256=actual,
            cache_dir=request.cache_dir, settings=request.settings, force=request.force,
        )  # fmt: skip
    finally:
        path.unlink(missing_ok=True)
    return FetchResult(model, verified=True)


def _check(actual: str, expected: str | None, *, what: str) -> None:
    if expected is not None and actual != expected:
        raise ChecksumMismatch(f"sha256 mismatch for {what}: expected {expected}, got {actual}; nothing installed")
