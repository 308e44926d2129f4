"""Evaluate models on the held-out stdlib modules of tools/train_default_model.py, side by side.

    python tools/eval_default_model.py --model git:HEAD~1 --model builtin [--positions 500] [--json out.json]

`--model` (repeatable): a model name or path, or `git:REV` for the built-in model as committed at REV (so
the old and the new built-in model are measured in one run).

Reports the per-token loss (nats) and bits per character over the held-out modules, and next-line exact
match at --positions cursor positions (start of a non-blank line inside a function body, sampled with a
fixed seed): greedy decoding from the text before the cursor, first generated line against the real next
line (trailing whitespace ignored, indentation counted), beside the baseline "repeat the previous non-blank
line, one indentation level deeper after a line ending in ':'". Also: the share of --functions function
bodies (cursor after the header and docstring) whose greedy completion, up to the first line indented no
deeper than `def` (or 128 tokens, partial last line dropped), makes a function that `ast.parse` accepts.
For a model with fill-in-the-middle tokens, the same positions as the server prompts them
(lsp_server/prompt.py's fim_prompt_ids, suffix cut to 32 tokens): with the text after the line as the
suffix, and with an empty suffix.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default_model import EVAL_MODULES, ROOT, corpus_files, read_source, stdlib_dir  # noqa: E402

sys.path.insert(0, str(ROOT))
from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.loader import load_model  # noqa: E402
from inference.rules import prompt_limit  # noqa: E402
from lsp_server import fim  # noqa: E402
from lsp_server.prompt import fim_prompt_ids, prompt_ids  # noqa: E402

FIM_SUFFIX_TOKENS = 32  # the server's default fimSuffixTokens

log = logging.getLogger("eval_default_model")


@dataclass(frozen=True)
class Cursor:
    """A cursor at the start of `line` (0-based) of `path`: the prompt is the text before `offset`."""

    path: str
    line: int
    offset: int
    target: str
    previous: str  # the previous non-blank line


def function_body_lines(source: str) -> set[int]:
    """0-based numbers of the lines inside function bodies (after the `def` header)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(range(node.body[0].lineno - 1, node.end_lineno))
    return lines


def cursors(files: list[Path], root: Path) -> list[Cursor]:
    """Every candidate cursor: start of a non-blank line in a function body with a non-blank line above."""
    found = []
    for path in files:
        source = read_source(path)
        lines = source.split("\n")
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line) + 1)
        for i in sorted(function_body_lines(source)):
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), None)
            if lines[i].strip() and prev is not None:
                rel = path.relative_to(root).as_posix()
                found.append(Cursor(rel, i, offsets[i], lines[i], prev))
    return found


def baseline(cursor: Cursor) -> str:
    """Repeat the previous non-blank line, indented one level deeper after a block opener."""
    prev = cursor.previous.rstrip()
    indent = len(prev) - len(prev.lstrip())
    if prev.endswith(":"):
        indent += 4
    return " " * indent + prev.lstrip()


def cut(engine: Engine, text: str, max_new_tokens: int) -> list[int]:
    """The server's prompt for `text` before the cursor: cut from the left at a line start to fit."""
    limit = prompt_limit(engine.capacity, max_new_tokens)
    return prompt_ids(text[-engine.capacity * 8 :], engine.loaded.tokenizer, limit)[0]


def first_line(engine: Engine, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of the text before the cursor (cut as the server cuts it), first line."""
    params = GenerationParams(max_new_tokens=max_new_tokens, stop_patterns=("\n",))
    return engine.generate("eval", cut(engine, prompt, max_new_tokens), params).text


@dataclass(frozen=True)
class FunctionStart:
    """A cursor after a function's header (and docstring): complete the rest of the body."""

    path: str
    header: str  # the `def` line(s) and docstring, as in the file
    offset: int  # the prompt is the file text before this
    indent: int  # indentation of the `def` line


def function_starts(files: list[Path], root: Path) -> list[FunctionStart]:
    """Every function with at least one statement after its docstring (if any)."""
    found = []
    for path in files:
        source = read_source(path)
        lines = source.split("\n")
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line) + 1)
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            if has_doc and len(body) == 1:
                continue
            start = body[0].end_lineno if has_doc else body[0].lineno - 1  # 0-based line the cursor is on
            first = node.lineno - 1
            header = "\n".join(lines[first:start]) + "\n"
            indent = len(lines[first]) - len(lines[first].lstrip())
            found.append(FunctionStart(path.relative_to(root).as_posix(), header, offsets[start], indent))
    return found


