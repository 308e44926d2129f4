"""Soak: does the server's memory stay flat over a long session? Documents x keystrokes, RSS and KV sampled.

A client starts `python -m lsp_server serve` (built-in model, CPU), opens `--docs` documents and types
`--keystrokes` characters into each (bursts of 20 per document, round robin; 10 % backspaces, a newline
every 40 characters), each keystroke a didChange plus an automatic inlineCompletion, answered before the
next. The KV-cache budget is smaller than the documents' caches together, so the pool stays at its budget
and evicts. Every `--sample` keystrokes: the server's RSS (/proc) and cache bytes (codegen.status). The RSS
slope per keystroke is fitted (least squares) after the warm-up (the first quarter); the target is under
0.1 KB per keystroke. At the end every document is closed and the cache cleared: the KV bytes come back.

    python bench/bench_soak.py                          # 10 documents x 2,000 keystrokes
    python bench/bench_soak.py --docs 3 --keystrokes 300  # a quick look
    python bench/bench_soak.py --server-root /work/main   # the same session against another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.rawlsp import RawServer  # noqa: E402

LINE = "total = compute_value(items, scale) + offset_{i} * factor\n"
FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "neon",
    "asimd",
)


def cpu() -> str:
    """CPU model and the instruction-set flags that matter to torch's kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")) and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(f for f in FLAGS if f in flags) or '-'}"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


class Typist:
    """One document's text and version, edited a character at a time (positions in UTF-16 = str here)."""

    def __init__(self, uri: str, rng: random.Random) -> None:
        self.uri, self.rng, self.version = uri, rng, 1
        self.lines = [f"def function_{uri[-6:-3]}(items, scale, offset, factor):", "    "]
        self.source, self.k = "", 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def keystroke(self, raw: RawServer) -> tuple[int, int]:
        """Send one edit; the cursor position after it."""
        line, col = len(self.lines) - 1, len(self.lines[-1])
        self.version += 1
        if self.rng.random() < 0.1 and col > 4:  # backspace
            self.lines[-1] = self.lines[-1][:-1]
            raw.change(self.uri, self.version, "", ((line, col - 1), (line, col)))
            return line, col - 1
        if not self.source:
            self.source = LINE.format(i=self.k)
            self.k += 1
        ch, self.source = self.source[0], self.source[1:]
        raw.change(self.uri, self.version, ch, ((line, col), (line, col)))
        if ch == "\n":
            self.lines.append("    ")
            raw.change(self.uri, self.version, "    ", ((line + 1, 0), (line + 1, 0)))
            return line + 1, 4
        self.lines[-1] += ch
        return line, col + 1


async def cache_bytes(raw: RawServer) -> int:
    return sum(m["engine"]["cacheBytes"] for m in (await raw.status())["models"])


async def soak(args) -> None:
    env = {"PYTHONPATH": args.server_root} if args.server_root else {}
    raw = await RawServer().start(OMP_NUM_THREADS=str(args.threads), **env)
    opts = {"model": "builtin", "device": "cpu", "debounceMs": 0, "maxNewTokens": args.new_tokens}
    await raw.initialize({**opts, "cacheBudgetMb": args.cache_mb, "logLevel": "warning"})
    rng = random.Random(0)
    docs = [Typist(f"file:///soak/doc{i:03d}.py", rng) for i in range(args.docs)]
    for d in docs:
        raw.open(d.uri, d.text)
    total, samples, t0 = args.docs * args.keystrokes, [], time.perf_counter()
    for k in range(total):
        d = docs[(k // 20) % args.docs]
        line, col = d.keystroke(raw)
        params = {"textDocument": {"uri": d.uri}, "position": {"line": line, "character": col}}
        answer = await raw.call("textDocument/inlineCompletion", {**params, "context": {"triggerKind": 2}})
        assert "result" in answer, answer
        if k % args.sample == 0 or k == total - 1:
            samples.append((k, rss_kb(raw.proc.pid), await cache_bytes(raw)))
    elapsed = time.perf_counter() - t0
    report(args, samples, total, elapsed)
    rss_before, cache_before = rss_kb(raw.proc.pid), await cache_bytes(raw)
    for d in docs:
        raw.notify("textDocument/didClose", {"textDocument": {"uri": d.uri}})
    await raw.call("workspace/executeCommand", {"command": "codegen.clearCache"})
    cache_after, rss_after = await cache_bytes(raw), rss_kb(raw.proc.pid)
    print(
        f"close all + clearCache: cache {cache_before / 2**20:.1f} MiB -> {cache_after / 2**20:.1f} MiB, "
        f"RSS {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB"
    )
    st = await raw.status()
    print(
        f"after closing: lastReason entries {len(st['completions']['lastReason'])}, "
        f"open documents {st['openDocuments']}, sessions {st['models'][0]['engine']['sessions']}"
    )
    await raw.close()


def report(args, samples: list[tuple[int, int, int]], total: int, elapsed: float) -> None:
    print(
        f"{args.docs} documents x {args.keystrokes} keystrokes = {total} requests in {elapsed:.0f} s "
        f"({elapsed / total * 1000:.1f} ms each)"
    )
    print(" keystroke   RSS MiB   cache MiB")
    for k, rss, cache in samples[:: max(1, len(samples) // 12)] + samples[-1:]:
        print(f"{k:10d} {rss / 1024:9.1f} {cache / 2**20:11.1f}")
    warm = [s for s in samples if s[0] >= total // 4]
    ks = [s[0] for s in warm]
    rss_slope = slope(ks, [s[1] for s in warm])
    cache_slope = slope(ks, [s[2] / 1024 for s in warm])
    verdict = "under" if rss_slope < 0.1 else "OVER"
    print(
        f"RSS slope after warm-up: {rss_slope:.4f} KB/keystroke ({verdict} the 0.1 KB target); "
        f"cache slope {cache_slope:.4f} KB/keystroke; cache budget {args.cache_mb} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--keystrokes", type=int, default=2000, help="per document")
    ap.add_argument("--sample", type=int, default=200, help="sample RSS and cache every N keystrokes")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--cache-mb", type=int, default=16, help="KV budget (builtin: 3 MiB per document)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument(
        "--server-root", default="", help="run another checkout's server (e.g. main, the baseline)"
    )
    args = ap.parse_args()
    print(f"machine: {cpu()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"python {platform.python_version()}, command: {' '.join(sys.argv)}")
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
