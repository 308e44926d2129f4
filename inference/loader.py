"""load_model(name_or_path, device, dtype) -> LoadedModel: resolve, read config, build, fill weights."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference import hub, memory, ops, prepared, quant, registry
from inference.config import ModelConfig, read_config_json
from inference.errors import ModelLoadError
from inference.kv_cache import kv_cache_dtype
from inference.precision import auto_precision
from inference.weights import WeightSource, open_weights
from tokenizer import Tokenizer, TokenizerError, load_tokenizer

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass
class LoadedModel:
    """A model ready for inference, with its tokenizer and where it came from."""

    name: str
    path: Path
    family: str
    config: ModelConfig
    model: nn.Module
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype  # activations (and the KV cache but under int8: kv_dtype)
    notice: str | None = None  # one-line message to show once (e.g. fell back to the built-in model)
    weights: str = ""  # "int8" when the linear weights are quantized, else the same as dtype
    why: str = ""  # why this precision, when dtype was 'auto'
    load_s: float = 0.0  # seconds from the call to the model ready (the prepared cache's write not counted)
    prepared: str = ""  # the prepared-weights cache: 'used', 'writing', 'written', 'off', 'not written (why)'
    resident_bytes: int = 0  # the weights' bytes in memory (memory.resident_bytes)
    peak_estimate: int = 0  # the load's estimated peak (memory.estimate), KV cache not included

    @property
    def precision(self) -> str:
        """What the weights are held in: 'int8', 'float32', 'bfloat16', 'float16'."""
        return self.weights or str(self.dtype).removeprefix("torch.")

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's dtype: float16 under int8 weights (kv_cache.kv_cache_dtype says why), else dtype."""
        return kv_cache_dtype(self.weights or self.dtype, self.device)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (short forms too) -> torch.dtype; 'int8': float32 activations."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if is_int8(dtype):
        return torch.float32
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(
            f"unsupported dtype {dtype!r}; use auto, float32, bfloat16, float16 or int8"
        ) from None


def is_int8(dtype: str | torch.dtype) -> bool:
    """Whether `dtype` asks for int8 weights (float32 activations)."""
    return isinstance(dtype, str) and dtype.lower() == "int8"


def parse_device(device: str | torch.device) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:N' -> torch.device, checking that it exists."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def load_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    progress: Callable[[str], None] | None = None,
    allow_fallback: bool = True,
    prepared_cache: str | None = None,
    kv_bytes: int = 0,
    available: Callable[[], int | None] | None = None,
    on_fits: Callable[[], None] | None = None,
) -> LoadedModel:
    """Resolve and load a model; every failure is a ModelLoadError that says what to do.

    prepared_cache: its directory, "off", or None (inference/prepared.py: cache_dir). The memory check adds
    kv_bytes to the model's peak against available() (MemAvailable); on_fits() runs once it passed."""
    report = progress or (lambda msg: log.info("%s", msg))
    t0 = time.perf_counter()
    dev = parse_device(device)
    resolved = hub.resolve(name_or_path, allow_fallback=allow_fallback)
    path = resolved.path
    fam = registry.family_for(config_dict := read_config_json(path))
    config = fam.config_class().from_dict(config_dict)
    dtype, dt, why = _precision(dtype, dev, fam.family, report)
    int8 = is_int8(dtype)
    tokenizer = _tokenizer(path)
    precision = "int8" if int8 else str(dt).removeprefix("torch.")
    report(f"loading {resolved.name} ({fam.family}, {config.n_layer} layers) from {path}: {dev} {precision}")
    source = open_weights(path)
    try:
        checks = (prepared_cache, kv_bytes, available, on_fits)
        model, used, need, cache = _load_weights(
            fam, config, source, resolved.name, precision, dev, dt, checks
        )
    finally:
        source.close()
    model.eval().requires_grad_(False)
    memory.trim_heap()
    load_s = time.perf_counter() - t0
    used = "writing" if used == "written" else used
    report(f"loaded {resolved.name} in {load_s:.1f}s (prepared cache: {used})")
    loaded = LoadedModel(
        name=resolved.name,
        path=path,
        family=fam.family,
        config=config,
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=dt,
        notice=resolved.message,
        weights="int8" if int8 else "",
        why=why,
        load_s=load_s,
        prepared=used,
        resident_bytes=memory.resident_bytes(model),
        peak_estimate=need.peak,
    )
    if used == "writing":  # behind the first completion, not before it (the process waits for it at exit)
        _write_behind(cache, loaded)
    return loaded


