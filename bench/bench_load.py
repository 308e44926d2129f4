"""Loading big checkpoints: peak and steady resident memory, load time cold and from the prepared cache.

Writes a random-weight CodeGen checkpoint in float16 (tensor by tensor, under --dir, never in the repo) in
the shape asked for, then measures each (precision, start) in a fresh child process: the peak (VmHWM) and
the steady RSS after a first completion, the model's resident weight bytes and KV cache, the load time and
the time to the first completion. `cold` starts with an empty prepared cache (and writes it); `cached`
reads it.

    python bench/bench_load.py --shape 2B                 # int8 and float32, cold and cached
    python bench/bench_load.py --shape 350M --precisions int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # Salesforce/codegen-*-mono's config.json (vocab 51200 in the checkpoints, 2048 positions)
    "tiny": dict(n_layer=2, n_embd=256, n_head=8, rotary_dim=16),
    "350M": dict(n_layer=20, n_embd=1024, n_head=16, rotary_dim=32),
    "2B": dict(n_layer=32, n_embd=2560, n_head=32, rotary_dim=64),
    "6B": dict(n_layer=33, n_embd=4096, n_head=16, rotary_dim=64),
}
VOCAB, POSITIONS, WINDOW = 51200, 2048, 1024
PROMPT = "import os\n\ndef read_lines(path):\n    "


def tensors(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """CodeGen's checkpoint tensors (names and shapes) for a config."""
    E, L = shape["n_embd"], shape["n_layer"]
    out = [("transformer.wte.weight", (VOCAB, E))]
    for i in range(L):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", (E,)),
            (p + "ln_1.bias", (E,)),
            (p + "attn.qkv_proj.weight", (3 * E, E)),
            (p + "attn.out_proj.weight", (E, E)),
            (p + "mlp.fc_in.weight", (4 * E, E)),
            (p + "mlp.fc_in.bias", (4 * E,)),
            (p + "mlp.fc_out.weight", (E, 4 * E)),
            (p + "mlp.fc_out.bias", (E,)),
        ]
    out += [("transformer.ln_f.weight", (E,)), ("transformer.ln_f.bias", (E,))]
    return out + [("lm_head.weight", (VOCAB, E)), ("lm_head.bias", (VOCAB,))]


def write_checkpoint(dest: Path, shape: dict) -> Path:
    """config.json, the real tokenizer and model.safetensors (float16, random), one tensor at a time."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    config = dict(model_type="codegen", vocab_size=VOCAB, n_positions=POSITIONS, n_ctx=POSITIONS, **shape)
    config |= dict(
        activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=50256
    )
    (dest / "config.json").write_text(json.dumps(config))
    tok = ROOT.parent / "shared" / "data" / "codegen-350M-mono-tokenizer"
    for f in tok.iterdir():
        shutil.copy(f, dest / f.name)
    if (dest / "model.safetensors").is_file():
        return dest
    items, header, offset = tensors(shape), {}, 0
    for name, shp in items:
        n = 2
        for d in shp:
            n *= d
        header[name] = {"dtype": "F16", "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    gen = torch.Generator().manual_seed(0)
    tmp = dest / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shp in items:
            std = 0.02 if len(shp) == 2 else 0.1
            t = (torch.randn(shp, generator=gen) * std).to(torch.float16)
            if name.endswith("ln_1.weight") or name.endswith("ln_f.weight"):
                t = torch.ones(shp, dtype=torch.float16)
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    os.replace(tmp, dest / "model.safetensors")
    return dest


def child(model: str, dtype: str, cache: str) -> None:
    """One start: load, one completion; prints a JSON line of figures."""
    t0 = time.perf_counter()
    from inference import memory
    from inference.engine import Engine
    from inference.generate import GenerationParams
    from inference.loader import load_model

    lm = load_model(model, device="cpu", dtype=dtype, prepared_cache=cache)
    loaded = time.perf_counter() - t0
    rss_loaded = memory.rss_bytes()
    engine = Engine(lm, max_context=WINDOW)
    ids = lm.tokenizer.encode(PROMPT)
    r = engine.session("doc").generate(ids, GenerationParams(max_new_tokens=8))
    first = time.perf_counter() - t0
    hwm = next(
        int(x.split()[1]) * 1024
        for x in Path("/proc/self/status").read_text().splitlines()
        if x.startswith("VmHWM")
    )
    print(
        json.dumps(
            dict(
                load_s=lm.load_s,
                loaded_s=loaded,
                first_s=first,
                decode_ms=r.decode_ms,
                prepared=lm.prepared,
                weights=lm.resident_bytes,
                kv=engine.stats()["cache_bytes"],
                rss_loaded=rss_loaded,
                steady=memory.rss_bytes(),
                peak=hwm,
                estimate=lm.peak_estimate,
            )
        )
    )


def overhead() -> int:
    """RSS of a process that imported what a load imports and read the tokenizer, nothing else."""
    code = (
        "import inference.loader, inference.engine, tokenizer; from inference import memory; "
        f"tokenizer.load_tokenizer({str(ROOT.parent / 'shared/data/codegen-350M-mono-tokenizer')!r}); "
        "print(memory.rss_bytes())"
    )
    return int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


def run(model: Path, dtype: str, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(model), dtype, str(cache)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="2B")
    ap.add_argument("--precisions", nargs="+", default=["int8", "float32"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/codegen-lsp-bench-load"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and caches for another run")
    args = ap.parse_args()
    from bench_machine import describe, loadavg

    print(describe())
    print(f"load average: {loadavg()} (other processes may share the cores)")
    t = time.perf_counter()
    model = write_checkpoint(args.dir / f"codegen-{args.shape}", SHAPES[args.shape])
    size = (model / "model.safetensors").stat().st_size
    took = time.perf_counter() - t
    print(f"checkpoint codegen-{args.shape} shape: {size / 2**30:.2f} GiB float16 (written in {took:.0f} s)")
    base = overhead()
    print(f"fixed overhead (imports + tokenizer, nothing loaded): {base / 2**20:.0f} MiB")
    gib = 2**30
    for dtype in args.precisions:
        cache = args.dir / f"prepared-{args.shape}-{dtype}"
        shutil.rmtree(cache, ignore_errors=True)
        for start in ("cold", "cached"):
            r = run(model, dtype, cache)
            print(
                f"{dtype:8s} {start:6s} load {r['load_s']:6.1f} s  first completion {r['first_s']:6.1f} s  "
                f"peak {r['peak'] / gib:5.2f} GiB  steady {r['steady'] / gib:5.2f} GiB  "
                f"weights {r['weights'] / gib:5.2f} GiB  KV {r['kv'] / gib:4.2f} GiB  "
                f"estimate {r['estimate'] / gib:5.2f} GiB  prepared cache: {r['prepared']}"
            )
            print(
                f"         peak/steady {r['peak'] / r['steady']:.2f}  steady/(weights+KV) "
                f"{r['steady'] / (r['weights'] + r['kv']):.2f}  steady-(weights+KV) "
                f"{(r['steady'] - r['weights'] - r['kv']) / 2**20:.0f} MiB  "
                f"decode of 8 tokens {r['decode_ms'] / 1000:.1f} s"
            )
    print(f"load average at the end: {loadavg()}")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
