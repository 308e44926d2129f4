"""Typing in the middle of a file with fill-in-the-middle: Qwen2.5-Coder-0.5B's exact shape, FIM vs FIM off,
int8 and float32, against transformers `generate` on the same FIM prompts, same run.

A random-weight Qwen2ForCausalLM in the 0.5B shape (transformers builds it; the engine gets the same
weights), the real Qwen2 tokenizer, a real CPython stdlib file: the cursor at a line start with ~1,000
tokens before it and the rest of the file (>= 200 tokens) after it; the next 20 characters are typed one
keystroke at a time, each asking for a 16-token greedy completion. The prompts are the server's (one cutter,
lsp_server/prompt.py): FIM in the model's template with the suffix cut to `--suffix-tokens` at line ends, or
the text before the cursor only. The engines type in turns, keystroke by keystroke (bench_keystroke.py's
scheme), so a drift of the machine's bandwidth lands on all of them alike.

    python bench/bench_fim.py [--keystrokes 20] [--new-tokens 16] [--threads N] [--suffix-tokens 32 64 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_keystroke import int8_copy, pct, report  # noqa: E402
from bench_machine import describe, loadavg  # noqa: E402

from inference import ops, quant, registry  # noqa: E402
from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.llama import Llama  # noqa: E402
from inference.llama_config import LlamaConfig  # noqa: E402
from inference.loader import LoadedModel, fill_weights  # noqa: E402
from inference.weights import WeightSource  # noqa: E402
from lsp_server import fim  # noqa: E402
from lsp_server.constants import FIM_SUFFIX_TOKENS  # noqa: E402
from lsp_server.prompt import fim_prompt_ids, prompt_ids  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

TOKENIZER_DIR = ROOT.parent / "shared" / "data" / "qwen2.5-coder-tokenizer"
SHAPE_05B = dict(
    model_type="qwen2",
    vocab_size=151936,
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
LIMIT = 4096 - 64  # the server's prompt limit for a 4096-token window and 64 new tokens (inference.rules)


def document(tok, context_tokens: int, n_keys: int) -> tuple[str, str, str, str]:
    """(text before the cursor, the characters to type, the text after them, the file's path)."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    text = path.read_text(encoding="utf-8")
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.lstrip()
        if len(tok.encode(text[:offset])) >= context_tokens and len(body.rstrip()) >= n_keys:
            cursor = offset + len(line) - len(body)
            return text[:cursor], text[cursor : cursor + n_keys], text[cursor + n_keys :], str(path)
        offset += len(line)
    raise SystemExit(f"{path} is too short")


def build_models(tok):
    """transformers' Qwen2ForCausalLM (0.5B shape, random weights) and the engine's model sharing them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    ref = Qwen2ForCausalLM(Qwen2Config(**SHAPE_05B)).eval()
    state = ref.state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    config = LlamaConfig.from_dict(SHAPE_05B)
    with torch.device("meta"):
        model = Llama(config)
    fam = registry.REGISTRY["qwen2"]
    mem = Path("<memory>")
    source = WeightSource({name: mem for name in state}, {mem: state})
    fill_weights(model, source, fam.weight_map(config), fam.ignored, torch.device("cpu"), torch.float32)
    model.init_buffers()
    model.prepare_for_inference()
    ops.store_transposed(model)  # as the loader stores float32 weights on this CPU
    model.eval().requires_grad_(False)
    loaded = LoadedModel(
        name="random-qwen2.5-coder-0.5B-shape",
        path=mem,
        family="llama",
        config=config,
        model=model,
        tokenizer=tok,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return ref, loaded


def prompts_for(tok, before: str, keys: str, after: str, suffix_tokens: int | None) -> list[list[int]]:
    """Each keystroke's prompt ids as the server builds them (None: FIM off), the window kept across them."""
    template, window, out = fim.template_for(tok), None, []
    for k in range(len(keys) + 1):
        b = before + keys[:k]
        if suffix_tokens is None:
            ids, window = prompt_ids(b, tok, LIMIT, window)
        else:
            prompt, window = fim_prompt_ids(b, after, tok, template, LIMIT, suffix_tokens, window)
            ids = prompt.ids
        out.append(ids)
    return out  # out[0]: the document as opened (its cold prefill is not a keystroke)


def type_in_turns(runs: dict, params) -> dict:
    """Every (engine, prompt set) opens the document, then they type keystroke by keystroke in turns."""
    out = {name: {"wall": [], "cpu": [], "prefills": [], "ids": []} for name in runs}
    sessions = {name: Engine(lm).session("doc") for name, (lm, _) in runs.items()}
    for name, (_, prompts) in runs.items():
        sessions[name].generate(prompts[0], params)
    names = list(runs)
    for k in range(1, len(next(iter(runs.values()))[1])):
        for name in names[:: 1 if k % 2 else -1]:
            c = time.process_time()
            r = sessions[name].generate(runs[name][1][k], params)
            out[name]["cpu"].append((time.process_time() - c) * 1e3)
            out[name]["wall"].append(r.total_ms)
            out[name]["prefills"].append(r.prefill_tokens)
            out[name]["ids"].append(r.token_ids)
    return out


def transformers_keystrokes(ref, prompts: list[list[int]], new_tokens: int) -> tuple[list, list, list]:
    """transformers generate on the same prompt ids: wall ms, CPU ms, the generated ids."""
    wall, cpu, gen = [], [], []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            t, c = time.perf_counter(), time.process_time()
            out = ref.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False
            )
            wall.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
            gen.append(out[0, x.shape[1] :].tolist())
    return wall, cpu, gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keystrokes", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--context-tokens", type=int, default=1000)
    ap.add_argument("--suffix-tokens", type=int, nargs="*", default=[FIM_SUFFIX_TOKENS])
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-float32", action="store_true", help="int8 engines only")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(TOKENIZER_DIR)
    before, keys, after, src = document(tok, args.context_tokens, args.keystrokes)
    print(describe())
    print("load average at start (other processes share this machine): " + loadavg())
    print(
        f"context: {src}, {len(tok.encode(before))} tokens before the cursor, "
        f"{len(tok.encode(after))} after; typing {keys!r}; "
        f"suffix budgets {args.suffix_tokens} (default {FIM_SUFFIX_TOKENS})"
    )
    t = time.perf_counter()
    ref, f32 = build_models(tok)
    q8 = int8_copy(f32) if quant.int8_kernel() else None
    print(f"models built in {time.perf_counter() - t:.1f}s")
    sets = {"FIM off": prompts_for(tok, before, keys, after, None)}
    for n in args.suffix_tokens:
        sets[f"FIM {n}"] = prompts_for(tok, before, keys, after, n)
    models = {"int8": q8} if q8 else {}
    if not args.skip_float32:
        models["fp32"] = f32
    runs = {f"{m} {s}": (lm, prompts) for m, lm in models.items() for s, prompts in sets.items()}
    params = GenerationParams(max_new_tokens=args.new_tokens)  # no stops: every keystroke decodes as many
    out = type_in_turns(runs, params)
    for name, r in out.items():
        report(name, r["wall"], r["cpu"])
        print(
            f"{'':14s}prompt {len(runs[name][1][-1])} tokens; "
            f"prefilled {statistics.mean(r['prefills']):.1f}/keystroke"
        )
    for m in models:
        base = out[f"{m} FIM off"]["wall"]
        for s in sets:
            if s != "FIM off":
                ratio = pct(out[f"{m} {s}"]["wall"], 0.5) / pct(base, 0.5)
                print(f"{m}: {s} keystroke p50 / FIM off p50 = {ratio:.2f}x")
    print("load average after the engines: " + loadavg())
    if args.skip_transformers:
        return
    fim_set = f"FIM {args.suffix_tokens[0]}"
    hf, hf_cpu, gen = transformers_keystrokes(ref, sets[fim_set][1:], args.new_tokens)
    report("transformers", hf, hf_cpu)
    name = f"fp32 {fim_set}"
    if name in out:
        same = sum(a == b for a, b in zip(gen, out[name]["ids"], strict=True))
        print(
            f"{'':14s}generate on the same {fim_set} prompts; "
            f"{same}/{len(gen)} token-identical to engine fp32"
        )
    for m in models:
        r = out[f"{m} {fim_set}"]["wall"]
        print(f"speedup of engine {m} {fim_set} over transformers: p50 {pct(hf, 0.5) / pct(r, 0.5):.1f}x")
    print("load average at end: " + loadavg())


if __name__ == "__main__":
    main()
