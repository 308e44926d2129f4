"""load_model(name_or_path, device, dtype) -> LoadedModel: resolve, read config, build, fill weights."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference import hub, ops, quant, registry
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
) -> LoadedModel:
    """Resolve and load a model; every failure is a ModelLoadError that says what to do."""
    report = progress or (lambda msg: log.info("%s", msg))
    auto = isinstance(dtype, str) and dtype.lower() == "auto"
    dev, dt = parse_device(device), parse_dtype("float32" if auto else dtype)
    t0 = time.perf_counter()
    resolved = hub.resolve(name_or_path, allow_fallback=allow_fallback)
    path = resolved.path
    config_dict = read_config_json(path)
    fam = registry.family_for(config_dict)
    config = fam.config_class().from_dict(config_dict)
    why = ""
    if auto:
        dtype, why = auto_precision(dev, fam.family)
        dt = parse_dtype(dtype)
        report(f"dtype auto: {dtype} ({why})")
    if is_int8(dtype):
        quant.check_int8(dev, fam.family)
    try:
        tokenizer = load_tokenizer(path)
    except TokenizerError as exc:
        raise ModelLoadError(str(exc)) from exc
    report(f"loading {resolved.name} ({fam.family}, {config.n_layer} layers) from {path} to {dev} {dtype}")
    with torch.device("meta"):
        model = fam.model_class()(config)
    source = open_weights(path)
    try:
        fill_weights(model, source, fam.weight_map(config), fam.ignored, dev, dt)
    finally:
        source.close()
    if hasattr(model, "init_buffers"):
        model.init_buffers(dev)
    if hasattr(model, "prepare_for_inference"):
        model.prepare_for_inference()
    if is_int8(dtype):
        nbytes = quant.quantize_model(model)
        report(f"quantized {resolved.name}'s linear weights to int8 ({nbytes / 2**20:.0f} MiB)")
    else:
        ops.store_transposed(model)  # one-row float32 products read rows (ops.bag_linear) where fbgemm runs
    model.eval().requires_grad_(False)
    report(f"loaded {resolved.name} in {time.perf_counter() - t0:.1f}s")
    return LoadedModel(
        name=resolved.name,
        path=path,
        family=fam.family,
        config=config,
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=dt,
        notice=resolved.message,
        weights="int8" if is_int8(dtype) else "",
        why=why,
    )


def fill_weights(
    model: nn.Module,
    source: WeightSource,
    weight_map: dict[str, tuple[str, ...]],
    ignored: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Replace each (meta) parameter by its checkpoint tensor, one at a time, straight to device+dtype."""
    used = set()
    for name, param in list(model.named_parameters()):
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
    skip = re.compile("|".join(f"(?:{p})" for p in ignored)) if ignored else None
    extra = [n for n in source.names() if n not in used and not (skip and skip.fullmatch(n))]
    if extra:
        log.warning("ignoring %d unexpected checkpoint tensors, e.g. %s", len(extra), ", ".join(extra[:3]))
