"""int8 weights on CPU: symmetric per-output-channel quantization at load time, products through fbgemm.

Kernel choice (bench/bench_kernels.py measures them; see docs/PERFORMANCE.md): torch 2.13's fbgemm
dynamic-quantized linear (int8 weights prepacked once, activations quantized per call to uint8 per tensor,
int32 accumulation) beats float32 oneDNN for 1 row (memory: a quarter of the bytes) and for 1,000 rows
(integer dot products). `aten._weight_int8pack_mm` (weight-only) is slower than float32 on both kinds of
CPU measured, and bfloat16 only gains with AMX, so neither is used. fbgemm needs x86 with AVX2; without
VNNI its AVX2 kernel sums pairs of uint8 x int8 products in int16, which can saturate, so activations then
use 7 bits (reduce_range), as torch does by default.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from inference.errors import ModelLoadError

log = logging.getLogger(__name__)

QMAX = 127  # symmetric int8: q in [-127, 127], w ~ q * scale
QUANT_ROWS = 4096  # rows quantized at a time (each row is independent: the same bits as all at once)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fbgemm_cpu() -> bool:
    """Whether torch's fbgemm kernels run here: an x86 CPU with AVX2 (or AVX-512) and a build with fbgemm."""
    capable = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return capable and "fbgemm" in torch.backends.quantized.supported_engines


def int8_kernel() -> str | None:
    """'fbgemm' where this CPU and torch build can run int8 products, else None."""
    return "fbgemm" if fbgemm_cpu() else None


def reduce_range() -> bool:
    """7-bit activations unless the CPU has VNNI (int32 accumulation of uint8 x int8, no saturation)."""
    return not ({"avx512_vnni", "avx_vnni"} & cpu_flags())


def check_int8(device: torch.device, family: str) -> None:
    """Raise a ModelLoadError saying what can run when int8 cannot run here."""
    if device.type != "cpu":
        raise ModelLoadError(
            f"dtype int8 runs on CPU only; on {device.type} use float16 or bfloat16 (or --device cpu)"
        )
    if int8_kernel() is None:
        raise ModelLoadError(
            f"dtype int8 needs an x86 CPU with AVX2 and torch's fbgemm (this CPU: "
            f"{torch.backends.cpu.get_cpu_capability()}); use float32 or bfloat16"
        )
    if family not in QUANTIZABLE:
        raise ModelLoadError(f"dtype int8 is not available for {family}; it is for {', '.join(QUANTIZABLE)}")


def quantize_per_channel(w: Tensor) -> tuple[Tensor, Tensor]:
    """w: [out, in] float -> (q [out, in] int8, scale [out] float32) with |w - q * scale| <= scale / 2."""
    assert w.dim() == 2
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    for r in range(0, w.shape[0], QUANT_ROWS):  # rows at a time: temporaries of QUANT_ROWS rows, not of w
        # float32 CPU weights may be stored transposed (ops.store_transposed): contiguous rows first
        wr = w[r : r + QUANT_ROWS].float().contiguous()  # [rows, in]
        s = (wr.abs().amax(dim=1) / QMAX).clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero row
        q[r : r + QUANT_ROWS] = torch.round(wr / s[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
        scale[r : r + QUANT_ROWS] = s
    return q, scale


@contextlib.contextmanager
def _engine(name: str):
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = prev


class Int8Weight:
    """A linear layer's int8 weight, per-channel scales and float bias, prepacked: y = x @ (q*s).T + b."""

    def __init__(
        self, w: Tensor | None, b: Tensor | None = None, quantized: tuple[Tensor, Tensor] | None = None
    ):
        q, scale = quantized if quantized is not None else quantize_per_channel(w)
        self.out_features, self.in_features = q.shape
        self.scale = scale
        self.reduce_range = reduce_range()
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; prepack needs one
            warnings.simplefilter("ignore", UserWarning)
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        with _engine("fbgemm"):
            bias = None if b is None else b.detach().float().contiguous()
            self.has_bias = bias is not None
            self.packed = torch.ops.quantized.linear_prepack(qw, bias)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor, bias: Tensor | None) -> Int8Weight:
        """Prepack already quantized weights (q [out, in] int8, scale [out] float32): the prepared cache."""
        return cls(None, bias, quantized=(q, scale))

    def quantized(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(q [out, in] int8, scale [out] float32, bias [out] float32 or None), from fbgemm's layout."""
        with _engine("fbgemm"):
            qw, bias = torch.ops.quantized.linear_unpack(self.packed)
        return qw.int_repr(), self.scale, bias

    @property
    def nbytes(self) -> int:
        """Bytes a product reads: int8 weights + float32 scales (+ bias)."""
        return self.out_features * (self.in_features + 8)

    def __call__(self, x: Tensor) -> Tensor:
        """x: [..., in] float32 -> [..., out] float32."""
        assert x.dtype == torch.float32 and x.shape[-1] == self.in_features
        return torch.ops.quantized.linear_dynamic(x.contiguous(), self.packed, self.reduce_range)

    def __repr__(self) -> str:
        return f"Int8Weight(out={self.out_features}, in={self.in_features})"


def _pop_quantized(module: nn.Module, weight: str) -> tuple[Tensor, Tensor]:
    """Remove module.<weight> and return it quantized (q, scale)."""
    return quantize_per_channel(module._parameters.pop(weight).detach())


def quantize_module_weight(module: nn.Module, weight: str, bias: str | None) -> None:
    """Replace module.<weight> (and fold module.<bias> in) by an Int8Weight; the float tensors are dropped."""
    b = module._parameters.pop(bias) if bias and bias in module._parameters else None
    q, scale = _pop_quantized(module, weight)  # the float weight is freed before prepacking
    setattr(module, weight, Int8Weight.from_quantized(q, scale, None if b is None else b.detach()))
    if bias:
        setattr(module, bias, None)


def quantize_model(model: nn.Module) -> int:
    """Quantize every linear weight of a prepared (fused) model or block in place; returns the int8 bytes."""
    for module in list(model.modules()):
        for weight, bias in getattr(module, "int8_weights", ()):
            if not isinstance(getattr(module, weight, None), Int8Weight):  # a block the loader already did
                quantize_module_weight(module, weight, bias)
    total = int8_bytes(model)
    assert total, f"{type(model).__name__} names no weights to quantize (int8_weights)"
    return total


QUANTIZABLE = ("codegen", "gpt_neox_japanese", "llama")


def int8_weights(model: nn.Module) -> dict[str, Int8Weight]:
    """Every Int8Weight of a quantized model by its dotted name (e.g. 'h.0.w_in', 'lm_head.weight')."""
    out = {}
    for name, module in model.named_modules():
        for weight, _ in getattr(module, "int8_weights", ()):
            w = getattr(module, weight, None)
            if isinstance(w, Int8Weight):
                out[f"{name}.{weight}" if name else weight] = w
    return out


def int8_bytes(model: nn.Module) -> int:
    """Bytes of the int8 weights and their scales and biases (not in model.parameters())."""
    return sum(w.nbytes for w in int8_weights(model).values())
