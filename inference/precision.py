"""dtype 'auto': the precision a model runs in on a device, and the reason, from what the hardware has."""

from __future__ import annotations

import torch

from inference import quant

# Families whose int8 quality tests/test_int8.py checks (top-1 agreement >= 98 %, loss within 1 %, on the
# trained built-in CodeGen over held-out code). No trained GPT-NeoX-Japanese checkpoint is at hand to check.
INT8_CHECKED = ("codegen",)


def auto_precision(device: torch.device, family: str) -> tuple[str, str]:
    """(precision, why) for dtype 'auto' on `device` for a model of `family`."""
    if device.type == "cuda":
        half = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return half, f"CUDA: {half} halves the bytes a token reads"
    if device.type != "cpu":
        return "float16", f"{device.type}: float16"
    cap = torch.backends.cpu.get_cpu_capability()
    if quant.int8_kernel() is None:
        return "float32", f"this CPU ({cap}) has no int8 kernel in torch (fbgemm needs AVX2)"
    if quant.reduce_range():
        return (
            "float32",
            "this CPU has no VNNI: int8 would quantize activations to 7 bits, below the quality bar",
        )
    if family not in INT8_CHECKED:
        return "float32", f"int8 quality is not checked for {family} (only {', '.join(INT8_CHECKED)})"
    return "int8", f"CPU with {cap} and VNNI: int8 weights read a quarter of float32's bytes per token"
