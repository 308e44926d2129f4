"""Checkpoint tensors by name: model.safetensors, sharded index, or pytorch_model.bin; memory-mapped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
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
    """Tensors of a checkpoint, read one at a time from memory-mapped files."""

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
        if isinstance(h, dict):
            return tuple(h[name].shape)
        return tuple(h.get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's stored dtype, without reading its data when the format allows."""
        h = self._handle(self._file_of[name])
        if isinstance(h, dict):
            return h[name].dtype
        return _SAFETENSORS_DTYPES[h.get_slice(name).get_dtype()]

    def get(self, name: str) -> Tensor:
        """The tensor on CPU as stored (memory-mapped where possible)."""
        path = self._file_of[name]
        h = self._handle(path)
        try:
            return h[name] if isinstance(h, dict) else h.get_tensor(name)
        except Exception as exc:
            raise ModelLoadError(f"cannot read tensor {name!r} from {path}: {exc}") from exc

    def close(self) -> None:
        """Drop the file handles (tensors already copied out stay valid)."""
        self._handles.clear()


def _open(path: Path):
    """A safetensors handle or a (memory-mapped) state dict."""
    try:
        if path.suffix == ".safetensors":
            return safe_open(str(path), framework="pt", device="cpu")
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
        if not isinstance(state, dict):
            raise ModelLoadError(f"{path} does not hold a state dict")
        return state
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
