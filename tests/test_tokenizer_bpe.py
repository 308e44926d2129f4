"""Any byte-level BPE tokenizer.json: the real Qwen2 / Qwen2.5-Coder vocabulary against llama.cpp's 47 known
answers and transformers' tokenizer, special tokens by id only."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsp_server import fim
from tests.checkpoints import QWEN_TOKENIZER_DIR
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIM_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(QWEN_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def ref():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER_DIR))


def known_answers() -> list[tuple[str, list[int]]]:
    texts = (
        (QWEN_TOKENIZER_DIR / "known-answers.inp")
        .read_text(encoding="utf-8")
        .split("\n__ggml_vocab_test__\n")
    )
    lines = (QWEN_TOKENIZER_DIR / "known-answers.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == 47 and len(lines) >= 47
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines[:47], strict=True)]


def test_llama_cpp_known_answers(tok):
    """All 47 of llama.cpp's Qwen2 vocabulary tests, and each decodes back to its text."""
    answers = known_answers()
    wrong = [(text, tok.encode(text), ids) for text, ids in answers if tok.encode(text) != ids]
    assert not wrong, wrong[:3]
    assert all(tok.decode(ids) == text for text, ids in answers)


def test_special_tokens_at_their_ids(tok):
    assert {name: tok.special_id(name) for name in FIM_IDS} == FIM_IDS
    assert tok.eos_token_id == 151643


@pytest.mark.parametrize("name", list(FIM_IDS))
def test_special_token_text_typed_in_a_document_is_plain_text(tok, ref, name):
    text = f"s = '{name}'\n"
    ids = tok.encode(text)
    assert FIM_IDS[name] not in ids and tok.decode(ids) == text
    assert ids == ref(text, split_special_tokens=True)["input_ids"]


def test_transformers_encodes_a_source_file_the_same(tok, ref):
    text = (ROOT / "lsp_server" / "completion.py").read_text(encoding="utf-8") + "\n日本語 ü 🐯\r\n\t x"
    ids = tok.encode(text)
    assert ids == ref(text)["input_ids"]
    assert tok.decode(ids) == text


def test_fim_prompt_equals_transformers_on_the_template_text(tok, ref):
    """The FIM prompt built from ids is what transformers makes of the template's text (specials parsed)."""
    prefix = "def area(r):\n    return "
    suffix = "\n\nprint(area(2.0))\n"
    template = fim.template_for(tok)
    assert template is not None and template.name == "qwen2.5-coder"
    ids = fim.build(template, tok, tok.encode(prefix), tok.encode(suffix))
    text = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    assert ids == ref(text)["input_ids"]
    assert ids[0] == 151659 and ids[-1] == 151660 and 151661 in ids


def test_streaming_decode_of_multibyte_text(tok):
    text = "# 日本語のコメント 🚀\nx = 'ü'\n"
    dec = tok.incremental_decoder()
    pieces = [dec.push(i) for i in tok.encode(text)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == text
