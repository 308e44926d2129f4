"""Prompt building: cut from the left at a line boundary, within the budget, moving in large steps."""

from __future__ import annotations

from lsp_server.prompt import MAX_CHARS_PER_TOKEN, PromptWindow, cut_prompt, line_starts, prompt_ids


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per character (exact and easy to reason about)."""
    return len(text)


def test_short_prefix_is_whole():
    prompt, w = cut_prompt("abc\ndef", 100, count_words)
    assert prompt == "abc\ndef" and w.start == 0


def test_cut_at_line_boundary_within_budget():
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 9 chars a line
    prompt, w = cut_prompt(text + "x", 200, count_words)
    assert len(prompt) <= 200 and text[w.start - 1] == "\n" and prompt.startswith("line ")
    # the jump leaves a quarter of the budget free
    assert len(prompt) <= 150


def test_start_stays_while_typing_then_jumps_in_a_large_step():
    text = "".join(f"line {i:03d}\n" for i in range(100))
    prompt, w = cut_prompt(text, 200, count_words)
    starts = {w.start}
    for _ in range(60):  # type 60 characters, one at a time
        text += "y"
        prompt, w = cut_prompt(text, 200, count_words, w)
        assert len(prompt) <= 200 and text.endswith(prompt)
        starts.add(w.start)
    assert len(starts) <= 2  # at most one jump in 60 keystrokes (a quarter of the budget is 50)


def test_edit_above_the_start_recomputes():
    text = "".join(f"line {i:03d}\n" for i in range(100))
    _, w = cut_prompt(text, 200, count_words)
    edited = "X" + text[1 : w.start] + "CHANGED" + text[w.start + 7 :]
    prompt, w2 = cut_prompt(edited, 200, count_words, w)
    assert len(prompt) <= 200 and edited.endswith(prompt)


def test_one_huge_line_is_cut_inside():
    text = "a" * 1000
    prompt, w = cut_prompt(text, 100, count_words)
    assert text.endswith(prompt) and 0 < len(prompt) <= 100


def test_crlf_line_starts_and_stale_window():
    assert line_starts("a\r\nb\nc") == [0, 3, 5]
    prompt, w = cut_prompt("short", 100, count_words, PromptWindow(start=50, anchor="zzz"))
    assert prompt == "short" and w.start == 0


def test_real_tokenizer_budget(codegen_tokenizer):
    count = lambda t: len(codegen_tokenizer.encode(t))  # noqa: E731
    text = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(200))
    prompt, w = cut_prompt(text, 300, count)
    assert count(prompt) <= 300 - 300 // 4 and text[w.start - 1] == "\n" and text.endswith(prompt)


def test_one_line_longer_than_the_look_back_is_cut_inside_not_to_nothing():
    """No line start within budget * MAX_CHARS_PER_TOKEN characters: the cut falls inside the last line."""
    text = "x" * (100 * MAX_CHARS_PER_TOKEN + 500)
    prompt, w = cut_prompt(text, 100, count_words)
    assert prompt == "x" * 75 and w.start == len(text) - 75  # 100 - 100 // 4: a quarter left free


def test_prompt_ids_are_the_cut_prompt_encoded(codegen_tokenizer):
    text = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(200))
    ids, w = prompt_ids(text, codegen_tokenizer, 300)
    assert ids == codegen_tokenizer.encode(text[w.start :]) and len(ids) <= 300 and w.start > 0
    again, w2 = prompt_ids(text + "x", codegen_tokenizer, 300, w)  # the start stays: the cache is reused
    assert w2 == w and again == codegen_tokenizer.encode(text[w.start :] + "x")