def completes_function(engine: Engine, source: str, fn: FunctionStart, max_new_tokens: int) -> bool:
    """Complete from the function's first statement to its end; True when the function then parses."""
    prompt = cut(engine, source[: fn.offset], max_new_tokens)
    end = rf"^ {{0,{fn.indent}}}\S"  # a line indented no deeper than `def` ends the function
    result = engine.generate("eval", prompt, GenerationParams(max_new_tokens, stop_patterns=(end,)))
    text = result.text
    if result.stop_reason == "max_tokens":
        text = text[: text.rfind("\n") + 1]
    if not text.strip():
        return False
    try:
        ast.parse(textwrap.dedent(fn.header + text))
    except SyntaxError:
        return False
    return True


@torch.no_grad()
def heldout_loss(loaded, files: list[Path], batch: int = 8) -> dict:
    """Mean next-token loss (nats) over the held-out files in windows of n_positions; also bits/char."""
    tok, n = loaded.tokenizer, loaded.config.n_positions
    texts = [read_source(p) for p in files]
    stream: list[int] = []
    for text in texts:
        stream += tok.encode(text) + [tok.eos_token_id]
    full = [stream[i : i + n + 1] for i in range(0, len(stream) - n - 1, n)]
    tail = stream[len(full) * n :]
    chunks = [full[i : i + batch] for i in range(0, len(full), batch)] + ([[tail]] if len(tail) > 1 else [])
    total, count = 0.0, 0
    for chunk in chunks:
        x = torch.tensor([w[:-1] for w in chunk])  # x, y: [B, T]
        y = torch.tensor([w[1:] for w in chunk])
        logits = loaded.model(x)  # [B, T, V]
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    chars = sum(len(t) + 1 for t in texts)
    return {"tokens": count, "loss": total / count, "bits_per_char": total / math.log(2) / chars}


def fim_line(engine: Engine, template, source: str, cur: Cursor, suffix: bool, max_new_tokens: int) -> str:
    """First line of the greedy middle for the cursor, prompted as the server does (suffix or none)."""
    tok = engine.loaded.tokenizer
    end = source.find("\n", cur.offset)
    after = source[end + 1 :] if suffix and end >= 0 else ""  # the text after the cursor's line
    limit = prompt_limit(engine.capacity, max_new_tokens)
    before = source[: cur.offset][-engine.capacity * 8 :]
    prompt, _ = fim_prompt_ids(before, after, tok, template, limit, FIM_SUFFIX_TOKENS)
    params = GenerationParams(max_new_tokens, stop_patterns=("\n",), stop_ids=fim.stop_ids(template, tok))
    return engine.generate("eval", prompt.ids, params).text.split("\n")[0]


def resolve_model(model: str) -> str:
    """A model path: `git:REV` extracts inference/builtin as committed at REV into a temporary directory."""
    if not model.startswith("git:"):
        return model
    out = Path(tempfile.mkdtemp(prefix="builtin-")) / "builtin"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", model[4:], "inference/builtin"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "--strip-components=2", "-C", str(out)], input=archive, check=True)
    return str(out)


