"""The prepared-weights cache: a loaded model's weights in the engine's ready layout (fused, int8 q + scale +
bias or float stored as the kernels read it), one file per (checkpoint content, engine version, precision,
CPU kernel choice). A later load maps the float tensors straight from the file and re-prepacks the int8
ones (fbgemm's packed layout cannot be saved), with no conversion. Written atomically (a temporary file
renamed); an entry that is truncated, corrupt or from another engine is ignored and rebuilt (one log line).

File: MAGIC, header length (u64 little-endian), JSON header, zeros up to DATA_ALIGN, then each tensor at a
multiple of TENSOR_ALIGN bytes of the data section.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import mmap
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor, nn

from inference import hub, memory, ops, quant

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"CGLSPREP"
DATA_ALIGN, TENSOR_ALIGN = 4096, 64
ENV = "CODEGEN_LSP_PREPARED_CACHE"  # a directory, or "off"; the `preparedCache` setting passes the same
MIN_BYTES = 64 << 20  # smaller checkpoints load in well under a second: not cached
_DTYPES = {str(d)[6:]: d for d in (torch.float32, torch.float16, torch.bfloat16, torch.int8)}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StaleEntry(Exception):
    """A cache entry that cannot be used (the message says why); the loader rebuilds it."""


def cache_dir(setting: str | None = None) -> Path | None:
    """The cache's directory: `setting` (or $CODEGEN_LSP_PREPARED_CACHE) as a path, None when "off";
    by default beside the hub cache: <HF_HOME>/codegen-lsp-prepared."""
    value = (setting or os.environ.get(ENV) or "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else hub.hf_cache_dir().parent / "codegen-lsp-prepared"


def kernel_kind() -> str:
    """The CPU's kernel choice that the ready layout depends on (int8 kernel, VNNI, transposed float32)."""
    vnni = "novnni" if quant.reduce_range() else "vnni"
    bag = "bag" if ops.USE_BAG_GEMV else "plain"
    return f"{torch.backends.cpu.get_cpu_capability()}-{quant.int8_kernel() or 'noint8'}-{vnni}-{bag}"


def engine_version() -> str:
    """The format and a hash of the engine's source (any change to a layout rebuilds the entries)."""
    h = hashlib.sha256(str(FORMAT).encode())
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return f"{FORMAT}-{torch.__version__}-{h.hexdigest()[:16]}"


def content_hash(files: list[Path], root: Path) -> str:
    """sha256 over the weight files' contents: a hub blob's name where it is one, else computed once and
    remembered in <root>/hashes.json by (path, size, mtime, inode)."""
    memo_path = root / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h, changed = hashlib.sha256(), False
    for f in files:
        real = Path(f).resolve()
        st = real.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        if real.parent.name == "blobs" and _HEX64.match(real.name):
            digest = real.name
        elif isinstance(memo.get(str(real)), dict) and memo[str(real)].get("stamp") == stamp:
            digest = memo[str(real)]["sha256"]
        else:
            fh = hashlib.sha256()
            with open(real, "rb") as fp:
                while chunk := fp.read(1 << 24):
                    fh.update(chunk)
            digest, changed = fh.hexdigest(), True
            memo[str(real)] = {"stamp": stamp, "sha256": digest}
        h.update(Path(f).name.encode() + digest.encode())
    if changed:
        _atomic_write(memo_path, json.dumps(memo).encode())
    return h.hexdigest()


def entry_path(root: Path, meta: dict) -> Path:
    """The entry's file for these key fields."""
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    return root / f"{key}.weights"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _plan(model: nn.Module) -> tuple[list[tuple[str, object]], dict[str, str], list[str]]:
    """(name, what) for every tensor to store, aliases (shared parameters), and the int8 weights' names."""
    items, aliases, seen = [], {}, {}
    int8 = quant.int8_weights(model)
    for name, w in int8.items():
        items += [(f"{name}.q", (w, "q")), (f"{name}.scale", (w, "scale"))]
        if w.has_bias:
            items.append((f"{name}.bias", (w, "bias")))
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases[name] = seen[id(p)]
        else:
            seen[id(p)] = name
            items.append((name, p))
    return items, aliases, list(int8)


