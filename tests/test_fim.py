"""Fill-in-the-middle prompts: templates found by the tokenizer's special tokens, exact layouts, the suffix's
cut at line ends, the prefix's budget, and the answer never repeating the text below the cursor."""

from __future__ import annotations

import pytest
from tokenizers import AddedToken, Tokenizer

from lsp_server import fim, postprocess
from lsp_server.prompt import SLACK, cut_suffix, fim_prompt_ids
from tests.checkpoints import CODEGEN_TOKENIZER_DIR, QWEN_TOKENIZER_DIR
from tokenizer import load_tokenizer
from tokenizer.codegen import CodeGenTokenizer

SPECIALS = {
    "qwen2.5-coder": None,  # the real vocabulary
    "deepseek-coder": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"],
    "starcoder": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"],
    "codellama": ["<PRE>", "<SUF>", "<MID>", "<EOT>"],
    "codegen2": ["<mask_1>", "<sep>", "<eom>"],
}


def tokenizer_with(specials: list[str] | None):
    """The real Qwen2 tokenizer, or the CodeGen vocabulary with these special tokens added."""
    if specials is None:
        return load_tokenizer(QWEN_TOKENIZER_DIR)
    tok = Tokenizer.from_file(str(CODEGEN_TOKENIZER_DIR / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return CodeGenTokenizer(tok)


@pytest.fixture(scope="module")
def qwen():
    return load_tokenizer(QWEN_TOKENIZER_DIR)


@pytest.mark.parametrize("name", list(SPECIALS))
def test_template_found_by_the_special_tokens(name):
    tok = tokenizer_with(SPECIALS[name])
    template = fim.template_for(tok)
    assert template is not None and template.name == name
    ids = fim.build(template, tok, [11, 12], [21])
    sentinels = [tok.special_id(s) for s in template.specials]
    assert [i for i in ids if i in sentinels] == sentinels  # the sentinels, in the template's order
    assert ids.index(11) < ids.index(21)  # the prefix's ids before the suffix's
    assert fim.stop_ids(template, tok)  # generation ends at the template's end tokens


def test_no_template_without_sentinels():
    assert fim.template_for(load_tokenizer(CODEGEN_TOKENIZER_DIR)) is None


def test_the_builtin_model_has_the_qwen_template_but_turns_auto_off(tmp_path):
    """Its FIM prompts do worse than plain ones (inference/builtin/README.md); tokenizer_config says so."""
    from inference.hub import BUILTIN_DIR

    tok = load_tokenizer(BUILTIN_DIR)
    assert fim.template_for(tok).name == "qwen2.5-coder" and tok.fim_auto is False
    assert load_tokenizer(QWEN_TOKENIZER_DIR).fim_auto is True  # no such key: auto is on
    (tmp_path / "tokenizer.json").write_bytes((BUILTIN_DIR / "tokenizer.json").read_bytes())
    assert load_tokenizer(tmp_path).fim_auto is True  # no tokenizer_config.json at all


def test_qwen_prompt_is_exactly_the_template(qwen):
    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
    template = fim.template_for(qwen)
    prompt, _ = fim_prompt_ids(prefix, suffix, qwen, template, limit=1000, suffix_budget=64)
    want = [151659, *qwen.encode(prefix), 151661, *qwen.encode(suffix), 151660]
    assert prompt.ids == want and prompt.template == "qwen2.5-coder"
    assert (prompt.prefix_tokens, prompt.suffix_tokens) == (
        len(qwen.encode(prefix)),
        len(qwen.encode(suffix)),
    )
    stops = set(fim.stop_ids(template, qwen))
    assert stops == {151643, 151662, 151664, 151645}  # endoftext, fim_pad, file_sep, im_end


def count_words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize(
    "after, budget, want",
    [
        ("x\na b\nc d e\n", 10, "x\na b\nc d e\n"),  # fits whole
        ("x\na b\nc d e\n", 3, "x\na b\n"),  # whole lines from the cursor on
        ("x\na b\nc d e\n", 1, "x\n"),  # the cursor's line alone
        ("one two three\nfour\n", 2, "one two "),  # the cursor's line over the budget: cut inside it
        ("anything", 0, ""),
        ("", 5, ""),
    ],
    ids=["fits", "two-lines", "cursor-line", "inside-cursor-line", "zero-budget", "empty"],
)
def test_suffix_cut_at_line_ends(after, budget, want):
    got = cut_suffix(after, budget, count_words)
    assert got == want and count_words(got) <= budget


def test_suffix_budget_counts_tokens_and_keeps_line_ends(qwen):
    after = "".join(f"    value_{i} = compute({i}, scale=2)\n" for i in range(200))
    template = fim.template_for(qwen)
    prompt, _ = fim_prompt_ids("x = 1\n", after, qwen, template, limit=2000, suffix_budget=64)
    assert 0 < prompt.suffix_tokens <= 64
    suffix_ids = prompt.ids[prompt.ids.index(151661) + 1 : -1]
    assert qwen.decode(suffix_ids).endswith("\n") and after.startswith(qwen.decode(suffix_ids))


def test_prefix_cut_from_the_left_leaves_room_for_the_suffix_budget(qwen):
    before = "".join(f"line_{i} = {i}\n" for i in range(400))
    template = fim.template_for(qwen)
    extra = fim.overhead(template, qwen)
    prompt, window = fim_prompt_ids(before, "y = 2\n", qwen, template, limit=300, suffix_budget=64)
    assert len(prompt.ids) <= 300 and prompt.prefix_tokens <= 300 - 64 - extra
    assert window.start > 0 and before[window.start - 1] == "\n"  # cut at a line start
    # the same keystroke with a longer suffix keeps the prefix's start (the budget is reserved, not used)
    again, window2 = fim_prompt_ids(before, "y = 2\n" * 50, qwen, template, 300, 64, window)
    assert (
        window2.start == window.start
        and again.ids[: prompt.prefix_tokens + 1] == prompt.ids[: prompt.prefix_tokens + 1]
    )


def test_a_suffix_budget_over_the_window_leaves_the_prefix_half(qwen):
    """fimSuffixTokens larger than the window: the suffix takes at most half, the prefix keeps the rest."""
    template = fim.template_for(qwen)
    after = "z = 0\n" * 5000
    prompt, _ = fim_prompt_ids("a = 1\n" * 500, after, qwen, template, limit=200, suffix_budget=60000)
    suffix_budget = (200 - 3) // 2  # 3 sentinels
    prefix_budget = 200 - 3 - suffix_budget
    target = prefix_budget - prefix_budget // SLACK  # cut_prompt's aim after a cut, at a line start
    assert 0 < prompt.suffix_tokens <= suffix_budget and len(prompt.ids) <= 200
    assert target - len(qwen.encode("a = 1\n")) < prompt.prefix_tokens <= target


@pytest.mark.parametrize(
    "text, after, want",
    [
        ("x + 1\n    return y", "\n    return y\n", "x + 1"),  # re-types the line below: cut
        ("x + 1\n    z = 2", "\n    return y\n", "x + 1\n    z = 2"),  # new code: kept
        ("x + 1", "\n    return y\n", "x + 1"),  # one line: kept
        ("a\nb\n\nreturn y\nmore", ")\n\n\n   return y  \n", "a\nb\n"),  # first non-blank line below
        ("a\nb", "", "a\nb"),  # nothing below
    ],
    ids=["repeat", "new-code", "one-line", "blank-lines-below", "end-of-file"],
)
def test_answer_never_repeats_the_code_below(text, after, want):
    assert postprocess.cut_suffix_repeat(text, after) == want
