"""Read PyTorch ``.pth`` state dicts into numpy arrays, without torch and without
running arbitrary pickle code.

Two on-disk formats are understood:

* the legacy format (torch < 1.6, still shipped by many weight packages): a stream of
  pickles -- magic number, protocol version, system info, the object itself (tensors
  refer to storages by persistent id), the list of storage keys -- followed by the raw
  storages in that key order, each prefixed with its element count as an int64;
* the zip format (torch >= 1.6): ``<prefix>/data.pkl`` holds the object, and storage
  ``key`` lives in ``<prefix>/data/<key>``.

The unpickler resolves only the handful of globals a plain state dict needs (see
``_ALLOWED_STORAGES`` and ``_REBUILDERS``); any other global, e.g. ``os.system``,
raises :class:`UnsafeWeightsError` before anything is called.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

logger = logging.getLogger(__name__)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype of one element (little endian).
_ALLOWED_STORAGES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 when a tensor is built
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeWeightsError(pickle.UnpicklingError):
    """The weights file references code a plain state dict never needs."""


class WeightsFormatError(ValueError):
    """The weights file is not a well-formed PyTorch state dict."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for a ``torch.<Name>Storage`` class inside the pickle."""

    name: str
    dtype: np.dtype


class _Storage:
    """A flat typed buffer; ``data`` is filled once the raw bytes have been read."""

    def __init__(self, storage_type: _StorageType, numel: int) -> None:
        self.storage_type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _LazyTensor:
    """A tensor whose storage may not have been read yet (legacy format)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        """Returns a C-contiguous copy of shape ``size``; bounds are checked first."""
        data = self.storage.data
        if data is None:
            raise WeightsFormatError("a tensor refers to a storage whose bytes are missing")
        if any(n == 0 for n in self.size):
            out = np.zeros(self.size, dtype=data.dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
            if self.offset < 0 or last >= data.shape[0]:
                raise WeightsFormatError(
                    f"tensor of size {self.size}, stride {self.stride}, offset {self.offset} "
                    f"reaches past its storage of {data.shape[0]} elements"
                )
            base = data[self.offset :]
            view = np.lib.stride_tricks.as_strided(
                base,
                shape=self.size,
                strides=tuple(s * data.itemsize for s in self.stride),
                writeable=False,
            )
            out = np.array(view, copy=True, order="C")
        if self.storage.storage_type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out.astype(out.dtype.newbyteorder("="), copy=False)


def _check_ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise WeightsFormatError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return value


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _LazyTensor:
    """Safe stand-in for ``torch._utils._rebuild_tensor(_v2)``; extra args (requires_grad,
    backward hooks, metadata) are ignored."""
    if not isinstance(storage, _Storage):
        raise WeightsFormatError(f"tensor storage must come from a persistent id, got {type(storage)}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise WeightsFormatError(f"tensor storage offset must be a non-negative int, got {storage_offset!r}")
    size_t, stride_t = _check_ints(size, "size"), _check_ints(stride, "stride")
    if len(size_t) != len(stride_t):
        raise WeightsFormatError(f"tensor size {size_t} and stride {stride_t} differ in length")
    return _LazyTensor(storage, storage_offset, size_t, stride_t)


_REBUILDERS: dict[tuple[str, str], Callable[..., _LazyTensor]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a plain tensor state dict.

    ``storage_loader(storage_type, key, numel)`` returns the storage for a persistent id.
    """

    def __init__(self, file: IO[bytes], storage_loader: Callable[[_StorageType, str, int], _Storage]) -> None:
        super().__init__(file)
        self._storage_loader = storage_loader

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in _REBUILDERS:
            return _REBUILDERS[(module, name)]
        if module == "torch" and name in _ALLOWED_STORAGES:
            return _StorageType(name, _ALLOWED_STORAGES[name])
        raise UnsafeWeightsError(f"weights file references {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeWeightsError(f"unsupported persistent id {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(f"persistent id names a non-storage type {storage_type!r:.200}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise WeightsFormatError(f"malformed storage persistent id {pid!r:.200}")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsFormatError("pre-1.0 storage views are not supported")
        return self._storage_loader(storage_type, key, numel)


def _collect(obj: Any) -> dict[str, np.ndarray]:
    """Turns the unpickled object into ``{key: array}``; unwraps ``{"state_dict": ...}``."""
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"expected a dict of tensors, got {type(obj).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict) and not any(isinstance(v, _LazyTensor) for v in obj.values()):
            obj = inner
            break
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if isinstance(value, _LazyTensor):
            out[str(key)] = value.materialize()
        else:
            logger.debug("skipping non-tensor entry %r in state dict", key)
    if not out:
        raise WeightsFormatError("the file holds no tensors")
    return out


def _load_legacy(f: IO[bytes], file_size: int) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}

    def loader(storage_type: _StorageType, key: str, numel: int) -> _Storage:
        if key not in storages:
            storages[key] = _Storage(storage_type, numel)
        return storages[key]

    def load_one() -> Any:
        try:
            return _RestrictedUnpickler(f, loader).load()
        except (UnsafeWeightsError, WeightsFormatError):
            raise
        except Exception as exc:  # any parse failure means a bad file
            raise WeightsFormatError(f"cannot parse legacy weights file: {exc}") from exc

    if load_one() != _LEGACY_MAGIC:
        raise WeightsFormatError("not a PyTorch weights file (bad magic number)")
    protocol = load_one()
    if protocol != _LEGACY_PROTOCOL:
        raise WeightsFormatError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = load_one()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise WeightsFormatError("big-endian legacy weights files are not supported")
    result = load_one()
    keys = load_one()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsFormatError("malformed storage key list")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise WeightsFormatError(f"storage {key!r} is listed but never used")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsFormatError(f"file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * storage.storage_type.dtype.itemsize
        if numel < 0 or nbytes > file_size - f.tell():
            raise WeightsFormatError(f"storage {key!r} claims {numel} elements, more than the file holds")
        storage.data = np.frombuffer(f.read(nbytes), dtype=storage.storage_type.dtype)
        storage.numel = numel
    return _collect(result)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsFormatError(f"expected one <prefix>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).strip() != b"little":
            raise WeightsFormatError("big-endian weights archives are not supported")
        members = set(names)

        def loader(storage_type: _StorageType, key: str, numel: int) -> _Storage:
            member = f"{prefix}data/{key}"
            if member not in members:
                raise WeightsFormatError(f"storage {key!r} is missing from the archive")
            raw = archive.read(member)
            dtype = storage_type.dtype
            if len(raw) < numel * dtype.itemsize:
                raise WeightsFormatError(f"storage {key!r} has {len(raw)} bytes, expected {numel * dtype.itemsize}")
            storage = _Storage(storage_type, numel)
            storage.data = np.frombuffer(raw, dtype=dtype, count=numel)
            return storage

        try:
            result = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), loader).load()
        except (UnsafeWeightsError, WeightsFormatError):
            raise
        except Exception as exc:  # any parse failure means a bad file
            raise WeightsFormatError(f"cannot parse weights archive: {exc}") from exc
    return _collect(result)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict without torch.

    Args:
        path: a ``.pth``/``.pt`` file in the legacy or the zip format.

    Returns:
        ``{parameter name: array}``, each array C-contiguous with the tensor's shape and
        its dtype (float32 for float and bfloat16 tensors, int64 for long, ...).
        Non-tensor entries (e.g. plain ints) are skipped.

    Raises:
        UnsafeWeightsError: the pickle references anything but OrderedDict, the tensor
            rebuild functions and the torch storage types.
        WeightsFormatError: the file is malformed or truncated.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with path.open("rb") as f:
        return _load_legacy(f, path.stat().st_size)