def _spec(what) -> tuple[torch.dtype, tuple[int, ...], bool]:
    """(dtype, stored shape, transposed) of one item, without unpacking int8 weights."""
    if isinstance(what, tuple):
        w, part = what
        if part == "q":
            return torch.int8, (w.out_features, w.in_features), False
        return torch.float32, (w.out_features,), False
    t = ops.is_transposed(what)
    return what.dtype, tuple(what.t().shape if t else what.shape), t


def _data(what, unpacked: dict) -> Tensor:
    """The tensor to write for one item (an int8 weight is unpacked once for its q, scale and bias)."""
    if isinstance(what, tuple):
        w, part = what
        if unpacked.get("w") is not w:
            unpacked.clear()
            unpacked.update(zip(("q", "scale", "bias"), w.quantized(), strict=True), w=w)
        return unpacked[part]
    return what.detach().t() if ops.is_transposed(what) else what.detach()


def _read(f, offset: int, nbytes: int, dtype: torch.dtype, shape) -> Tensor:
    """Read one tensor into memory of its own (plain reads: no page of the mapping becomes resident)."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    view, done = memoryview(buf.numpy()), 0
    f.seek(offset)
    while done < nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise StaleEntry("the file ended inside a tensor (truncated)")
        done += got
    return buf.view(dtype).view(shape)


def write(path: Path, model: nn.Module, meta: dict) -> int:
    """Write the prepared model's weights to `path` atomically, tensor by tensor; returns the bytes."""
    items, aliases, int8 = _plan(model)
    tensors, offset = {}, 0
    for name, what in items:
        dtype, shape, transposed = _spec(what)
        n = dtype.itemsize
        for d in shape:
            n *= d
        tensors[name] = {
            "dtype": str(dtype).removeprefix("torch."),
            "shape": list(shape),
            "offset": offset,
            "nbytes": n,
            "t": transposed,
        }
        offset = _align(offset + n, TENSOR_ALIGN)
    header = json.dumps({"meta": meta, "tensors": tensors, "aliases": aliases, "int8": int8}).encode()
    start = _align(len(MAGIC) + 8 + len(header), DATA_ALIGN)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            unpacked: dict = {}
            for name, what in items:
                f.seek(start + tensors[name]["offset"])
                data = _data(what, unpacked).contiguous().reshape(-1).view(torch.uint8)
                f.write(memoryview(data.numpy()))
            f.truncate(start + offset)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return start + offset


def drop_superseded(path: Path, meta: dict) -> int:
    """Delete the entries beside `path` for the same checkpoint, precision and CPU kind written by another
    engine version (they can never be used again); returns how many went."""
    same = ("content", "family", "precision", "kernel")
    gone = 0
    for other in path.parent.glob("*.weights"):
        if other == path:
            continue
        try:
            old = _read_header(other)[0].get("meta", {})
        except (OSError, StaleEntry):
            continue
        if all(old.get(k) == meta[k] for k in same) and old.get("engine") != meta["engine"]:
            other.unlink(missing_ok=True)
            gone += 1
    return gone