def evaluate(model: str, positions: int, functions: int, seed: int, max_new_tokens: int) -> dict:
    """Loss and next-line exact match of `model` and of the baseline on the held-out modules."""
    torch.manual_seed(seed)
    loaded = load_model(resolve_model(model))
    loaded.model.eval()
    root = stdlib_dir()
    _, held = corpus_files(root)
    held = [p for p in held if p.relative_to(root).as_posix() in EVAL_MODULES]
    t0 = time.perf_counter()
    result = {"model": model, "heldout_modules": [p.relative_to(root).as_posix() for p in held]}
    result.update(heldout_loss(loaded, held))
    log.info("held-out loss %.4f nats/token, %.4f bits/char", result["loss"], result["bits_per_char"])
    candidates = cursors(held, root)
    sample = random.Random(seed).sample(candidates, min(positions, len(candidates)))
    engine = Engine(loaded)
    template = fim.template_for(loaded.tokenizer)
    model_hits = base_hits = fim_hits = fim_bare_hits = 0
    examples = []
    for k, cur in enumerate(sample):
        source = read_source(root / cur.path)
        pred = first_line(engine, source[: cur.offset], max_new_tokens)
        base = baseline(cur)
        want = cur.target.rstrip()
        model_hits += pred.rstrip() == want
        base_hits += base.rstrip() == want
        if template is not None:
            fim_hits += fim_line(engine, template, source, cur, True, max_new_tokens).rstrip() == want
            fim_bare_hits += fim_line(engine, template, source, cur, False, max_new_tokens).rstrip() == want
        if len(examples) < 12:
            examples.append({"where": f"{cur.path}:{cur.line + 1}", "target": cur.target, "model": pred})
        if (k + 1) % 100 == 0:
            log.info("%d/%d: model %d, baseline %d, fim %d/%d", k + 1, len(sample), model_hits, base_hits,
                     fim_hits, fim_bare_hits)  # fmt: skip
    result.update(
        candidates=len(candidates),
        positions=len(sample),
        exact_match_model=model_hits / len(sample),
        exact_match_baseline=base_hits / len(sample),
        fim_template=template and template.name,
        fim_exact_match_suffix=template and fim_hits / len(sample),
        fim_exact_match_no_suffix=template and fim_bare_hits / len(sample),
    )
    starts = function_starts(held, root)
    sample_fn = random.Random(seed).sample(starts, min(functions, len(starts)))
    budget = 2 * max_new_tokens + 32
    parsed = sum(completes_function(engine, read_source(root / fn.path), fn, budget) for fn in sample_fn)
    result.update(
        functions=len(sample_fn),
        function_parse_rate=parsed / max(1, len(sample_fn)),
        eval_seconds=round(time.perf_counter() - t0, 1),
        examples=examples,
    )
    return result


def report(results: list[dict]) -> str:
    """The results as a Markdown table, one column per model."""

    def pct(v) -> str:
        return "n/a" if v is None or v is False else f"{v:.1%}"

    rows = [
        ("per-token loss (nats)", lambda r: f"{r['loss']:.3f} ({r['tokens']} tokens)"),
        ("bits per character", lambda r: f"{r['bits_per_char']:.3f}"),
        (
            f"next-line exact match ({results[0]['positions']} positions)",
            lambda r: pct(r["exact_match_model"]),
        ),
        ("  baseline (previous line repeated)", lambda r: pct(r["exact_match_baseline"])),
        ("FIM exact match, suffix 32 tokens", lambda r: pct(r["fim_exact_match_suffix"])),
        ("FIM exact match, no suffix", lambda r: pct(r["fim_exact_match_no_suffix"])),
        (f"functions that parse ({results[0]['functions']})", lambda r: pct(r["function_parse_rate"])),
    ]
    out = ["| measure | " + " | ".join(r["model"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    out += ["| " + name + " | " + " | ".join(f(r) for r in results) + " |" for name, f in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model name, path or git:REV (repeatable)")
    parser.add_argument("--positions", type=int, default=500)
    parser.add_argument("--functions", type=int, default=100, help="completions parsed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("inference").setLevel(logging.WARNING)  # not one line per prompt cut
    torch.set_num_threads(args.threads)
    models = args.model or ["builtin"]
    results = [evaluate(m, args.positions, args.functions, args.seed, args.max_new_tokens) for m in models]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    sys.stderr.write(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
