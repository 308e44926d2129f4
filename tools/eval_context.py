"""Next-line exact match with and without project context, on a held-out package whose modules use each other.

    python tools/eval_context.py --model builtin [--positions 200] [--max-tokens 1024] [--json out.json]

The package: a copy of this Python's stdlib `json` (json/decoder.py and json/encoder.py are held out of the
built-in model's training, tools/train_default_model.py); every module of it is open, the cursor is at the
start of a non-blank line inside a function body of decoder.py or encoder.py (sampled with a fixed seed).
The prompt is the server's (lsp_server/prompt.py's cutter, lsp_server/context.py's chunks chosen from the
text before the cursor, in the model's layout); greedy decoding, first generated line against the real line
(trailing white space ignored). Any model path works, so anyone with real weights can reproduce it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from eval_default_model import function_body_lines  # noqa: E402

from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.loader import load_model  # noqa: E402
from inference.rules import prompt_limit  # noqa: E402
from lsp_server.context import ProjectContext  # noqa: E402
from lsp_server.documents import Documents  # noqa: E402
from lsp_server.prompt import prompt_ids  # noqa: E402
from lsp_server.settings import Settings, update  # noqa: E402

TARGETS = ("decoder.py", "encoder.py")


def first_line(engine: Engine, key: str, ids: list[int], max_new: int) -> str:
    params = GenerationParams(max_new_tokens=max_new, stop_patterns=("\n",))
    return engine.generate(key, ids, params).text.split("\n")[0]


def evaluate(model: str, positions: int, seed: int, max_new: int, max_tokens: int) -> dict:
    engine = Engine(load_model(model))
    tok = engine.loaded.tokenizer
    limit = prompt_limit(engine.loaded.config.n_positions, max_new)
    tmp = Path(tempfile.mkdtemp(prefix="eval-context-"))
    ws = tmp / "json"
    shutil.copytree(
        Path(sysconfig.get_paths()["stdlib"]) / "json", ws, ignore=shutil.ignore_patterns("__py*")
    )
    settings, _ = update(Settings(), {"projectContext": {"maxTokens": max_tokens}})
    docs = Documents()
    server = SimpleNamespace(
        settings=settings, documents=docs, workspace=SimpleNamespace(folders={}, root_uri=ws.as_uri())
    )
    ctx = ProjectContext(server)
    for path in sorted(ws.glob("*.py")):
        docs.open(path.as_uri(), "python", 1, path.read_text())
        ctx.opened(path.as_uri())
    cursors = []
    for name in TARGETS:
        text = (ws / name).read_text()
        lines = text.split("\n")
        for i in sorted(function_body_lines(text)):
            if lines[i].strip():
                cursors.append((name, text, sum(len(x) + 1 for x in lines[:i]), lines[i]))
    random.Random(seed).shuffle(cursors)
    cursors = cursors[:positions]
    entry = SimpleNamespace(device="cpu", loaded=engine.loaded)
    hits = {"without": 0, "with": 0}
    context_tokens, with_any = [], 0
    for name, text, offset, truth in cursors:
        uri, before = (ws / name).as_uri(), text[:offset]
        ctx.selections.clear()  # chosen afresh for each cursor, from the text before it
        layout = ctx.layout(uri, entry, before, "", limit, None, False)
        plain, _ = prompt_ids(before, tok, limit)
        rest, _ = prompt_ids(before, tok, limit - len(layout))
        context_tokens.append(len(layout))
        with_any += bool(layout.chunks)
        for kind, ids in (("without", plain), ("with", layout.head + layout.inner + rest)):
            got = first_line(engine, f"eval-{kind}", ids, max_new)
            hits[kind] += got.rstrip() == truth.rstrip()
    shutil.rmtree(tmp, ignore_errors=True)
    n = len(cursors)
    return {
        "model": model,
        "window": engine.loaded.config.n_positions,
        "positions": n,
        "exactMatchWithout": round(hits["without"] / n, 4),
        "exactMatchWith": round(hits["with"] / n, 4),
        "cursorsWithContext": with_any,
        "meanContextTokens": round(sum(context_tokens) / n, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin")
    p.add_argument("--positions", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=1024, help="projectContext.maxTokens")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    out = evaluate(args.model, args.positions, args.seed, args.max_new_tokens, args.max_tokens)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
