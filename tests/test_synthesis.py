"""Multi-turn synthesis: MTPB prompts, truncation, the conversation store, and the engine-level loop."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lsp_server import mtpb as syn
from lsp_server.mtpb import SynthesisError

# --- prompt building (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "prompt", "expected"),
    [
        ("python", "Define a variable a = 3.", "# Define a variable a = 3.\n"),
        ("javascript", "Add one.", "// Add one.\n"),
        ("cpp", "  Sort the list.  ", "// Sort the list.\n"),
        ("lua", "Print it.", "-- Print it.\n"),
        ("python", "First line\nsecond line", "# First line\n# second line\n"),
        ("unknown-language", "Do it.", "# Do it.\n"),
    ],
    ids=["python", "javascript", "cpp-stripped", "lua", "multi-line", "unknown-is-python"],
)
def test_turn_comment(language, prompt, expected):
    assert syn.turn_comment(prompt, language) == expected


def test_lead_is_mtpb_header_for_an_empty_python_document():
    assert syn.lead_for("", "python") == "# Import libraries.\n\nimport numpy as np\n\n"
    assert syn.lead_for("  \n", "python") == syn.MTPB_HEADER
    assert syn.lead_for("", "javascript") == ""


def test_lead_keeps_the_document_and_ends_the_line():
    assert syn.lead_for("import os\n", "python") == "import os\n"
    assert syn.lead_for("import os", "python") == "import os\n"


def test_prompt_of_each_turn_is_mtpb_format():
    conv = syn.new_conversation(engine=None, text_before="", language_id="python", params=None)
    assert conv.prompt_for("Define a = 3.") == syn.MTPB_HEADER + "# Define a = 3.\n"
    conv._body.append("# Define a = 3.\na = 3\n" + "\n\n")
    assert conv.prompt_for("Print a.") == syn.MTPB_HEADER + "# Define a = 3.\na = 3\n\n\n# Print a.\n"
    assert conv.program == syn.MTPB_HEADER + "# Define a = 3.\na = 3\n"


def test_program_inserts_only_what_the_document_lacks():
    conv = syn.new_conversation(engine=None, text_before="x = 1", language_id="python", params=None)
    conv._body.append("# Double x.\ny = 2 * x" + "\n\n")
    assert conv.history == "x = 1\n# Double x.\ny = 2 * x\n\n"
    assert conv.program == "\n# Double x.\ny = 2 * x\n"


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("python", "a = 3\n# Print a.\nprint(a)", "a = 3\n"),
        ("python", "a = 3\n\n\n\nb = 4", "a = 3"),
        ("python", 'a = 3\n"""doc"""', "a = 3\n"),
        ("python", "a = 3\n'''doc'''", "a = 3\n"),
        ("python", "a = 3<|endoftext|>junk", "a = 3"),
        ("python", "def f():\n    pass\ndef g():\n    pass", "def f():\n    pass\n"),
        ("python", "print(1)\nprint(2)", "print(1)\n"),
        ("python", "x = 1  # keep inline comments", "x = 1  # keep inline comments"),
        ("javascript", "let a = 3;\n// next\nlet b;", "let a = 3;\n"),
        ("javascript", "let a = 3;\n/** doc */", "let a = 3;\n"),
        ("javascript", "print(1)\nprint(2)", "print(1)\nprint(2)"),
    ],
    ids=[
        "comment",
        "three-newlines",
        "triple-double-quote",
        "triple-single-quote",
        "endoftext",
        "second-def",
        "second-print",
        "inline-comment-kept",
        "js-comment",
        "js-doc-comment",
        "js-no-python-rules",
    ],
)
def test_truncate_code(language, text, expected):
    assert syn.truncate_code(text, language) == expected


@pytest.mark.parametrize(
    ("language", "indent", "text", "expected"),
    [
        ("python", "    ", "    s = a + b\n    # Print it.\n    print(s)", "    s = a + b\n"),
        ("python", "    ", "    s = a + b\n\n    return s\nprint(f(1))", "    s = a + b\n\n    return s\n"),
        ("python", "        ", "        x = 1\n    y = 2", "        x = 1\n"),
        ("python", "    ", "return a\n", ""),
        ("python", "    ", "    # inner\n", ""),
        ("javascript", "\t", "\tlet a = 3;\n\t// next\n\tlet b;", "\tlet a = 3;\n"),
        ("javascript", "\t", "\tlet a = 3;\n}\n", "\tlet a = 3;\n"),
    ],
    ids=[
        "comment-at-depth",
        "dedent",
        "partial-dedent",
        "code-at-column-0",
        "comment-first",
        "js-comment",
        "js-brace",
    ],
)
def test_truncate_code_inside_a_block_stops_at_its_comments_and_a_dedent(language, indent, text, expected):
    assert syn.truncate_code(text, language, indent) == expected


def test_turn_comment_at_an_indent():
    want = "    # Add them.\n    # Return it.\n"
    assert syn.turn_comment("Add them.\nReturn it.", "python", "    ") == want


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ([], "non-empty list"),
        ("one string", "non-empty list"),
        (None, "non-empty list"),
        (["ok", ""], "turn 2 is empty"),
        (["ok", "   "], "turn 2 is empty"),
        (["ok", 3], "turn 2 must be a string"),
        (["x"] * (syn.MAX_TURNS + 1), "at most"),
        (["x" * (syn.MAX_TURN_CHARS + 1)], "characters long"),
    ],
    ids=["no-turns", "not-a-list", "null", "empty-turn", "blank-turn", "number-turn", "too-many", "too-long"],
)
def test_bad_turns_are_clear_errors(turns, message):
    with pytest.raises(SynthesisError, match=message):
        syn.validate_turns(turns)


@pytest.mark.parametrize("value", [0, -5, 10**9, 2.5, "64", True, None], ids=repr)
def test_absurd_token_budgets_are_clear_errors(value):
    with pytest.raises(SynthesisError, match="maxNewTokensPerTurn must be an integer from 1 to 511"):
        syn.validate_max_new_tokens(value, n_positions=512)


def test_token_budget_accepts_the_window():
    assert syn.validate_max_new_tokens(128, n_positions=2048) == 128
    assert syn.validate_max_new_tokens(511, n_positions=512) == 511


# --- conversation store (fake engine, fake clock) ---------------------------------------------------


class FakeEngine:
    def __init__(self):
        self.dropped: list[str] = []

    def drop_session(self, key):
        self.dropped.append(key)


def test_store_expires_idle_conversations_and_frees_their_sessions():
    now = [0.0]
    engine = FakeEngine()
    store = syn.ConversationStore(idle_seconds=10, clock=lambda: now[0])
    a = store.add(syn.new_conversation(engine, "", "python", None))
    b = store.add(syn.new_conversation(engine, "", "python", None))
    assert a.id != b.id and len(store) == 2
    now[0] = 8.0
    store.touch(b)
    now[0] = 12.0
    assert store.expire() == [a]
    a.close()
    assert engine.dropped == [a.session_key]
    assert store.get(b.id) is b
    with pytest.raises(SynthesisError, match=r"unknown conversation id .*expired after 10 s idle"):
        store.get(a.id)


def test_store_does_not_expire_a_busy_conversation():
    now = [0.0]
    store = syn.ConversationStore(idle_seconds=1, clock=lambda: now[0])
    conv = store.add(syn.new_conversation(FakeEngine(), "", "python", None))
    conv.busy = True
    now[0] = 100.0
    assert store.expire() == []
    conv.busy = False
    assert store.expire() == [conv]


def test_store_end_and_unknown_ids():
    store = syn.ConversationStore()
    conv = store.add(syn.new_conversation(FakeEngine(), "", "python", None))
    assert store.end(conv.id) is conv
    assert len(store) == 0
    with pytest.raises(SynthesisError, match=r"\(ended\)"):
        store.end(conv.id)
    with pytest.raises(SynthesisError, match="unknown conversation id 'nope'"):
        store.get("nope")
    with pytest.raises(SynthesisError, match="'id' must be"):
        store.get(42)


# --- the engine-level loop (random-weight checkpoint, real tokenizer) -------------------------------

TURNS = [
    "Define a variable a = 3.",
    "Write a function that doubles a number.",
    "Print the double of a.",
]


@pytest.fixture(scope="module")
def loaded(codegen_checkpoint):
    from inference.loader import load_model

    return load_model(str(codegen_checkpoint))


@pytest.fixture
def engine(loaded):
    from inference.engine import Engine

    return Engine(loaded, cache_budget_bytes=256 * 2**20)


def greedy(max_new_tokens=12):
    from inference.engine import GenerationParams

    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)


CASES = {
    # language, document before the cursor, history of the first turn, comment prefix
    "python-empty-document": ("python", "", syn.MTPB_HEADER, "# "),
    "python-after-code": ("python", "import os\nx = 1", "import os\nx = 1\n", "# "),
    "javascript-after-code": ("javascript", "const x = 1;\n", "const x = 1;\n", "// "),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_program_equals_from_scratch_generation_turn_by_turn(engine, loaded, case):
    from inference.engine import Engine

    language, before, history, prefix = CASES[case]
    result = syn.synthesize(engine, TURNS, greedy(), text_before=before, language_id=language)
    assert [t["prompt"] for t in result["turns"]] == TURNS
    assert sum(t["tokens"] for t in result["turns"]) > len(TURNS)  # the model did generate

    # From scratch: a fresh engine per turn, the whole MTPB prompt built independently here.
    patterns = (
        syn.MTPB_PATTERNS if language == "python" else ("^//", r"^/\*", re.escape("<|endoftext|>"), "\n\n\n")
    )
    params = dataclasses.replace(greedy(), stop_patterns=patterns)
    for turn in result["turns"]:
        prompt = history + f"{prefix}{turn['prompt']}\n"
        fresh = Engine(loaded, cache_budget_bytes=64 * 2**20).session("scratch")
        scratch = fresh.generate(loaded.tokenizer.encode(prompt), params)
        assert scratch.prefill_tokens == scratch.prompt_tokens == len(loaded.tokenizer.encode(prompt))
        assert turn["promptTokens"] == scratch.prompt_tokens
        if language == "python":
            code = loaded.tokenizer.decode(scratch.token_ids, truncate_before_pattern=patterns)
        else:
            text = loaded.tokenizer.decode(scratch.token_ids)
            code = text[
                : min([m.start() for p in patterns if (m := re.search(p, text, re.M))], default=len(text))
            ]
        assert turn["code"] == code
        assert turn["stopReason"] == scratch.stop_reason
        history = prompt + code + "\n\n"
    # The program is what the document lacks: before the cursor + program == the final history.
    assert before + result["program"] == history.rstrip("\n") + "\n"


def test_history_is_never_prefilled_again(engine, loaded):
    result = syn.synthesize(engine, TURNS, greedy(), text_before="", language_id="python")
    turns = result["turns"]
    assert turns[0]["prefillTokens"] == turns[0]["promptTokens"]
    for prev, turn in zip(turns, turns[1:], strict=False):
        comment = len(loaded.tokenizer.encode(f"# {turn['prompt']}\n"))
        # The previous prompt is reused whole; what is prefilled is the new comment line plus the previous
        # turn's code where its generated ids differ from the canonical tokenization of its text.
        assert turn["reusedTokens"] >= prev["promptTokens"]
        assert turn["prefillTokens"] <= comment + prev["tokens"] + 2
    final_prompt = result["promptTokens"]
    assert final_prompt == turns[-1]["promptTokens"]
    # Every prompt token is prefilled about once over the whole conversation, not once per turn.
    assert result["prefillTokens"] <= final_prompt + 2 * len(turns)
    assert result["prefillTokens"] < sum(t["promptTokens"] for t in turns)


def test_cancellation_returns_the_turns_finished_so_far(engine):
    done: list[int] = []
    result = syn.synthesize(
        engine, TURNS, greedy(), should_cancel=lambda: len(done) >= 2, on_turn=lambda k, t: done.append(k)
    )
    assert result["cancelled"] is True
    assert [t["prompt"] for t in result["turns"]] == TURNS[:2]
    assert result["program"].endswith(result["turns"][1]["code"].rstrip("\n") + "\n")


def test_conversation_turns_match_one_shot_synthesis(engine):
    one_shot = syn.synthesize(engine, TURNS[:3], greedy(), text_before="import os\n")
    store = syn.ConversationStore(idle_seconds=60)
    conv = store.add(syn.new_conversation(engine, "import os\n", "python", greedy()))
    codes = [conv.turn(t).code for t in TURNS[:3]]
    assert codes == [t["code"] for t in one_shot["turns"]]
    assert conv.program == one_shot["program"]
    assert engine.stats()["cached_tokens"][conv.session_key] >= one_shot["promptTokens"]
    store.end(conv.id).close()
    assert conv.session_key not in engine.stats()["cached_tokens"]


def test_store_caps_live_conversations(monkeypatch):
    monkeypatch.setattr(syn, "MAX_CONVERSATIONS", 2)
    store = syn.ConversationStore()
    a = store.add(syn.new_conversation(FakeEngine(), "", "python", None))
    store.add(syn.new_conversation(FakeEngine(), "", "python", None))
    with pytest.raises(SynthesisError, match="2 synthesis conversations are open"):
        store.add(syn.new_conversation(FakeEngine(), "", "python", None))
    store.end(a.id)
    store.add(syn.new_conversation(FakeEngine(), "", "python", None))
