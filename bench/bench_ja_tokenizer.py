"""GPT-NeoX-Japanese tokenizer: encode throughput (characters/second) vs transformers' class, same run.

    python bench/bench_ja_tokenizer.py [--repeat 5]

Inputs: the seed documents in ../shared/seeds (real Japanese, Chinese and English Markdown with code),
2,000-character prompt windows cut from them (what a keystroke encodes), and the test corpus of short
mixed strings. Each is encoded with clean-text off and on; ids are checked equal to transformers'.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.checkpoints import NEOX_JA_TOKENIZER_DIR, SHARED_DATA  # noqa: E402
from tests.ja_corpus import make_corpus  # noqa: E402
from tokenizer.neox_japanese import load  # noqa: E402

SEEDS = SHARED_DATA.parent / "seeds"


def workloads() -> dict[str, list[str]]:
    """Named lists of strings to encode."""
    docs = [p.read_text(encoding="utf-8") for p in sorted(SEEDS.glob("*.txt"))]
    windows = [d[i : i + 2000] for d in docs for i in range(0, max(1, len(d) - 2000), 1500)]
    return {
        "seed documents (whole)": docs,
        "2000-char prompt windows": windows,
        "test corpus (short mixed)": make_corpus(NEOX_JA_TOKENIZER_DIR, n=2000, seed=1234),
    }


def best_rate(fn, texts: list[str], repeat: int) -> float:
    """Characters per second, best of `repeat` passes over all texts."""
    chars = sum(map(len, texts))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in texts:
            fn(s)
        times.append(time.perf_counter() - t0)
    return chars / min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from transformers import GPTNeoXJapaneseTokenizer

    d = NEOX_JA_TOKENIZER_DIR
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}")
    print(f"{'workload':28} {'clean':5} {'chars':>8} {'ours chars/s':>14} {'transformers':>14} {'ratio':>7}")
    ratios = []
    for clean in (False, True):
        ours = load(d)
        ours.do_clean_text = clean
        ref = GPTNeoXJapaneseTokenizer(str(d / "vocab.txt"), str(d / "emoji.json"), do_clean_text=clean)
        for name, texts in workloads().items():
            for s in texts:
                assert ours.encode(s) == ref(s)["input_ids"], f"ids differ on {s[:40]!r}"
            r_ours = best_rate(ours.encode, texts, args.repeat)
            r_ref = best_rate(lambda s, ref=ref: ref(s)["input_ids"], texts, max(1, args.repeat // 2))
            ratios.append(r_ours / r_ref)
            chars = sum(map(len, texts))
            print(f"{name:28} {clean!s:5} {chars:8d} {r_ours:14,.0f} {r_ref:14,.0f} {r_ours / r_ref:6.1f}x")
    gmean = statistics.geometric_mean(ratios)
    print(f"geometric-mean ratio {gmean:.1f}x, minimum {min(ratios):.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
