"""The built-in model (inference/builtin/): loads by name and path, completes Python that parses."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.engine import Engine
from inference.generate import GenerationParams
from inference.hub import BUILTIN_DIR
from inference.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fib.py"
END_OF_FUNCTION = r"^\S"  # a line that starts at column 0 ends the function being completed

# Function headers (with a docstring or a first statement) that the model must complete into valid Python.
# The model is small: inference/builtin/README.md gives the share of held-out functions it completes validly.
PROMPTS = {
    "sum-list": 'def total(numbers):\n    """Return the sum of a list of numbers."""\n',
    "read-file": 'def read_text(path):\n    """Return the contents of a text file."""\n',
    "method": "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "kwargs": "def make_config(name, **options):\n    config = {'name': name}\n",
    "try": "def parse_int(text, default=None):\n    try:\n",
}


@pytest.fixture(scope="module")
def builtin():
    """The built-in model, loaded by name through the normal loader."""
    return load_model("builtin", device="cpu", dtype="float32")


def test_loads_by_name_and_path(builtin):
    assert builtin.name == "builtin"
    assert builtin.path == BUILTIN_DIR
    assert builtin.family == "codegen"
    config = json.loads((BUILTIN_DIR / "config.json").read_text())
    assert config["model_type"] == "codegen"
    assert builtin.config.vocab_size == config["vocab_size"] == builtin.tokenizer.vocab_size
    assert builtin.tokenizer.eos_token_id == config["eos_token_id"]
    by_path = load_model(str(BUILTIN_DIR), device="cpu", dtype="float32", allow_fallback=False)
    ids = torch.tensor([builtin.tokenizer.encode(PROMPTS["kwargs"])])
    torch.testing.assert_close(by_path.model(ids), builtin.model(ids), rtol=0, atol=0)


def test_size_within_budget():
    total = sum(f.stat().st_size for f in BUILTIN_DIR.iterdir() if f.is_file())
    assert total <= 50 * 1024 * 1024, f"inference/builtin is {total / 2**20:.1f} MiB"


def complete_function(loaded, prompt: str) -> str:
    """Greedy completion of `prompt` to the end of the function (or 128 tokens, partial last line dropped)."""
    params = GenerationParams(max_new_tokens=128, stop_patterns=(END_OF_FUNCTION,))
    result = Engine(loaded).generate("test", prompt, params)
    text = result.text
    if result.stop_reason == "max_tokens":
        text = text[: text.rfind("\n") + 1]
    return text


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_completed_function_parses(builtin, prompt):
    completion = complete_function(builtin, prompt)
    assert completion.strip(), "empty completion"
    assert completion.lstrip("\n").startswith((" ", "\t")), f"completion leaves the function: {completion!r}"
    source = prompt + completion
    try:
        ast.parse(source)
    except SyntaxError as exc:
        pytest.fail(f"completed function does not parse ({exc}):\n{source}")


def test_transformers_loads_builtin_with_same_logits(builtin):
    from transformers import CodeGenForCausalLM

    reference = CodeGenForCausalLM.from_pretrained(BUILTIN_DIR, dtype=torch.float32).eval()
    text = EXAMPLE.read_text(encoding="utf-8")
    ids = torch.tensor([builtin.tokenizer.encode(text)[: builtin.config.n_positions]])
    with torch.no_grad():
        expected = reference(ids).logits
    torch.testing.assert_close(builtin.model(ids), expected, rtol=0, atol=1e-4)


def test_cli_falls_back_to_builtin_offline(tmp_path):
    """`codegen-lsp complete --file examples/...` with no options, no hub cache and no network completes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lsp_server.cli", "complete", "--file", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "built-in model" in proc.stderr
    assert proc.stdout.strip(), f"empty completion; stderr: {proc.stderr}"
    first_line = proc.stdout.lstrip("\n").split("\n")[0]
    assert first_line.strip(), f"completion starts with blank lines only: {proc.stdout!r}"
    # The first completed line continues the file into valid Python.
    head = proc.stdout[: proc.stdout.index(first_line)]
    ast.parse(EXAMPLE.read_text(encoding="utf-8") + head + first_line + "\n")
