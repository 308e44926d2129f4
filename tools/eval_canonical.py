"""Short canonical Python prompts: the first line of each model's greedy completion against the lines a
Python programmer would write, side by side.

    python tools/eval_canonical.py --model git:HEAD~1 --model builtin [--json out.json]

`--model` as in tools/eval_default_model.py (a name, a path, or `git:REV` for the built-in model committed
at REV). A prompt counts as a hit when the completion's first line, after the text the prompt ends with,
equals one of its accepted lines once quotes are unified and spaces dropped (`fib(n-1)+fib(n-2)` and
`fib(n - 1) + fib(n - 2)` are the same line). Prompts ending in spaces are healed as the server and
`codegen-lsp complete` heal them (`--as-typed` adds the same models without it). The prompts are written
here, not drawn from the corpus; the training corpus may still hold lines like them (they are the idioms
every codebase repeats).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_default_model import FIM_SUFFIX_TOKENS, cut, resolve_model  # noqa: E402

from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.heal import split  # noqa: E402
from inference.loader import load_model  # noqa: E402
from inference.rules import prompt_limit  # noqa: E402
from lsp_server import fim  # noqa: E402
from lsp_server.prompt import fim_prompt_ids  # noqa: E402

log = logging.getLogger("eval_canonical")

STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
MAIN = 'def main():\n    print("hello")\n\n\nif __name__ == "__main__":\n    '

# name: (prompt, accepted first lines)
PROMPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "add": ("def add(a, b):\n    return ", ("a + b",)),
    "square": ("def square(x):\n    return ", ("x * x", "x ** 2")),
    "is-even": ("def is_even(n):\n    return ", ("n % 2 == 0", "not n % 2")),
    "reverse": ("def reverse(s):\n    return ", ("s[::-1]", '"".join(reversed(s))')),
    "mean": ("def mean(values):\n    return ", ("sum(values) / len(values)",)),
    "maximum": ("def maximum(a, b):\n    return ", ("max(a, b)", "a if a > b else b", "a if a >= b else b")),
    "fib": (
        "def fib(n):\n    if n < 2:\n        return n\n    return ",
        ("fib(n - 1) + fib(n - 2)", "fib(n - 2) + fib(n - 1)"),
    ),
    "read-file": ("def read_file(path):\n    with open(path) as f:\n        return ", ("f.read()",)),
    "read-lines": (
        "def read_lines(path):\n    with open(path) as f:\n        return ",
        ("f.readlines()", "f.read().splitlines()", "list(f)", "[line.rstrip() for line in f]"),
    ),
    "load-json": (
        "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return ",
        ("json.load(f)",),
    ),
    "write-file": (
        'def write_file(path, text):\n    with open(path, "w") as f:\n        ',
        ("f.write(text)",),
    ),
    "open-file": ("def read_file(path):\n    with ", ("open(path) as f:", 'open(path, "r") as f:')),
    "exists": (
        "import os\n\n\ndef exists(path):\n    return ",
        ("os.path.exists(path)", "os.path.isfile(path)"),
    ),
    "init-first": ("class Point:\n    def __init__(self, x, y):\n        ", ("self.x = x",)),
    "init-second": (
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        ",
        ("self.y = y",),
    ),
    "init-third": (
        "class Person:\n    def __init__(self, name, age, email):\n        self.name = name\n"
        "        self.age = age\n        ",
        ("self.email = email",),
    ),
    "push": (STACK + "    def push(self, item):\n        ", ("self.items.append(item)",)),
    "pop": (STACK + "    def pop(self):\n        return ", ("self.items.pop()",)),
    "is-empty": (
        STACK + "    def is_empty(self):\n        return ",
        ("not self.items", "len(self.items) == 0"),
    ),
    "size": (STACK + "    def __len__(self):\n        return ", ("len(self.items)",)),
    "main-guard": ('def main():\n    print("hello")\n\n\nif ', ('__name__ == "__main__":',)),
    "main-call": (MAIN, ("main()",)),
    "sys-exit": (
        'import sys\n\n\ndef main(argv):\n    return 0\n\n\nif __name__ == "__main__":\n    ',
        ("sys.exit(main(sys.argv))", "sys.exit(main(sys.argv[1:]))", "main(sys.argv)", "main(sys.argv[1:])"),
    ),
    "loop-print": ("for i in range(10):\n    ", ("print(i)",)),
}


def normal(line: str) -> str:
    """A line compared without spaces, with one kind of quote."""
    return line.strip().replace("'", '"').replace(" ", "")


def first_line(engine: Engine, prompt: str, max_new_tokens: int, heal: bool, template=None) -> str:
    """Greedy completion's first line, the prompt cut as the server cuts it and, with `heal`, its trailing
    spaces healed as the server and `codegen-lsp complete` do (inference/heal.py); with a FIM `template`, in
    it with an empty suffix, as the server prompts at the end of a file under `fim`."""
    kept, spaces = split(prompt) if heal else (prompt, "")
    if template is None:
        params = GenerationParams(max_new_tokens=max_new_tokens, stop_patterns=("\n",), heal=spaces)
        return engine.generate("eval", cut(engine, kept, max_new_tokens), params).text
    tok, limit = engine.loaded.tokenizer, prompt_limit(engine.capacity, max_new_tokens)
    ids = fim_prompt_ids(kept, "", tok, template, limit, FIM_SUFFIX_TOKENS)[0].ids
    stop_ids = fim.stop_ids(template, tok)
    params = GenerationParams(max_new_tokens, stop_patterns=("\n",), heal=spaces, stop_ids=stop_ids)
    return engine.generate("eval", ids, params).text


def evaluate(model: str, max_new_tokens: int, heal: bool = True, use_fim: bool = False) -> dict:
    """{"model", "hits", "total", "answers": {name: first line}} for one model."""
    loaded = load_model(resolve_model(model))
    loaded.model.eval()
    engine = Engine(loaded)
    template = fim.template_for(loaded.tokenizer) if use_fim else None
    if use_fim and template is None:
        return {
            "model": f"{model} (no FIM tokens)",
            "hits": 0,
            "total": 0,
            "answers": dict.fromkeys(PROMPTS, ""),
        }
    answers, hits = {}, 0
    for name, (prompt, accepted) in PROMPTS.items():
        line = first_line(engine, prompt, max_new_tokens, heal, template)
        answers[name] = line
        hits += normal(line) in {normal(a) for a in accepted}
    label = model + ("" if heal else " (as typed)") + (" (FIM)" if use_fim else "")
    return {"model": label, "hits": hits, "total": len(PROMPTS), "answers": answers}


def report(results: list[dict]) -> str:
    """A table: one row per prompt, one column per model (a hit marked `+`)."""
    width = max(len(n) for n in PROMPTS)
    lines = [" " * width + " | " + " | ".join(r["model"] for r in results)]
    for name, (_, accepted) in PROMPTS.items():
        cells = []
        for r in results:
            line = r["answers"][name]
            mark = "+" if normal(line) in {normal(a) for a in accepted} else " "
            cells.append(f"{mark} {line.strip()[:40]!r}")
        lines.append(f"{name:<{width}} | " + " | ".join(f"{c:<44}" for c in cells))
    lines.append(f"{'hits':<{width}} | " + " | ".join(f"{r['hits']}/{r['total']}" for r in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model name, path or git:REV (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--as-typed", action="store_true", help="also without token healing, side by side")
    parser.add_argument("--fim", action="store_true", help="also in the FIM template, empty suffix (healed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    results = []
    for m in args.model or ["builtin"]:
        results.append(evaluate(m, args.max_new_tokens))
        if args.as_typed:
            results.append(evaluate(m, args.max_new_tokens, heal=False))
        if args.fim:
            results.append(evaluate(m, args.max_new_tokens, use_fim=True))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
