"""The engine (int8, float32) against llama.cpp (Q8_0, F32, Q4_K_M) on one checkpoint: keystrokes, same run.

One random-weight checkpoint in Qwen2.5-Coder-0.5B's exact shape (transformers' `Qwen2ForCausalLM` with its
default init, seed 0, saved with the real Qwen2 tokenizer), loaded by the engine (`inference.loader.
load_model`, int8 and float32) and converted to GGUF by llama.cpp's own converter (`convert_hf_to_gguf.py`
from the `llama-cpp-python` source distribution: F32, Q8_0; Q4_K_M by `llama_model_quantize` from the F32
file). The keystroke scenario of bench_keystroke.py: CPython's `textwrap.py`, ~1,000 tokens before the
cursor, the next 20 characters typed one at a time, each keystroke a 16-token greedy completion (no stops).
Both sides get the same prompt token ids (the server's prompt cutter, lsp_server/prompt.py). The engine keeps
one session per model; llama.cpp runs through `llama-cpp-python` (`Llama.generate`, which reuses the longest
common prefix of the evaluated tokens as llama-server's `cache_prompt` does), one worker process per GGUF
with n_threads = n_threads_batch = --threads, flash attention on (llama-server's `auto` on a CPU). All of
them type in turns, keystroke by keystroke, so a drift of the machine's bandwidth lands on all alike; then
cold prompts (a fresh session / a cleared context) in turns.

llama.cpp is a benchmark-only extra (`pip install -e '.[bench]'`, built from source here; see
docs/PERFORMANCE.md). Without it, or when the download or the conversion fails, the llama.cpp half is skipped
with the reason printed and the engine half runs alone. Files (checkpoint, sdist, GGUFs) go to --cache-dir.

    python bench/bench_llamacpp.py [--threads 2] [--keystrokes 20] [--new-tokens 16] [--types f32 q8_0 q4_k_m]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "0.3.36"  # the version the `bench` extra pins (pyproject.toml)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codegen-lsp-bench"
CHECKPOINT = "qwen2.5-coder-0.5b-shape-random-seed0"
TYPES = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}
CONVERTED = ("f32", "f16", "q8_0")  # convert_hf_to_gguf's --outtype; the others quantize the F32 file
N_CTX = 4096  # the engine's window for this prompt limit (bench_fim.LIMIT) and llama.cpp's context
# What the converter needs from the source distribution (never committed here; see --cache-dir).
VENDORED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class Skip(Exception):
    """The llama.cpp half cannot run; the message says why."""


# ---- the llama.cpp worker (its own process: no torch, its own OpenMP pool, a crash stays there) ----


def worker(gguf: str, threads: int) -> None:
    """Serve keystrokes from one GGUF over stdin/stdout, one JSON object a line; times are measured here."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=gguf,
        n_ctx=N_CTX,
        n_batch=2048,  # llama-server's defaults
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the protocol stream
    print(json.dumps({"ready": True, "version": llama_cpp.__version__}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "cold":
            llm.reset()  # n_tokens = 0: the next eval clears the whole KV cache first
        ids, n = req["ids"], req["new_tokens"]
        cached = list(llm.input_ids[: llm.n_tokens])
        lcp = next((i for i, (a, b) in enumerate(zip(cached, ids, strict=False)) if a != b), None)
        lcp = min(len(cached), len(ids)) if lcp is None else lcp
        reused = lcp - 1 if lcp == len(ids) else lcp  # as Llama.generate: one token is fed again for logits
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        c, t = time.process_time(), time.perf_counter()
        gen = llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)
        toks, first = [], 0.0
        for tok in gen:
            toks.append(int(tok))
            if len(toks) == 1:
                first = time.perf_counter()
            if len(toks) == n:
                break
        gen.close()
        end = time.perf_counter()
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)  # llama.cpp's own clock: one-token batches
        reply = {
            "own_ms_per_token": perf.t_eval_ms / max(perf.n_eval, 1),
            "ids": toks,
            "total_ms": (end - t) * 1e3,
            "prefill_ms": (first - t) * 1e3,
            "decode_ms": (end - first) * 1e3,
            "decode_steps": len(toks) - 1,  # the last token is sampled, never evaluated (as the engine)
            "prefill_tokens": len(ids) - reused,
            "cpu_ms": (time.process_time() - c) * 1e3,
        }
        print(json.dumps(reply), file=out, flush=True)


