"""Checkpoint tensors by name: model.safetensors, sharded index, or pytorch_model.bin; one tensor at a time.

safetensors files are read with plain reads into a fresh buffer per tensor (no mapping: nothing of the file
stays resident once the tensor is converted and dropped); pytorch_model.bin is memory-mapped by torch.load
and each tensor's pages are handed back (madvise) once it is copied out.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import struct
from pathlib import Path

import torch
from torch import Tensor

from inference.errors import ModelLoadError

log = logging.getLogger(__name__)

# Tried in this order.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WeightSource:
    """Tensors of a checkpoint, read one at a time; get() returns a tensor that owns its memory."""

    def __init__(self, files: dict[str, Path], handles: dict[Path, object] | None = None):
        self._file_of = files  # tensor name -> file
        self._handles: dict[Path, object] = dict(handles or {})

    def names(self) -> list[str]:
        """Every tensor name in the checkpoint."""
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = _open(path)
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, without reading its data when the format allows."""
        h = self._handle(self._file_of[name])
        return tuple(h[name].shape) if isinstance(h, dict) else h.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's stored dtype, without reading its data when the format allows."""
        h = self._handle(self._file_of[name])
        return h[name].dtype if isinstance(h, dict) else h.dtype(name)

    def nbytes(self, name: str) -> int:
        """The tensor's stored size in bytes."""
        return _numel(self.shape(name)) * self.dtype(name).itemsize

    def files(self) -> list[Path]:
        """The checkpoint's weight files."""
        return sorted(set(self._file_of.values()))

    def get(self, name: str) -> Tensor:
        """The tensor on CPU as stored, in memory of its own (no view of a file mapping)."""
        path = self._file_of[name]
        h = self._handle(path)
        try:
            if isinstance(h, dict):  # pytorch_model.bin: copy out of torch.load's mapping, then release it
                t = h[name]
                out = t.clone(memory_format=torch.contiguous_format)
                if h.mapped:  # anonymous memory (a legacy file read whole) must never be released
                    release_pages(t)
                return out
            return h.read(name)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot read tensor {name!r} from {path}: {exc}") from exc

    def close(self) -> None:
        """Drop the file handles (tensors already copied out stay valid)."""
        self._handles.clear()


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class SafetensorsFile:
    """A .safetensors file: its header parsed and checked against the file's size; tensors read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise ValueError(f"header length {n} is beyond the file's {size} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self.base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            dtype = _SAFETENSORS_DTYPES.get(e.get("dtype"))
            begin, end = e["data_offsets"]
            shape = tuple(int(d) for d in e["shape"])
            if dtype is None:
                raise ValueError(f"tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
            if not 0 <= begin <= end or end - begin != _numel(shape) * dtype.itemsize:
                raise ValueError(f"tensor {name!r}: offsets {begin}..{end} do not fit shape {list(shape)}")
            if self.base + end > size:
                raise ValueError(f"tensor {name!r} ends at byte {self.base + end}, beyond the file's {size}")
            self.entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][0]

    def read(self, name: str) -> Tensor:
        """The tensor, read into a new buffer (plain reads, no mapping)."""
        dtype, shape, begin, end = self.entries[name]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.base + begin)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise ValueError(f"file ended inside tensor {name!r}")
                done += got
        return buf.view(dtype).view(shape)


_libc = None


def release_pages(t: Tensor) -> None:
    """Hand back the resident pages of a tensor that views a private file mapping (re-read if touched)."""
    global _libc
    nbytes = t.untyped_storage().nbytes()
    if nbytes < mmap.PAGESIZE:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        start = t.untyped_storage().data_ptr()
        first = (start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        last = (start + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):  # not Linux/glibc: the pages go when the mapping does
        pass


class _State(dict):
    """A pytorch_model.bin state dict; `mapped` when torch.load memory-mapped it (pages may be released)."""

    def __init__(self, state: dict, mapped: bool):
        super().__init__(state)
        self.mapped = mapped


def _open(path: Path):
    """A SafetensorsFile or a (memory-mapped) state dict."""
    try:
        if path.suffix == ".safetensors":
            return SafetensorsFile(path)
        mapped = True
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
            mapped = False
        if not isinstance(state, dict):
            raise ModelLoadError(f"{path} does not hold a state dict")
        return _State(state, mapped)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path} is unreadable (truncated or corrupt?): {exc}") from exc


def open_weights(directory: Path) -> WeightSource:
    """Find the checkpoint's weight files in `directory` and index their tensors."""
    directory = Path(directory)
    for fname in WEIGHT_FILES:
        path = directory / fname
        if not path.is_file():
            continue
        if fname.endswith(".index.json"):
            try:
                weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"{path} is not a valid shard index: {exc}") from exc
            files = {}
            for name, shard in weight_map.items():
                shard_path = directory / shard
                if not shard_path.is_file():
                    raise ModelLoadError(f"shard {shard} listed in {path.name} is missing from {directory}")
                files[name] = shard_path
            return WeightSource(files)
        handle = _open(path)
        return WeightSource({name: path for name in handle.keys()}, {path: handle})
    raise ModelLoadError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")
