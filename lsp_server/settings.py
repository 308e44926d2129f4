"""Server settings: one dataclass with defaults, one camelCase converter, validation that keeps old values.

Every key, its type, default and meaning: docs/SETTINGS.md.

Settings come from `initializationOptions` and `workspace/didChangeConfiguration`, either flat or under a
`codegen` section. An invalid value is reported and the previous value is kept.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

MODES = ("line", "block", "free", "sentence")
PROSE_LANGUAGES = ("markdown", "plaintext", "restructuredtext")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
LOG_LEVELS = ("error", "warning", "info", "debug")


def default_modes() -> dict[str, str]:
    """Block mode for code, sentence mode for prose."""
    return {"*": "block", **{lang: "sentence" for lang in PROSE_LANGUAGES}}


@dataclass
class Settings:
    """Every user-visible option with its default."""

    model: str = "Salesforce/codegen-350M-mono"
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    context_window: int = 0
    debounce_ms: int = 0
    max_latency_ms: int = 1000  # 0 = none; past it a completion ends at its next line end (time_budget)
    prefill_on_open: bool = True
    prefetch: bool = True
    completion_mode: dict[str, str] = field(default_factory=default_modes)
    stop_patterns: dict[str, list[str]] = field(default_factory=dict)
    language_models: dict[str, Any] = field(default_factory=dict)  # name, or {"remote": {...}}
    cache_budget_mb: int = 512
    model_memory_budget_mb: int = 0
    log_level: str = "info"
    synthesis_idle_seconds: float = 600.0
    remote: dict = field(default_factory=dict)  # {} = local; else {"url", "model", ...}: lsp_server/remote.py

    def mode_for(self, language: str) -> str:
        """The completion mode of one language."""
        return self.completion_mode.get(language, self.completion_mode.get("*", "block"))

    def model_for(self, language: str) -> str:
        """The local model name that serves one language (when it is not served remotely)."""
        m = self.language_models.get(language, self.model)
        return m if isinstance(m, str) else self.model

    def remote_for(self, language: str) -> dict | None:
        """The remote server that serves one language, or None when a local model does."""
        m = self.language_models.get(language)
        if isinstance(m, dict):
            return m["remote"]
        return None if m is not None else (self.remote or None)


def to_snake(name: str) -> str:
    """`maxNewTokens` -> `max_new_tokens` (the one camelCase converter)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def to_camel(name: str) -> str:
    """`max_new_tokens` -> `maxNewTokens`."""
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _int(lo: int, hi: int | None = None):
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise ValueError(f"expected an integer, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"{v} is out of range [{lo}, {hi if hi is not None else 'inf'}]")
        return int(v)

    return check


def _float(lo: float, hi: float, lo_open: bool = False):
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected a number, got {v!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            raise ValueError(f"{v} is out of range {'(' if lo_open else '['}{lo}, {hi}]")
        return float(v)

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _choice(choices: tuple[str, ...] | None = None, pattern: re.Pattern | None = None):
    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"expected a non-empty string, got {v!r}")
        v = v.strip()
        if choices is not None and v.lower() not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        if pattern is not None and not pattern.match(v):
            raise ValueError(f"{v!r} is not valid (expected e.g. auto, cpu, cuda, cuda:0, mps)")
        return v.lower() if choices else v

    return check


def _modes(v: Any) -> dict[str, str]:
    if isinstance(v, str):
        v = {"*": v}
    if not isinstance(v, dict):
        raise ValueError(f"expected a mode name or an object {{language: mode}}, got {v!r}")
    out = default_modes() if "*" not in v else {lang: m for lang, m in default_modes().items() if lang == "*"}
    for lang, mode in v.items():
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} for {lang!r} is not one of {', '.join(MODES)}")
        out[str(lang)] = mode
    return out


def _patterns(v: Any) -> dict[str, list[str]]:
    if not isinstance(v, dict):
        raise ValueError(f"expected an object {{language: [regex, ...]}}, got {v!r}")
    out: dict[str, list[str]] = {}
    for lang, pats in v.items():
        if isinstance(pats, str):
            pats = [pats]
        if not isinstance(pats, list) or not all(isinstance(p, str) for p in pats):
            raise ValueError(f"stop patterns of {lang!r} must be a list of strings")
        for p in pats:
            try:
                re.compile(p, re.MULTILINE)
            except re.error as e:
                raise ValueError(f"stop pattern {p!r} of {lang!r} is not a valid regex: {e}") from None
        out[str(lang)] = list(pats)
    return out


def _models(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and (isinstance(m, str) and m or isinstance(m, dict) and set(m) == {"remote"})
        for k, m in v.items()
    ):
        raise ValueError(f'expected an object {{language: model or {{"remote": {{...}}}}}}, got {v!r}')
    return {
        k: m if isinstance(m, str) else {"remote": _remote(m["remote"], allow_off=False)}
        for k, m in v.items()
    }


def _remote(v: Any, allow_off: bool = True) -> dict:
    from lsp_server.remote import RemoteSpec

    return {} if v == {} and allow_off else RemoteSpec.from_dict(v).to_dict()


VALIDATORS = {
    "model": _choice(),
    "device": _choice(pattern=DEVICE_RE),
    "dtype": _choice(DTYPES),
    "max_new_tokens": _int(1, 2048),
    "temperature": _float(0.0, 5.0),
    "top_p": _float(0.0, 1.0, lo_open=True),
    "context_window": _int(0, 1 << 20),
    "debounce_ms": _int(0, 5000),
    "max_latency_ms": _int(0, 600_000),
    "prefill_on_open": _bool,
    "prefetch": _bool,
    "completion_mode": _modes,
    "stop_patterns": _patterns,
    "language_models": _models,
    "cache_budget_mb": _int(1, 1 << 20),
    "model_memory_budget_mb": _int(0, 1 << 24),
    "log_level": _choice(LOG_LEVELS),
    "synthesis_idle_seconds": _float(0.1, 86400.0),
    "remote": _remote,
}
assert set(VALIDATORS) == {f.name for f in dataclasses.fields(Settings)}


def unwrap(raw: Any) -> Any:
    """Accept `{"codegen": {...}}` as well as the flat object."""
    if isinstance(raw, dict) and isinstance(raw.get("codegen"), dict):
        return raw["codegen"]
    return raw


def update(previous: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """Apply camelCase `raw` over `previous`; return the new settings and one message per rejected key."""
    raw = unwrap(raw)
    if raw is None:
        return previous, []
    if not isinstance(raw, dict):
        return previous, [
            f"settings must be an object, got {type(raw).__name__}; keeping the previous settings"
        ]
    if raw and not any(to_snake(k) in VALIDATORS for k in raw):
        return previous, []  # another extension's section: nothing for us
    changes: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        name = to_snake(key)
        if name not in VALIDATORS:
            errors.append(f"unknown setting {key!r} ignored")
            continue
        if value is None:
            continue
        try:
            changes[name] = VALIDATORS[name](value)
        except ValueError as e:
            old = getattr(previous, name)
            errors.append(f"invalid setting {to_camel(name)}: {e}; keeping {old!r}")
    return dataclasses.replace(previous, **changes), errors


def as_camel_dict(settings: Settings) -> dict[str, Any]:
    """The settings as the client would spell them (for codegen.status)."""
    return {to_camel(k): v for k, v in dataclasses.asdict(settings).items()}