_writers: list[threading.Thread] = []


def _write_behind(cache: tuple[Path, dict], loaded: LoadedModel) -> None:
    """Write the prepared cache's entry on a thread of its own (not a daemon: a process waits for it)."""
    writer = threading.Thread(target=_write_entry, args=(*cache, loaded), name="prepared-cache-write")
    _writers.append(writer)
    writer.start()


def wait_for_writes() -> None:
    """Wait until every prepared-cache entry being written is written (tests, benchmarks)."""
    while _writers:
        _writers.pop().join()


def _load_weights(fam, config, source, name, precision, dev, dt, checks):
    """(model, what the prepared cache did, the memory estimate, (entry, meta)): the memory check, then
    the model from the prepared cache or the checkpoint."""
    prepared_cache, kv_bytes, available, on_fits = checks
    with torch.device("meta"):
        model = fam.model_class()(config)
    entry, meta = _cache_entry(prepared_cache, model, source, fam.family, precision, dev)
    need = _check_memory(model, name, precision, dev, dt, fam.family, entry, kv_bytes, available)
    if on_fits is not None:
        on_fits()
    model, used = _fill(model, fam, config, source, (entry, meta), dev, dt, precision == "int8")
    if used != "used" and precision == "int8":
        log.info("quantized %s's linear weights to int8 (%d MiB)", name, quant.int8_bytes(model) >> 20)
    return model, used, need, (entry, meta)


def _tokenizer(path: Path) -> Tokenizer:
    """The checkpoint's tokenizer; its failure as a ModelLoadError."""
    try:
        return load_tokenizer(path)
    except TokenizerError as exc:
        raise ModelLoadError(str(exc)) from exc


def _precision(dtype, dev: torch.device, family: str, report) -> tuple[str | torch.dtype, torch.dtype, str]:
    """(dtype asked or chosen by 'auto', the activations' torch dtype, why 'auto' chose it); int8 checked."""
    why = ""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        dtype, why = auto_precision(dev, family)
        report(f"dtype auto: {dtype} ({why})")
    if is_int8(dtype):
        quant.check_int8(dev, family)
    return dtype, parse_dtype(dtype), why


def _check_memory(model, name, precision, dev, dt, family, entry, kv_bytes, available) -> memory.Estimate:
    """The load's estimate; a ModelMemoryError saying what would fit when it does not fit."""
    int8 = precision == "int8"
    need = memory.estimate(model, int8, dt, prepared=entry is not None and entry.is_file())
    int8_alt = None
    if not int8 and dev.type == "cpu" and quant.int8_kernel() and family in quant.QUANTIZABLE:
        int8_alt = memory.estimate(model, True, torch.float32)
    memory.check_fits(name, precision, need, kv_bytes, (available or memory.available_bytes)(), int8_alt)
    return need


def _fill(model, fam, config, source, cache, dev, dt, int8) -> tuple[nn.Module, str]:
    """The meta-built model filled from the prepared cache's entry when it is usable, else from the
    checkpoint; with what the cache did: 'used', 'written' (to be written), 'off'."""
    entry, meta = cache
    if entry is not None and entry.is_file():
        try:
            _layout_on_meta(model)
            prepared.load(entry, model, meta)
            if hasattr(model, "init_buffers"):
                model.init_buffers(dev)
            return model, "used"
        except (prepared.StaleEntry, OSError) as exc:
            log.warning("prepared-weights cache entry %s ignored and rebuilt: %s", entry, exc)
            with torch.device("meta"):
                model = fam.model_class()(config)
    stream_weights(model, source, fam.weight_map(config), fam.ignored, dev, dt, int8)
    return model, "off" if entry is None else "written"