def _read_header(path: Path) -> tuple[dict, int, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
            raise StaleEntry("not a prepared-weights file")
        (n,) = struct.unpack("<Q", head[len(MAGIC) :])
        if n > size:
            raise StaleEntry("its header is longer than the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise StaleEntry(f"its header is corrupt ({exc})") from None
    start = _align(len(MAGIC) + 8 + n, DATA_ALIGN)
    return header, start, size


def _install(module: nn.Module, attr: str, bias_attr: str, job) -> None:
    """Put a prepacked Int8Weight in place of the module's (meta) weight and bias."""
    module._parameters.pop(attr, None)
    if bias_attr:
        module._parameters.pop(bias_attr, None)
    try:
        w = job.result()
    except RuntimeError as exc:  # fbgemm refused what the file holds
        raise StaleEntry(f"prepacking an int8 weight failed: {exc}") from None
    setattr(module, attr, w)
    if bias_attr:
        setattr(module, bias_attr, None)
    memory.trim_heap()  # prepacking's freed copies stay in glibc's per-thread arenas until trimmed


class _Entry:
    """An entry's header, checked, and its tensors: views of a private mapping, or read into memory."""

    def __init__(self, path: Path, meta: dict):
        self.header, self.start, self.size = _read_header(path)
        if self.header.get("meta") != meta:
            raise StaleEntry("it was written for another engine, precision or checkpoint")
        try:
            self.tensors = self.header["tensors"]
            self.aliases, self.int8 = dict(self.header["aliases"]), list(self.header["int8"])
            for name, e in self.tensors.items():
                if e["dtype"] not in _DTYPES or self.start + e["offset"] + e["nbytes"] > self.size:
                    raise StaleEntry(f"tensor {name!r} lies beyond the end of the file (truncated)")
        except (KeyError, TypeError) as exc:
            raise StaleEntry(f"its header is corrupt ({exc})") from None
        self.path = path
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: nothing is ever written back
        self.data = torch.frombuffer(mm, dtype=torch.uint8)

    def _entry(self, name: str) -> dict:
        if name not in self.tensors:
            raise StaleEntry(f"tensor {name!r} is missing")
        return self.tensors[name]

    def view(self, name: str) -> Tensor:
        """The tensor as a view of the mapping (its pages become resident as they are read)."""
        e = self._entry(name)
        begin = self.start + e["offset"]
        t = self.data[begin : begin + e["nbytes"]].view(_DTYPES[e["dtype"]]).view(e["shape"])
        return t.t() if e["t"] else t

    def read(self, f, name: str) -> Tensor:
        """The tensor read from the open file `f` into memory of its own."""
        e = self._entry(name)
        return _read(f, self.start + e["offset"], e["nbytes"], _DTYPES[e["dtype"]], e["shape"])

    def load_int8(self, model: nn.Module) -> None:
        """Every int8 weight read, prepacked (a copy in fbgemm's layout: about 100 MB/s a core, the slowest
        step) and put in place; prepacks run on every core (the op releases the GIL), one a core in flight
        and one read ahead (their q held meanwhile)."""
        threads = max(1, torch.get_num_threads())
        with open(self.path, "rb", buffering=0) as f, ThreadPoolExecutor(threads) as pool:
            pending: collections.deque = collections.deque()
            for i, name in enumerate(self.int8):
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                bias_attr = dict(getattr(module, "int8_weights", ())).get(attr, "missing")
                if bias_attr == "missing":
                    raise StaleEntry(f"{name} is not an int8 weight of this model")
                bias = self.read(f, f"{name}.bias") if f"{name}.bias" in self.tensors else None
                q, scale = self.read(f, f"{name}.q"), self.read(f, f"{name}.scale")
                pending.append(
                    (module, attr, bias_attr, pool.submit(quant.Int8Weight.from_quantized, q, scale, bias))
                )
                del q
                while len(pending) > threads or (pending and i == len(self.int8) - 1):
                    _install(*pending.popleft())

    def load_float(self, model: nn.Module) -> None:
        """Every remaining parameter as a view of the mapping; shared ones shared again."""
        for name, p in list(model.named_parameters(remove_duplicate=False)):
            if name in self.aliases:
                continue
            module_name, _, leaf = name.rpartition(".")
            t = self.view(name)
            if tuple(t.shape) != tuple(p.shape):
                raise StaleEntry(f"tensor {name!r} has shape {list(t.shape)}, the model {list(p.shape)}")
            (model.get_submodule(module_name) if module_name else model)._parameters[leaf] = nn.Parameter(
                t, requires_grad=False
            )
        for name, target in self.aliases.items():
            module_name, _, leaf = name.rpartition(".")
            tm, _, tl = target.rpartition(".")
            shared = (model.get_submodule(tm) if tm else model)._parameters[tl]
            (model.get_submodule(module_name) if module_name else model)._parameters[leaf] = shared


def load(path: Path, model: nn.Module, meta: dict) -> int:
    """Fill a meta-built model already brought to its inference layout (prepare_block) from the entry;
    returns the entry's bytes.

    Float tensors are views of a private mapping of the file; int8 ones are read and prepacked. Raises
    StaleEntry (the model left with meta tensors) when the entry is not usable.
    """
    entry = _Entry(path, meta)
    entry.load_int8(model)
    entry.load_float(model)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise StaleEntry(f"it holds no tensor for {left[0]}")
    return entry.size
