"""The remote backend: an OpenAI-compatible /v1/completions server (vLLM serving a GPT-J export of CodeGen).

It answers like a local engine (`engine.session(key).generate(prompt, params, should_cancel)` ->
GenerationResult), so the completion path and synthesis do not know which one answers. The prompt is cut
exactly as for the local engine and sent as token ids (identical prompts; consecutive keystrokes share a
long token prefix, which vLLM's prefix cache reuses). The tokens stream back; our regex stop patterns are
applied to the stream, which is closed at the first match, on supersede or cancel (vLLM then aborts the
sequence). Any failure gives an empty result with stop reason `remote_unavailable`, never an exception.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.rules import StopReason, prompt_limit
from lsp_server.constants import DEFAULT_MODEL
from lsp_server.remote_stream import RemoteError, Streamed, stream_completion

log = logging.getLogger(__name__)

DEFAULT_TOKENIZER = DEFAULT_MODEL  # every CodeGen size shares this tokenizer
DEFAULT_WINDOW = 2048  # used when the server does not say its max_model_len
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "*.json"]


class RemoteSpecError(ValueError):
    """A `remote` setting that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class RemoteSpec:
    """Where completions come from: `{"url", "model", "apiKeyEnv"?, "timeoutMs"?, "tokenizer"?}`."""

    url: str
    model: str
    api_key_env: str | None = None
    timeout_ms: int = 10_000
    tokenizer: str = DEFAULT_TOKENIZER

    @classmethod
    def from_dict(cls, d: Any) -> RemoteSpec:
        """Validate the camelCase setting object."""
        if not isinstance(d, dict):
            raise RemoteSpecError(f"expected an object {{url, model, ...}}, got {d!r}")
        unknown = set(d) - {"url", "model", "apiKeyEnv", "timeoutMs", "tokenizer"}
        if unknown:
            raise RemoteSpecError(f"unknown field(s) {', '.join(sorted(unknown))}")
        url, model = d.get("url"), d.get("model")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url.strip()):
            raise RemoteSpecError(f"url must be an http(s) URL such as http://host:8000/v1, got {url!r}")
        if not isinstance(model, str) or not model.strip():
            raise RemoteSpecError(f"model must be the served model's name, got {model!r}")
        key_env = d.get("apiKeyEnv")
        if key_env is not None and (not isinstance(key_env, str) or not key_env.strip()):
            raise RemoteSpecError(f"apiKeyEnv must name an environment variable, got {key_env!r}")
        timeout = d.get("timeoutMs", 10_000)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 100 <= timeout <= 600_000:
            raise RemoteSpecError(f"timeoutMs must be an integer in [100, 600000], got {timeout!r}")
        tok = d.get("tokenizer", DEFAULT_TOKENIZER)
        if not isinstance(tok, str) or not tok.strip():
            raise RemoteSpecError(f"tokenizer must be a checkpoint directory or hub id, got {tok!r}")
        return cls(url.strip().rstrip("/"), model.strip(), key_env, timeout, tok.strip())

    def to_dict(self) -> dict:
        """The camelCase form (settings, codegen.status)."""
        d = {"url": self.url, "model": self.model, "timeoutMs": self.timeout_ms, "tokenizer": self.tokenizer}
        return d | ({"apiKeyEnv": self.api_key_env} if self.api_key_env else {})

    @property
    def name(self) -> str:
        return f"{self.model} @ {self.url}"


@dataclass
class RemoteConfig:
    """The few config fields the server side reads (window, ids)."""

    n_positions: int
    vocab_size: int
    eos_token_id: int | None
    bos_token_id: int | None


@dataclass
class RemoteLoaded:
    """What a ModelEntry's `loaded` offers, for a remote model."""

    name: str
    config: RemoteConfig
    tokenizer: Any
    path: str = ""
    family: str = "remote"


def load_tokenizer_for(name: str):
    """The tokenizer of a checkpoint directory, `builtin`, or a hub id (tokenizer files only)."""
    from inference import hub
    from tokenizer import load_tokenizer

    if name == hub.BUILTIN:
        return load_tokenizer(hub.builtin_dir())
    local = Path(name).expanduser()
    if local.is_dir():
        return load_tokenizer(local)
    from huggingface_hub import snapshot_download

    kw = dict(cache_dir=hub.hf_cache_dir(), allow_patterns=TOKENIZER_FILES)
    try:
        path = snapshot_download(name, local_files_only=True, **kw)
    except Exception:
        if hub.hf_offline():
            raise
        path = snapshot_download(name, **kw)
    return load_tokenizer(path)