def stream_weights(
    model: nn.Module,
    source: WeightSource,
    weight_map: dict[str, tuple[str, ...]],
    ignored: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
    int8: bool,
) -> None:
    """Fill a meta-built model tensor by tensor, each block brought to its final layout (fused, int8 or
    transposed) before the next is read, where the model has prepare_block; then the rest as before."""
    hook = getattr(model, "prepare_block", None)

    def finish(block: nn.Module) -> None:
        hook(block)
        if int8:
            quant.quantize_model(block)
        else:
            ops.store_transposed(block)
        memory.trim_heap()  # the block's float tensors were freed into glibc's heap: hand them back now

    fill_weights(model, source, weight_map, ignored, device, dtype, after_block=finish if hook else None)
    if hasattr(model, "init_buffers"):
        model.init_buffers(device)
    if hasattr(model, "prepare_for_inference"):
        model.prepare_for_inference()
    if int8:
        quant.quantize_model(model)
    else:
        ops.store_transposed(model)  # one-row float32 products read rows (ops.bag_linear) where fbgemm runs


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks: each element of an nn.ModuleList child, by its dotted name ('h.0')."""
    out = []
    for child_name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            out += [(f"{child_name}.{i}", m) for i, m in enumerate(child)]
    return out


def _layout_on_meta(model: nn.Module) -> None:
    """Bring every block of a meta-built model to its inference layout (prepare_block runs on meta)."""
    for _, block in blocks(model):
        model.prepare_block(block)


def _cache_entry(setting, model, source, family, precision, dev) -> tuple[Path | None, dict | None]:
    """The prepared cache's entry for this load and its key fields, or (None, None) where none applies."""
    root = prepared.cache_dir(setting)
    if root is None or dev.type != "cpu" or not hasattr(model, "prepare_block"):
        return None, None  # GPUs load straight from the checkpoint; a family needs prepare_block to map
    if sum(source.nbytes(n) for n in source.names()) < prepared.MIN_BYTES:
        return None, None
    try:
        content = prepared.content_hash(source.files(), root)
    except OSError as exc:
        log.warning("prepared-weights cache unavailable (%s): %s", root, exc)
        return None, None
    meta = dict(
        content=content,
        engine=prepared.engine_version(),
        kernel=prepared.kernel_kind(),
        family=family,
        precision=precision,
    )
    return prepared.entry_path(root, meta), meta


def _write_entry(entry: Path, meta: dict, loaded: LoadedModel) -> None:
    """Write the prepared cache's entry for a model just loaded (a thread of its own, reading the weights
    while they serve); loaded.prepared becomes 'written' or says why not."""
    t0 = time.perf_counter()
    try:
        nbytes = prepared.write(entry, loaded.model, meta)
    except Exception as exc:  # a thread of its own: nothing above it would say
        log.warning("could not write the prepared-weights cache entry %s: %s", entry, exc)
        loaded.prepared = f"not written ({getattr(exc, 'strerror', None) or exc})"
        return
    log.info("wrote prepared weights %s (%d MiB) in %.1fs", entry, nbytes >> 20, time.perf_counter() - t0)
    if gone := prepared.drop_superseded(entry, meta):
        log.info("removed %d prepared-weights entries of older engine versions", gone)
    loaded.prepared = "written"


def fill_weights(
    model: nn.Module,
    source: WeightSource,
    weight_map: dict[str, tuple[str, ...]],
    ignored: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
    after_block: Callable[[nn.Module], None] | None = None,
) -> None:
    """Replace each (meta) parameter by its checkpoint tensor, one at a time, straight to device+dtype;
    after_block(block) runs as soon as each block's (blocks()) parameters are all in."""
    used = set()
    block_of = {prefix: m for prefix, m in blocks(model)} if after_block else {}
    current = None
    for name, param in list(model.named_parameters()):
        parts = name.split(".")
        block = block_of.get(".".join(parts[:2]))
        if current is not None and block is not current:
            after_block(current)
        current = block
        candidates = registry.expand(weight_map, name)
        if not candidates:
            raise ModelLoadError(f"internal error: no checkpoint name for parameter {name}")
        ckpt = next((c for c in candidates if c in source), None)
        if ckpt is None:
            raise ModelLoadError(f"checkpoint is missing tensor {candidates[0]!r}")
        shape = source.shape(ckpt)
        if tuple(shape) != tuple(param.shape):
            raise ModelLoadError(
                f"tensor {ckpt!r} has shape {list(shape)}, expected {list(param.shape)} for this config.json"
            )
        tensor = source.get(ckpt).to(device=device, dtype=dtype)
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        used.add(ckpt)
    if current is not None:
        after_block(current)
    skip = re.compile("|".join(f"(?:{p})" for p in ignored)) if ignored else None
    extra = [n for n in source.names() if n not in used and not (skip and skip.fullmatch(n))]
    if extra:
        log.warning("ignoring %d unexpected checkpoint tensors, e.g. %s", len(extra), ", ".join(extra[:3]))
