"""The built-in model's training samples are the server's prompts: FIM and project context, id for id."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lsp_server import fim
from lsp_server.context_layout import Chunk, Renderer
from lsp_server.prompt import fim_prompt_ids
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NEXT = ROOT / "tools" / "checkpoints" / "builtin-next"  # the built-in model's next version, in training
sys.path.insert(0, str(ROOT / "tools"))
from train_data import SPECIALS, Sampler, encode_all  # noqa: E402

FILES = [
    {"source": "pkg==1.0", "path": "pkg/models.py", "text": "class Invoice:\n    def total_cents(self):\n"
     "        return sum(line.cents for line in self.lines)\n\n    def add_line(self, line):\n"
     "        self.lines.append(line)\n", "held_out": False},
    {"source": "pkg==1.0", "path": "pkg/report.py", "text": "from pkg.models import Invoice\n\n\n"
     "def report(invoice):\n    total = invoice.total_cents()\n    return f'{total / 100:.2f}'\n",
     "held_out": False},
]  # fmt: skip


@pytest.fixture(scope="module")
def server_tok():
    return load_tokenizer(NEXT)


@pytest.fixture(scope="module")
def sampler():
    tok = Tokenizer.from_file(str(NEXT / "tokenizer.json"))
    stream, starts = encode_all(tok, [f["text"] for f in FILES] * 50)
    return Sampler(FILES * 50, tok, stream, starts, n_positions=512)


def test_next_builtin_tokenizer_has_the_formats_tokens(server_tok):
    assert [server_tok.special_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    template = fim.template_for(server_tok)
    assert template is not None and template.name == "qwen2.5-coder"
    assert server_tok.encode("<|fim_prefix|>") != [1]  # typed in a document, it is text


@pytest.mark.parametrize("budget", [0, 5, 32, 64], ids=["no-suffix", "suffix-5", "suffix-32", "suffix-64"])
def test_fim_sample_starts_with_the_servers_prompt(sampler, server_tok, budget):
    text = FILES[1]["text"] * 3
    cursor = text.index("total = ") + len("total = ")
    end = text.index("\n", cursor) + 1
    ids = sampler.fim_ids([], text[:cursor], text[cursor:end], text[end:], budget, 513)
    template = fim.template_for(server_tok)
    prompt, _ = fim_prompt_ids(text[:cursor], text[end:], server_tok, template, 400, budget)
    middle = server_tok.encode(text[cursor:end])
    assert ids == prompt.ids + middle + [server_tok.eos_token_id]


def test_project_sample_head_is_the_servers_repository_layout(sampler, server_tok):
    other, current = FILES[0], FILES[1]
    chunk = Chunk("file:///w/" + other["path"], other["path"], 0, 3, "class Invoice:\n", "open")
    template = fim.template_for(server_tok)
    renderer = Renderer(server_tok, template, True, "python", "pkg", current["path"])
    layout = renderer.layout([(chunk, renderer.chunk_ids(chunk))])
    ours = sampler.repo_start("pkg") + sampler.chunk_ids(other["path"], chunk.text)
    assert layout.head == ours + sampler.file_header(current["path"]) and not layout.inner


def test_rows_depend_only_on_seed_and_step(sampler):
    x1, y1 = sampler.batch(1234, 7, 4)
    x2, y2 = sampler.batch(1234, 7, 4)
    assert x1.shape == (4, 512) and (x1 == x2).all() and (y1 == y2).all()
    assert (x1[:, 1:] == y1[:, :-1]).all()
    assert not (sampler.batch(1234, 8, 4)[0] == x1).all()
    kinds = [sampler.row(random.Random(i))[:1] for i in range(200)]
    assert [1] in kinds and [5] in kinds  # FIM rows and project rows are drawn