def literal_stops(patterns: Sequence[str]) -> list[str]:
    """The stop regexes that are plain literals (e.g. re.escape('<|endoftext|>'), '\\n\\n\\n'), as strings
    the server can stop on itself; anchored or other patterns are applied to the stream here."""
    out = []
    for p in patterns:
        if re.fullmatch(r"(?:\\[^A-Za-z0-9]|\\n|\\t|[^.^$*+?{}\[\]\\|()])+", p):
            s = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), p)
            if re.fullmatch(p, s):
                out.append(s)
    return out


def _client_module():
    try:
        import httpx2 as httpx  # what huggingface_hub >= 1.x brings
    except ImportError:  # pragma: no cover - older huggingface_hub brings httpx
        import httpx
    return httpx


@dataclass
class RemoteState:
    """Up or down, and why (codegen.status)."""

    up: bool = True
    outages: int = 0
    last_error: str | None = None
    requests: int = 0
    closed_early: int = 0  # streams closed by a stop pattern, supersede or cancel
    cancelled: int = 0  # streams closed by a supersede or cancel
    failures: int = 0


class RemoteEngine:
    """Engine-shaped client of one remote model; one HTTP connection pool, used from the worker thread."""

    heals = False  # the prompt goes as typed: the server cannot be made to start with given text

    def __init__(self, spec: RemoteSpec, tokenizer):
        httpx = _client_module()
        self.spec = spec
        self.httpx = httpx
        headers = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            else:
                log.warning(
                    "remote: environment variable %s is not set; sending no API key", spec.api_key_env
                )
        t = spec.timeout_ms / 1000
        self.client = httpx.Client(
            base_url=spec.url,
            headers=headers,
            timeout=httpx.Timeout(t, connect=min(t, 5.0)),
        )
        self.state = RemoteState()
        window = self.server_window()
        vocab = getattr(tokenizer, "vocab_size", None) or 1 << 31
        eos = getattr(tokenizer, "eos_token_id", None)
        self.loaded = RemoteLoaded(spec.name, RemoteConfig(window, vocab, eos, eos), tokenizer, spec.url)
        self.pool = _NoCache()

    def server_window(self) -> int:
        """The served model's max_model_len (GET /models), or DEFAULT_WINDOW when it does not say."""
        try:
            r = self.client.get("/models")
            r.raise_for_status()
            for m in r.json().get("data", []):
                if m.get("id") == self.spec.model and isinstance(m.get("max_model_len"), int):
                    return m["max_model_len"]
            log.warning(
                "remote: %s does not list model %r with a max_model_len", self.spec.url, self.spec.model
            )
        except Exception as exc:
            log.warning(
                "remote: cannot read %s/models (%s); assuming %d positions",
                self.spec.url,
                exc,
                DEFAULT_WINDOW,
            )
        return DEFAULT_WINDOW

    def session(self, key: Hashable) -> RemoteSession:
        return RemoteSession(self, key)

    def prompt_limit(self, max_new_tokens: int) -> int:
        """Most prompt tokens a request takes (the local engine's rule, on the served window)."""
        return prompt_limit(self.loaded.config.n_positions, max_new_tokens)

    def generate(self, key, prompt, params=None, should_cancel=None):
        """Shorthand for session(key).generate(...); a text is encoded whole (never cut)."""
        ids = self.loaded.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        return self.session(key).generate(ids, params, should_cancel)

    def drop_session(self, key: Hashable) -> None:
        """Nothing is kept per document here: the server's prefix cache is shared."""

    def try_drop_session(self, key: Hashable) -> bool:
        """Nothing to drop: done at once."""
        return True

    def clear_cache(self) -> None:
        """Nothing to free on this side."""

    def close(self) -> None:
        self.client.close()

    def stats(self) -> dict:
        """What codegen.status shows about the remote model."""
        s = self.state
        return {
            "remote": self.spec.to_dict(),
            "state": "up" if s.up else "down",
            "lastError": s.last_error,
            "outages": s.outages,
            "requests": s.requests,
            "failures": s.failures,
            "closedEarly": s.closed_early,
            "cancelled": s.cancelled,
            "context_window": self.loaded.config.n_positions,
        }

    def note(self, error: str | None) -> bool:
        """Record the outcome of a request; True when it starts an outage (tell the user once)."""
        s = self.state
        s.requests += 1
        if error is None:
            if not s.up:
                log.info("remote: %s is back", self.spec.url)
            s.up = True
            return False
        s.failures += 1
        s.last_error = error
        started = s.up
        if started:
            s.outages += 1
        s.up = False
        return started


