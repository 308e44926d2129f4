"""What every benchmark prints first: the CPU model, its instruction sets, torch's kernels, the load."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16")


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One paragraph: CPU model, cores, the SIMD/int8/bf16/AMX flags, torch's capability and engines."""
    from inference.quant import cpu_flags, int8_kernel, reduce_range

    flags = cpu_flags()
    simd = [f for f in FLAGS if f in flags] + sorted(f for f in flags if f.startswith("amx"))
    listed = " ".join(simd) or "none of " + " ".join(FLAGS)
    return (
        f"cpu: {cpu_model()}, {os.cpu_count()} cores; flags: {listed}\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
        f"{torch.backends.cpu.get_cpu_capability()}, int8 kernel {int8_kernel()} "
        f"({'7' if reduce_range() else '8'}-bit activations)"
    )


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def best_seconds(fn, passes: int = 5, clock=time.perf_counter) -> float:
    """Best time of fn() over `passes` runs, after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(passes):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def read_bandwidth(nbytes: int = 1 << 29) -> tuple[float, float]:
    """Bytes/s (wall, CPU time) of torch.sum over one float32 tensor of `nbytes` (more than any cache holds),
    best of 5, on torch's current thread count: the memory's read speed, what no kernel can beat."""
    x = torch.randn(nbytes // 4)
    wall = best_seconds(lambda: x.sum())
    cpu = best_seconds(lambda: x.sum(), clock=time.process_time)
    return nbytes / wall, nbytes / max(cpu, 1e-9)