def quantize_worker(src: str, dst: str, ftype: str) -> None:
    """llama.cpp's quantize (llama_model_quantize) from `src` to `dst` as LLAMA_FTYPE_MOSTLY_<ftype>."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    sys.exit(0 if rc == 0 else f"llama_model_quantize returned {rc}")


class Worker:
    """A llama.cpp worker process holding one GGUF."""

    def __init__(self, gguf: Path, threads: int):
        cmd = [sys.executable, __file__, "--worker", str(gguf), "--threads", str(threads)]
        self.err = tempfile.TemporaryFile("w+")  # a file, not a pipe: llama.cpp's logging never blocks it
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True
        )
        ready = self.proc.stdout.readline()
        if not ready:
            raise Skip(f"llama.cpp could not load {gguf.name}: {self.stderr_tail() or 'no reason given'}")
        self.version = json.loads(ready)["version"]

    def generate(self, ids: list[int], new_tokens: int, cold: bool = False) -> dict:
        req = {"op": "cold" if cold else "keystroke", "ids": ids, "new_tokens": new_tokens}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise Skip(f"the llama.cpp worker died: {self.stderr_tail()}")
        return json.loads(line)

    def stderr_tail(self) -> str:
        self.proc.wait(timeout=30)
        self.err.seek(0)
        return " | ".join(self.err.read().strip().splitlines()[-3:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


# ---- preparation: the checkpoint, the converter, the GGUF files ----


def write_checkpoint(dest: Path) -> Path:
    """The random checkpoint in HF layout (bench_fim's model: 0.5B shape, default init, seed 0), tokenizer."""
    import torch
    from bench_fim import SHAPE_05B, TOKENIZER_DIR
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPE_05B, bos_token_id=151643, eos_token_id=151643)).eval()
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, dest / name)
    (dest / ".complete").write_text("")
    return dest