class _NoCache:
    """The local engine's cache pool, as seen by prefill-on-open: never room (the server has its own)."""

    def has_room_for(self, key) -> bool:
        return False


class RemoteSession:
    """One request's view of the remote engine (the local Session's generate())."""

    def __init__(self, engine: RemoteEngine, key: Hashable):
        self.engine = engine
        self.key = key

    def prefill(self, prompt, should_cancel=None, chunk: int = 0) -> int:
        return 0

    def generate(
        self,
        prompt: Sequence[int],
        params=None,
        should_cancel: Callable[[], bool] | None = None,
    ):
        """Stream a completion of the token ids `prompt` -> GenerationResult; never raises for the server's
        faults (stop reason REMOTE_UNAVAILABLE instead). A prompt over prompt_limit() is refused (ValueError),
        as the local session refuses it."""
        from inference.generate import GenerationParams

        params = params or GenerationParams()
        eng, t0 = self.engine, time.perf_counter()
        cfg = eng.loaded.config
        if isinstance(prompt, str):
            raise TypeError("RemoteSession.generate takes token ids; encode (and cut) the text first")
        if len(prompt) > (limit := eng.prompt_limit(params.max_new_tokens)):
            raise ValueError(f"the prompt has {len(prompt)} tokens; the remote window takes at most {limit}")
        ids = list(prompt) or [cfg.bos_token_id if cfg.bos_token_id is not None else 0]
        body = request_body(eng.spec.model, ids, params, cfg.n_positions)
        try:
            deadline = t0 + params.max_latency_ms / 1e3 if params.max_latency_ms > 0 else None
            out = stream_completion(eng, body, params.stop_patterns, should_cancel, deadline)
            error = None
        except RemoteError as exc:
            out, error = Streamed(), str(exc)
        new_outage = eng.note(error)
        if error:
            log.warning("remote completion failed: %s", error)
        reason = StopReason.REMOTE_UNAVAILABLE if error else out.reason
        if reason == StopReason.MAX_TOKENS and body["max_tokens"] < params.max_new_tokens:
            reason = StopReason.CONTEXT_FULL
        return result_of(
            out, ids, reason, t0, {"remote_error": error, "new_outage": new_outage} if error else {}
        )


def result_of(out: Streamed, ids: list[int], reason, t0: float, extra: dict):
    """The GenerationResult of one stream (times since `t0`; the first chunk's time counts as prefill)."""
    from inference.generate import GenerationResult

    total = (time.perf_counter() - t0) * 1e3
    first = out.first_ms or total
    return GenerationResult(
        text=out.text,
        token_ids=out.token_ids,
        stop_reason=reason,
        prompt_tokens=len(ids),
        reused_tokens=out.cached_tokens,
        prefill_tokens=len(ids) - out.cached_tokens,
        prefill_ms=first,
        decode_ms=total - first,
        total_ms=total,
        decode_steps=len(out.token_ids),
        extra=extra,
    )


def request_body(model: str, ids: list[int], params, capacity: int) -> dict:
    """The /completions request: the prompt as token ids, streamed, with the literal stops."""
    body = {
        "model": model,
        "prompt": ids,
        "max_tokens": min(params.max_new_tokens, capacity - len(ids)),
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # decoded here, like the local engine's ids
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop_ids:  # a FIM template's end tokens (vLLM's stop_token_ids)
        body["stop_token_ids"] = list(params.stop_ids)
    stops = literal_stops([p.pattern for p in params.stop_patterns])
    if stops:
        body["stop"] = stops
    return body
