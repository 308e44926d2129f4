"""The remote backend against a fake OpenAI-compatible streaming server: requests, stops, faults."""

from __future__ import annotations

import re
import time

import pytest

from inference.generate import GenerationParams
from inference.rules import line_end_after
from lsp_server import remote_stream
from lsp_server.prompt import prompt_ids
from lsp_server.remote import RemoteEngine, RemoteSpec, RemoteSpecError, literal_stops, load_tokenizer_for
from tests.checkpoints import CODEGEN_TOKENIZER_DIR
from tests.fake_openai import ENGINE_DEAD, FakeOpenAI
from tests.vllm_server import free_port

TOKENIZER = load_tokenizer_for(str(CODEGEN_TOKENIZER_DIR))
ANSWER = "    return a + b\n\n# done\nprint(1)\n" + "x = 1\n" * 100
PROMPT = "def add(a, b):\n"


@pytest.fixture
def fake():
    server = FakeOpenAI(TOKENIZER, TOKENIZER.encode(ANSWER))
    yield server
    server.stop()


def engine_for(url: str, **kw) -> RemoteEngine:
    spec = RemoteSpec.from_dict({"url": url, "model": "fake", "tokenizer": str(CODEGEN_TOKENIZER_DIR), **kw})
    return RemoteEngine(spec, TOKENIZER)


def test_literal_stops_are_sent_anchored_ones_stay_here():
    pats = [re.escape("<|endoftext|>"), "\n\n\n", "^#", "^'''", r"\n\s*\n", "'''"]
    assert literal_stops(pats) == ["<|endoftext|>", "\n\n\n", "'''"]


@pytest.mark.parametrize(
    "spec, error",
    [
        ({"model": "m"}, "url must be an http"),
        ({"url": "ftp://x", "model": "m"}, "url must be an http"),
        ({"url": "http://h:8000/v1"}, "model must be"),
        ({"url": "http://h:8000/v1", "model": "m", "timeoutMs": 5}, "timeoutMs"),
        ({"url": "http://h:8000/v1", "model": "m", "apiKeyEnv": ""}, "apiKeyEnv"),
        ({"url": "http://h:8000/v1", "model": "m", "colour": 1}, "unknown field"),
        ("http://h:8000/v1", "expected an object"),
    ],
    ids=[
        "no-url",
        "ftp-url",
        "no-model",
        "timeout-too-small",
        "empty-key-env",
        "unknown-field",
        "not-object",
    ],
)
def test_bad_spec(spec, error):
    with pytest.raises(RemoteSpecError, match=error):
        RemoteSpec.from_dict(spec)


def test_request_and_streamed_answer(fake, monkeypatch):
    monkeypatch.setenv("TEAM_KEY", "sekrit")
    eng = engine_for(fake.url, apiKeyEnv="TEAM_KEY")
    assert eng.loaded.config.n_positions == 512  # the server's max_model_len
    params = GenerationParams(max_new_tokens=12, temperature=0.2, top_p=0.9, stop_patterns=["\n\n\n", "^#"])
    r = eng.session("doc").generate(TOKENIZER.encode(PROMPT), params)
    body = fake.requests[-1]
    assert body["prompt"] == TOKENIZER.encode(PROMPT)  # the cut prompt, as token ids
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stream"]) == (12, 0.2, 0.9, True)
    assert body["stop"] == ["\n\n\n"] and body["model"] == "fake"
    assert fake.headers[-1]["Authorization"] == "Bearer sekrit"
    assert r.text == "    return a + b\n\n" and r.stop_reason == "stop_pattern"  # cut before "# done"
    assert r.prompt_tokens == len(body["prompt"]) and eng.state.up


def test_max_tokens_and_long_prompt_refused_like_the_local_session(fake):
    fake.max_model_len = 64
    eng = engine_for(fake.url)
    long_prompt = "".join(f"x{i} = {i}\n" for i in range(100))
    sent_before = len(fake.requests)
    with pytest.raises(ValueError, match="at most 56"):  # the engine's rule: 64 - 8
        eng.generate("doc", long_prompt, GenerationParams(max_new_tokens=8))
    assert len(fake.requests) == sent_before  # nothing sent
    ids, window = prompt_ids(long_prompt, TOKENIZER, eng.prompt_limit(8))  # the one cutter
    r = eng.session("doc").generate(ids, GenerationParams(max_new_tokens=8))
    sent = fake.requests[-1]["prompt"]
    assert sent == ids and window.start > 0
    assert len(sent) <= 64 - 8 and TOKENIZER.decode(sent).endswith("x99 = 99\n")
    assert r.stop_reason == "max_tokens" and len(r.token_ids) == 8
    assert r.text == TOKENIZER.decode(TOKENIZER.encode(ANSWER)[:8])


