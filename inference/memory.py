"""Memory: what a model will need (from the checkpoint's header, before loading), what it holds once loaded,
what the machine has free, and a refusal that says what would fit."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference import quant
from inference.errors import ModelLoadError

log = logging.getLogger(__name__)

# The Python interpreter, torch, the tokenizer and the server besides the weights and the KV cache, measured
# by bench/bench_load.py (a process that imported what a load imports, and nothing loaded): PERFORMANCE.md.
FIXED_OVERHEAD = 400 << 20


class ModelMemoryError(ModelLoadError):
    """The model would not fit in the memory this machine has available (the message says what would)."""


@dataclass
class Estimate:
    """A model's bytes in its final precision, and the most the load holds at once (both without the KV)."""

    weights: int
    peak: int


def _int8_rows(module: nn.Module, leaf: str, p: torch.Tensor) -> bool:
    """Whether this parameter becomes int8 under dtype int8: the 2-D weight of a linear layer."""
    return leaf == "weight" and p.dim() == 2 and isinstance(module, nn.Linear)


def estimate(model: nn.Module, int8: bool, dtype: torch.dtype, prepared: bool = False) -> Estimate:
    """Bytes of a model built on meta (unfused, the checkpoint's layout) once loaded in int8 or `dtype`.

    Tied weights count twice (a tied output layer may be shared only once both are in): an upper bound.
    The peak adds the largest block in float twice (its tensors and their fused copy), or, reading a
    prepared cache, the largest tensor once.
    """
    weights, blocks, largest = 0, {}, 0
    for name, p in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        as_int8 = int8 and _int8_rows(module, leaf, p)
        final = p.numel() + 8 * p.shape[0] if as_int8 else p.numel() * dtype.itemsize
        weights += final
        float_bytes = p.numel() * dtype.itemsize
        largest = max(largest, float_bytes)
        parts = name.split(".")
        unit = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        blocks[unit] = blocks.get(unit, 0) + float_bytes
    transient = largest if prepared else 2 * max(blocks.values(), default=0)
    return Estimate(weights=weights, peak=weights + transient)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(
    name: str, precision: str, need: Estimate, kv_bytes: int, available: int | None, int8_alt: Estimate | None
) -> None:
    """Raise ModelMemoryError naming the model, what it needs and what would fit, when it cannot fit."""
    if available is None:
        return
    total = need.peak + kv_bytes
    if total <= available:
        return
    gb = 2**30
    fits = ["a smaller checkpoint (e.g. Salesforce/codegen-350M-mono)"]
    if int8_alt is not None:
        alt = int8_alt.peak + kv_bytes
        verdict = "would fit" if alt <= available else "would not fit either"
        fits.insert(0, f"dtype int8 (about {alt / gb:.1f} GB; {verdict})")
    fits.append("the team server (the `remote` setting, docs/TEAM-SERVER.md)")
    raise ModelMemoryError(
        f"{name} needs about {total / gb:.1f} GB to load in {precision} ({need.weights / gb:.1f} GB of "
        f"weights, {kv_bytes / gb:.1f} GB of KV cache, {(need.peak - need.weights) / gb:.1f} GB while "
        f"converting) but this machine has {available / gb:.1f} GB available; what would fit: "
        + "; ".join(fits)
    )


def resident_bytes(model: nn.Module) -> int:
    """Bytes the model's tensors hold: parameters and buffers (a shared one once) and int8 weights.

    Counted per tensor, not per storage: the prepared cache's tensors are views of one file mapping.
    """
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel())
        if not t.is_meta and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total + quant.int8_bytes(model)


def trim_heap() -> None:
    """Hand freed heap pages back to the OS: glibc keeps freed blocks under its dynamic mmap threshold (a
    few MiB each: KV blocks, a load's smaller tensors) in its heap, so RSS would not show them freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def rss_bytes() -> int:
    """This process's resident set size now (VmRSS), 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