def converter(cache: Path, version: str) -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (downloaded into `cache` once)."""
    tree = cache / f"llama.cpp-from-llama-cpp-python-{version}"
    script = tree / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    sdist = cache / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [f"llama-cpp-python=={version}", "-d", str(cache)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode or not sdist.exists():
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-2:])
            raise Skip(f"could not download the llama-cpp-python {version} sdist: {tail}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = cache / (tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(VENDORED)
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(tmp, members=members, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise Skip(f"could not unpack {sdist}: {exc}") from exc
    if not (tmp / "convert_hf_to_gguf.py").exists():
        raise Skip(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    shutil.rmtree(tree, ignore_errors=True)
    tmp.rename(tree)
    return script


def gguf_files(ckpt: Path, cache: Path, types: list[str], version: str) -> dict[str, Path]:
    """{type: GGUF path}, converting (and quantizing) what is not in `cache` yet; Skip when that fails."""
    out = {}
    for t in types:
        dest = cache / f"{ckpt.name}-{TYPES[t]}.gguf"
        if not dest.exists():
            t0, tmp = time.perf_counter(), dest.with_suffix(".tmp")
            if t in CONVERTED:
                cmd = [sys.executable, str(converter(cache, version)), str(ckpt)]
                cmd += ["--outtype", t, "--outfile", str(tmp)]
            else:
                src = out.get("f32") or gguf_files(ckpt, cache, ["f32"], version)["f32"]
                cmd = [sys.executable, __file__, "--quantize", str(src), str(tmp), TYPES[t]]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode or not tmp.exists():
                tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
                raise Skip(f"GGUF {TYPES[t]} failed ({' '.join(cmd[1:3])}...): {tail}")
            tmp.rename(dest)
            print(f"wrote {dest.name} in {time.perf_counter() - t0:.0f}s")
        out[t] = dest
    return out


def gguf_decode_bytes(path: Path, script: Path) -> tuple[int, dict[str, int]]:
    """Weight bytes one decode step reads from a GGUF (all tensors but one row of token_embd, which is read
    whole where it is the output matrix too) and the bytes per tensor type. `gguf` is the installed package
    or else the one beside the converter `script`."""
    try:
        from gguf import GGUFReader
    except ImportError:
        sys.path.insert(0, str(script.parent / "gguf-py"))
        try:
            from gguf import GGUFReader
        except ImportError as exc:
            raise Skip(f"no gguf package to read {path.name} ({exc})") from exc

    tensors = GGUFReader(path).tensors
    names = {t.name for t in tensors}
    total, by_type = 0, {}
    for t in tensors:
        n = int(t.n_bytes)
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + n
        if t.name == "token_embd.weight" and "output.weight" in names:
            n //= int(t.shape[-1])  # a lookup: one row
        total += n
    return total, by_type


# ---- the engine side ----


def engine_decode_bytes(model) -> int:
    """Weight bytes one engine decode step reads: int8 weights (and scales) + float parameters, the
    embedding table counted as one row unless lm_head reads the same storage whole (tied float32)."""
    from inference import quant

    params = {p.data_ptr(): p for p in model.parameters()}.values()
    total = sum(p.numel() * p.element_size() for p in params) + quant.int8_bytes(model)
    emb = model.embed_tokens.weight
    lm = getattr(model.lm_head, "weight", None)
    if not (isinstance(lm, type(emb)) and lm.data_ptr() == emb.data_ptr()):
        total -= emb.numel() * emb.element_size() - emb.shape[1] * emb.element_size()
    return total


def kv_bytes_per_position(config, itemsize: int) -> int:
    """Keys and values of one position over all layers."""
    return 2 * config.n_layer * config.kv_heads * config.head_dim * itemsize


def pressure() -> str:
    """The kernel's CPU pressure (share of time some task waited for a CPU, last 10 s / 60 s), or ''."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        return " (CPU pressure " + " ".join(f"{kv.split('=')[1]}%" for kv in some[1:3]) + " waiting, 10s/60s)"
    except (OSError, IndexError):
        return ""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="both sides (torch; llama.cpp n_threads(_batch))")
    ap.add_argument("--keystrokes", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--context-tokens", type=int, default=1000)
    ap.add_argument("--fim", type=int, default=None, help="FIM prompts with this suffix budget (default off)")
    ap.add_argument("--types", nargs="*", default=["q8_0", "f32", "q4_k_m"], choices=list(TYPES))
    ap.add_argument("--engine", nargs="*", default=["int8", "float32"], choices=["int8", "float32"])
    ap.add_argument("--cold-runs", type=int, default=3, help="cold prompts per model (median reported)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE)
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from bench_fim import document, prompts_for
    from bench_machine import describe, loadavg

    from inference.engine import Engine
    from inference.generate import GenerationParams
    from inference.loader import load_model

    torch.set_num_threads(args.threads)
    print(describe())
    print("load average at start (other processes share this machine): " + loadavg() + pressure())
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    ckpt = write_checkpoint(args.cache_dir / CHECKPOINT)
    print(f"checkpoint {ckpt} ({time.perf_counter() - t:.0f}s)")

    # llama.cpp's half: build what it needs first; any failure skips it with the reason.
    workers, sizes, skipped = {}, {}, None
    if args.skip_llama_cpp:
        skipped = "--skip-llama-cpp"
    else:
        try:
            try:
                import llama_cpp
            except Exception as exc:  # ImportError, or a library that does not load
                raise Skip(
                    f"llama_cpp does not import ({exc}); pip install -e '.[bench]' builds it from source"
                ) from exc
            ggufs = gguf_files(ckpt, args.cache_dir, args.types, llama_cpp.__version__)
            script = converter(args.cache_dir, llama_cpp.__version__)
            for t in args.types:
                sizes[t] = gguf_decode_bytes(ggufs[t], script)
                workers[f"llama.cpp {TYPES[t]}"] = Worker(ggufs[t], args.threads)
            version = next(iter(workers.values())).version if workers else "?"
            print(f"llama.cpp: llama-cpp-python {version}, flash attention on, n_ctx {N_CTX}")
        except Skip as exc:
            skipped = str(exc)
            for w in workers.values():
                w.close()
            workers = {}
    if skipped:
        print(f"llama.cpp half SKIPPED: {skipped}")

    engines, loaded = {}, {}
    for dt in args.engine:
        t = time.perf_counter()
        lm = load_model(str(ckpt), dtype=dt, prepared_cache="off")
        loaded[f"engine {dt}"] = lm
        engines[f"engine {dt}"] = Engine(lm, max_context=N_CTX)
        print(f"engine {dt} loaded in {time.perf_counter() - t:.1f}s")
    tok = next(iter(loaded.values())).tokenizer if loaded else None
    if tok is None:
        from tokenizer import load_tokenizer

        tok = load_tokenizer(ckpt)
    before, keys, after, src = document(tok, args.context_tokens, args.keystrokes)
    prompts = prompts_for(tok, before, keys, after, args.fim)
    print(
        f"context: {src}, {len(prompts[0])} prompt tokens as opened, {len(prompts[-1])} at the last "
        f"keystroke; typing {keys!r}; {'FIM ' + str(args.fim) if args.fim is not None else 'FIM off'}"
    )
    params = GenerationParams(max_new_tokens=args.new_tokens)  # no stops: every keystroke decodes as many
    sessions = {name: e.session("doc") for name, e in engines.items()}

    def run(name: str, ids: list[int], cold: bool = False) -> dict:
        if name in workers:
            return workers[name].generate(ids, args.new_tokens, cold)
        c = time.process_time()
        key = ("cold", len(colds[name]))
        r = (engines[name].session(key) if cold else sessions[name]).generate(ids, params)
        if cold:
            engines[name].drop_session(key)
        return {
            "ids": r.token_ids,
            "total_ms": r.total_ms,
            "prefill_ms": r.prefill_ms,
            "decode_ms": r.decode_ms,
            "decode_steps": r.decode_steps,
            "prefill_tokens": r.prefill_tokens,
            "cpu_ms": (time.process_time() - c) * 1e3,
        }

    names = list(engines) + list(workers)
    runs = {name: [] for name in names}
    colds = {name: [] for name in names}

    def each(order: list[str], out: dict, ids: list[int], cold: bool = False) -> None:
        for name in order:
            try:
                out[name].append(run(name, ids, cold))
            except Skip as exc:  # a llama.cpp worker died: the others go on without it
                print(f"{name} dropped: {exc}")
                names.remove(name)
                workers.pop(name).close()

    try:
        each(list(names), {n: [] for n in names}, prompts[0])  # the document as opened: not timed
        print("load average before the keystrokes: " + loadavg() + pressure())
        for k in range(1, len(prompts)):
            each(names[:: 1 if k % 2 else -1], runs, prompts[k])
        print("load average after the keystrokes: " + loadavg() + pressure())
        for k in range(args.cold_runs):
            each(names[:: 1 if k % 2 == 0 else -1], colds, prompts[-1], cold=True)
        print("load average after the cold prompts: " + loadavg() + pressure())
    finally:
        for w in workers.values():
            w.close()

    positions = len(prompts[-1]) + args.new_tokens // 2  # a decode step's mean cached positions
    cfg = next(iter(loaded.values())).config if loaded else None
    print(
        f"\n{'':18s} {'keystroke p50/p95 ms':>21s} {'CPU p50':>8s} {'prefilled':>9s} {'decode ms/tok':>13s} "
        f"{'cold ms (prefill)':>19s} {'MB/token':>16s} {'GB/s':>5s}"
    )
    rows = {}
    for name in names:
        r = runs[name]
        wall = [x["total_ms"] for x in r]
        dec = statistics.median(x["decode_ms"] / x["decode_steps"] for x in r if x["decode_steps"])
        cs = sorted(colds[name], key=lambda x: x["total_ms"])
        cold = cs[len(cs) // 2] if cs else None  # the median run
        if name in workers:
            t = next(k for k in args.types if name.endswith(TYPES[k]))
            wbytes, kv = sizes[t][0], kv_bytes_per_position(cfg, 2) if cfg else 0  # llama.cpp: F16 KV
        else:
            lm = loaded[name]
            wbytes, kv = engine_decode_bytes(lm.model), kv_bytes_per_position(cfg, lm.kv_dtype.itemsize)
        per_token = wbytes + kv * positions
        rows[name] = dict(p50=pct(wall, 0.5), p95=pct(wall, 0.95), dec=dec, cold=cold, bytes=per_token)
        cold_s = f"{cold['total_ms']:8.0f} ({cold['prefill_ms']:6.0f})" if cold else "-"
        print(
            f"{name:18s} {pct(wall, 0.5):10.0f} / {pct(wall, 0.95):7.0f} "
            f"{pct([x['cpu_ms'] for x in r], 0.5):8.0f} "
            f"{statistics.mean(x['prefill_tokens'] for x in r):9.1f} {dec:13.1f} {cold_s:>19s} "
            f"{wbytes / 1e6:6.0f} + {kv * positions / 1e6:4.0f} KV {per_token / dec / 1e6:5.1f}"
        )
    for name in workers:
        own = statistics.median(x["own_ms_per_token"] for x in runs[name])
        print(
            f"{name}: {own:.1f} ms per one-token forward by llama.cpp's own timer (llama_perf_context), "
            f"{rows[name]['dec']:.1f} ms/token by the wall clock (with sampling and llama-cpp-python)"
        )
    for t in args.types if workers else []:
        by = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(sizes[t][1].items(), key=lambda kv: -kv[1]))
        print(f"GGUF {TYPES[t]} tensors: {by}")

    def agree(a: str, b: str) -> None:
        if a in runs and b in runs:
            same = sum(x["ids"] == y["ids"] for x, y in zip(runs[a], runs[b], strict=True))
            first = sum(x["ids"][:1] == y["ids"][:1] for x, y in zip(runs[a], runs[b], strict=True))
            print(
                f"{a} vs {b}: {same}/{len(runs[a])} completions token-identical "
                f"({first}/{len(runs[a])} first tokens)"
            )

    print()
    agree("engine float32", "llama.cpp F32")
    agree("engine int8", "llama.cpp Q8_0")
    agree("engine int8", "engine float32")
    agree("llama.cpp Q8_0", "llama.cpp F32")

    def ratio(a: str, b: str, key: str, target: str = "") -> None:
        if a in rows and b in rows and rows[a][key] is not None and rows[b][key] is not None:
            x, y = rows[a][key], rows[b][key]
            x, y = (x["total_ms"], y["total_ms"]) if key == "cold" else (x, y)
            what = {"p50": "keystroke p50", "cold": "cold prompt", "dec": "decode ms/token"}[key]
            f = ".1f" if key == "dec" else ".0f"
            print(f"{a} / {b}, {what}: {x:{f}} / {y:{f}} ms = {x / y:.2f}x{target}")

    ratio("engine int8", "llama.cpp Q8_0", "p50", " (target <= 0.8)")
    ratio("engine int8", "llama.cpp Q8_0", "cold", " (target <= 0.5)")
    ratio("engine int8", "llama.cpp Q8_0", "dec")
    ratio("engine float32", "llama.cpp F32", "p50", " (target <= 1)")
    ratio("engine float32", "llama.cpp F32", "cold")
    ratio("engine float32", "llama.cpp F32", "dec")
    ratio("engine int8", "llama.cpp Q4_K_M", "p50")
    ratio("engine int8", "llama.cpp Q4_K_M", "dec")
    if skipped:
        print(f"(llama.cpp half skipped: {skipped})")
    print("load average at end: " + loadavg() + pressure())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    elif len(sys.argv) > 1 and sys.argv[1] == "--quantize":
        quantize_worker(*sys.argv[2:5])
    else:
        main()