def test_eos_ends_the_text(fake):
    fake.tokens = TOKENIZER.encode("    pass") + [TOKENIZER.eos_token_id] + TOKENIZER.encode("junk")
    r = engine_for(fake.url).generate("doc", PROMPT, GenerationParams(max_new_tokens=20))
    assert r.text == "    pass" and r.stop_reason == "eos"


def test_regex_stop_closes_the_stream(fake):
    fake.delay_s = 0.02
    r = engine_for(fake.url).generate(
        "doc", PROMPT, GenerationParams(max_new_tokens=200, stop_patterns=["^#"])
    )
    assert r.stop_reason == "stop_pattern" and r.text == "    return a + b\n\n"
    wait_for(lambda: fake.disconnected)
    assert fake.disconnected == [True] and fake.sent[0] < 50  # the server saw the stream closed early


@pytest.mark.parametrize("budget_ms", [1, 150], ids=["spent-before-the-first-chunk", "spent-later"])
def test_latency_budget_ends_at_a_line_end_and_closes_the_stream(fake, budget_ms):
    """maxLatencyMs holds for a team server as for the local engine: once spent, the text ends at the next
    line end (stop reason time_budget) and the stream is closed, so the server aborts the sequence."""
    fake.delay_s = 0.02  # 50 tokens a second: the whole answer takes over 6 s
    r = engine_for(fake.url).generate(
        "doc", PROMPT, GenerationParams(max_new_tokens=300, max_latency_ms=budget_ms)
    )
    assert r.stop_reason == "time_budget" and r.total_ms >= budget_ms
    assert ANSWER.startswith(r.text) and ANSWER[len(r.text)] == "\n" and r.text.strip()
    # Tokens come >= 20 ms apart, so at most budget_ms // 20 had come when it was spent: the text ends at
    # the first line end after them (load only makes that fewer). 1 ms: the first line.
    came = TOKENIZER.decode(TOKENIZER.encode(ANSWER)[: budget_ms // 20])
    assert len(r.text) <= line_end_after(ANSWER, len(came))
    wait_for(lambda: fake.disconnected)
    assert fake.disconnected == [True] and fake.sent[0] < 100


def test_supersede_closes_the_stream(fake):
    fake.delay_s = 0.02
    t0, eng = time.monotonic(), engine_for(fake.url)
    r = eng.generate(
        "doc", PROMPT, GenerationParams(max_new_tokens=200), should_cancel=lambda: time.monotonic() - t0 > 0.2
    )
    assert r.stop_reason == "cancelled" and eng.stats()["cancelled"] == 1
    wait_for(lambda: fake.disconnected)
    assert fake.disconnected == [True] and fake.sent[0] < 100


def wait_for(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)


@pytest.mark.parametrize(
    "mode, error",
    [
        ("http500", "HTTP 500 .*boom"),
        ("malformed", "malformed stream"),
        ("bad_shape", "malformed stream"),
        ("bad_ids", "malformed stream"),
        ("not_sse", "malformed stream"),
        ("no_done", "without \\[DONE\\]"),
    ],
    ids=["http-500", "malformed-json", "malformed-usage", "token-id-not-int", "not-sse", "no-done"],
)
def test_server_faults_give_remote_unavailable(fake, mode, error):
    fake.mode = mode
    r = engine_for(fake.url).generate("doc", PROMPT, GenerationParams(max_new_tokens=5))
    assert r.stop_reason == "remote_unavailable" and r.text == ""
    assert re.search(error, r.extra["remote_error"])


def test_timeout_gives_remote_unavailable_quickly(fake):
    fake.mode, fake.delay_s = "slow", 3.0
    eng = engine_for(fake.url, timeoutMs=300)
    t0 = time.monotonic()
    r = eng.generate("doc", PROMPT, GenerationParams(max_new_tokens=5))
    assert time.monotonic() - t0 < 2.0  # bounded by timeoutMs, not by the server
    assert r.stop_reason == "remote_unavailable" and "timed out after 300 ms" in r.extra["remote_error"]


def test_a_server_stopped_mid_stream_is_noticed_within_a_second(fake):
    """Issue 24: a server that stops listening mid-stream is noticed within a second, not after timeoutMs."""
    # As vLLM stopped by SIGTERM: the open stream stays open, silent (tests/test_remote_vllm.py: a real one).
    fake.mode, fake.fault_after = "stop_listening", 5
    eng = engine_for(fake.url, timeoutMs=10000)
    r = eng.generate("doc", PROMPT, GenerationParams(max_new_tokens=50))
    noticed_s = time.monotonic() - fake.gone_at
    assert r.stop_reason == "remote_unavailable" and r.text == ""
    assert "went away mid-stream" in r.extra["remote_error"]
    assert noticed_s < 1.0, f"noticed {noticed_s:.2f} s after the server stopped listening"


def test_an_error_chunk_mid_stream_is_relayed(fake):
    """A server whose engine died mid-stream says so in the stream: its message is the error, nothing kept."""
    fake.mode, fake.fault_after = "engine_dead", 5
    r = engine_for(fake.url, timeoutMs=10000).generate("doc", PROMPT, GenerationParams(max_new_tokens=50))
    assert r.stop_reason == "remote_unavailable" and r.text == "" and fake.sent == [5]
    assert r.extra["remote_error"] == f"server error: {ENGINE_DEAD}"


def test_a_connection_reset_mid_stream_is_noticed_at_once(fake):
    """A killed process resets (or closes) its connections: the read fails at once."""
    fake.mode, fake.fault_after = "reset", 5
    t0 = time.monotonic()
    r = engine_for(fake.url, timeoutMs=10000).generate("doc", PROMPT, GenerationParams(max_new_tokens=50))
    assert r.stop_reason == "remote_unavailable" and time.monotonic() - t0 < 1.0


def test_a_silent_stream_from_a_listening_server_is_waited_for(fake, monkeypatch):
    """Silence alone is no outage: while the server accepts connections (busy), the stream goes on."""
    monkeypatch.setattr(remote_stream, "LIVENESS_S", 0.1)
    fake.delay_s = 0.35  # each token after over three times LIVENESS_S of silence
    r = engine_for(fake.url).generate("doc", PROMPT, GenerationParams(max_new_tokens=3))
    assert r.stop_reason == "max_tokens" and len(r.token_ids) == 3
    assert fake.connections >= 4  # the stream's and the checks made while it was silent (>= 1 per gap)


def test_refused_then_back_one_outage_message_each_time(fake):
    port = free_port()
    eng = engine_for(f"http://127.0.0.1:{port}/v1")
    assert eng.loaded.config.n_positions == 2048  # unreachable at start: the default window
    params = GenerationParams(max_new_tokens=5)
    first, second = eng.generate("d", PROMPT, params), eng.generate("d", PROMPT, params)
    assert first.stop_reason == second.stop_reason == "remote_unavailable"
    assert "ConnectError" in first.extra["remote_error"]
    assert (first.extra["new_outage"], second.extra["new_outage"]) == (True, False)
    assert eng.stats()["state"] == "down" and eng.stats()["outages"] == 1
    back = FakeOpenAI(TOKENIZER, TOKENIZER.encode(ANSWER), port=port)
    try:
        ok = eng.generate("d", PROMPT, params)
        assert ok.stop_reason == "max_tokens" and ok.text and eng.stats()["state"] == "up"
    finally:
        back.stop()
    again = eng.generate("d", PROMPT, params)
    assert again.extra["new_outage"] is True and eng.stats()["outages"] == 2


def test_settings_remote_and_per_language_remote():
    from lsp_server.settings import Settings, update

    spec = {"url": "http://gpu:8000/v1/", "model": "codegen-6B"}
    s, errors = update(Settings(), {"remote": spec, "languageModels": {"markdown": "builtin"}})
    assert errors == [] and s.remote == {
        "url": "http://gpu:8000/v1",
        "model": "codegen-6B",
        "timeoutMs": 10000,
        "tokenizer": "Salesforce/codegen-350M-mono",
    }
    assert s.remote_for("python") == s.remote and s.remote_for("markdown") is None
    assert s.model_for("markdown") == "builtin"
    s, errors = update(Settings(), {"languageModels": {"python": {"remote": spec}}})
    assert errors == [] and s.remote_for("python")["model"] == "codegen-6B" and s.remote_for("go") is None
    s2, errors = update(s, {"languageModels": {"python": {"remote": {}}}})
    assert s2 == s and "invalid setting languageModels" in errors[0]
    s3, errors = update(s, {"remote": {}})
    assert errors == [] and s3.remote == {}
