"""CodeGen tokenizer: known answers, both file layouts, exact decode, streaming, truncate_before_pattern."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.checkpoints import CODEGEN_TOKENIZER_DIR
from tokenizer import TokenizerError, load_tokenizer, truncate_before_pattern

SAMPLE = (
    "import os\n\n\nclass Foo:\n    def bar(self, x):\n\t\treturn x  # tab and spaces\n"
    "        s = 'héllo wörld 日本語 🐯 ∑'\n" + " " * 40 + "end<|endoftext|>  \n\n  \r\n"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(CODEGEN_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tok_classic(tmp_path_factory):
    d = tmp_path_factory.mktemp("classic")
    for name in ("vocab.json", "merges.txt", "added_tokens.json"):
        shutil.copy(CODEGEN_TOKENIZER_DIR / name, d / name)
    return load_tokenizer(d)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [15496, 995]),
        (" Hello world", [18435, 995]),
        ("\n    return x", [198, 50284, 7783, 2124]),
    ],
    ids=["hello", "space-hello", "added-whitespace"],
)
def test_known_answers(tok, tok_classic, text, ids):
    assert tok.encode(text) == ids
    assert tok_classic.encode(text) == ids
    assert tok.decode(ids) == text


def test_special_ids(tok):
    assert tok.eos_token_id == 50256
    assert tok.bos_token_id == 50256
    assert tok.special_id("<|endoftext|>") == 50256 and tok.special_id("<|fim_prefix|>") is None


def test_special_token_text_in_a_document_is_plain_text(tok, tok_classic):
    """`<|endoftext|>` typed in a file is text (the model never sees an end of text there)."""
    for t in (tok, tok_classic):
        ids = t.encode("x = '<|endoftext|>'")
        assert 50256 not in ids and t.decode(ids) == "x = '<|endoftext|>'"


def test_classic_files_match_tokenizer_json(tok, tok_classic):
    text = SAMPLE + (Path(__file__).parent / "checkpoints.py").read_text()
    assert tok_classic.encode(text) == tok.encode(text)
    assert tok_classic.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", [SAMPLE, "  leading and trailing  ", "\n\n", " ", "x\r\n"], ids=repr)
def test_decode_is_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_transformers_encodes_the_same(tok):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(CODEGEN_TOKENIZER_DIR))
    # SAMPLE holds "<|endoftext|>" as text: transformers splits it too when asked to
    assert tok.encode(SAMPLE) == ref(SAMPLE, split_special_tokens=True)["input_ids"]
    plain = SAMPLE.replace("<|endoftext|>", "")
    assert tok.encode(plain) == ref(plain)["input_ids"]


def test_incremental_decoder_never_splits_a_character(tok):
    text = "a🐯b日本語ü∑" + SAMPLE
    ids = tok.encode(text)
    # the emoji is several byte-level tokens: the pieces must hold it back until it is complete
    assert len(tok.encode("🐯")) > 1
    dec = tok.incremental_decoder()
    pieces = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == text
    assert "".join(pieces[: len(tok.encode("a"))]) == "a"


def test_incremental_decoder_flush_of_an_unfinished_character(tok):
    ids = tok.encode("🐯")
    dec = tok.incremental_decoder()
    assert [dec.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.flush() == "\ufffd"


def test_ids_past_the_vocabulary_decode_to_nothing(tok):
    assert tok.decode([15496, 51000, 995]) == "Hello world"
    assert tok.incremental_decoder().push(51199) == ""


PATTERNS = ["^#", re.escape("<|endoftext|>"), "^'''", "\n\n\n"]
TRUNCATE_CASES = {
    "none": ("    return x\n", PATTERNS),
    "comment": ("    return x\n# test\nprint(1)\n", PATTERNS),
    "eos": ("    return x<|endoftext|>junk", PATTERNS),
    "blank-lines": ("    return x\n\n\n\ndef g():\n", PATTERNS),
    "second-def": ("def f():\n    pass\ndef g():\n    pass\n", PATTERNS),
    "second-print": ("print(1)\nx = 2\nprint(2)\nprint(3)\n", PATTERNS),
    "print-then-def": ("print(1)\ndef a():\n  print(2)\nprint(3)\ndef b(): pass\n", PATTERNS),
    "first-line-comment": ("# at once\nx = 1\n", PATTERNS),
    "docstring": ("    x = 1\n'''doc'''\n", PATTERNS),
    "empty-patterns": ("def f():\n    pass\ndef g():\n    pass\n", []),
    "triple-quote": ('    return 1\n"""\n', ['^"""']),
}


@pytest.mark.parametrize(("text", "patterns"), TRUNCATE_CASES.values(), ids=TRUNCATE_CASES.keys())
def test_truncate_before_pattern_matches_reference(tok, text, patterns):
    from transformers.models.codegen.tokenization_codegen import CodeGenTokenizer

    expected = CodeGenTokenizer.truncate(None, text, patterns) if patterns else text
    assert truncate_before_pattern(text, patterns) == expected
    assert tok.decode(tok.encode(text), truncate_before_pattern=patterns) == expected


def test_truncate_before_pattern_documented_examples():
    assert truncate_before_pattern("def f():\n    pass\ndef g():\n", ["x^"]) == "def f():\n    pass\n"
    assert truncate_before_pattern("  return 1\n\n\n\nfoo", ["\n\n\n"]) == "  return 1"
    assert truncate_before_pattern("  a\n# c\n", ["^#"]) == "  a\n"


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_malformed_tokenizer_json_is_reported(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(TokenizerError, match="cannot read the tokenizer"):
        load_tokenizer(tmp_path)


def test_lone_surrogates_encode_as_the_replacement_character(tok):
    """A document may hold an unpaired surrogate (legal in JSON): the model sees U+FFFD, one for one."""
    assert tok.encode("s = '\ud83d'\n") == tok.encode("s = '\ufffd'\n")
    assert tok.encode("\udc00x\ud800") == tok.encode("\ufffdx\ufffd")
