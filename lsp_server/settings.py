"""Server settings from one table: name, type, default, bounds, one line of doc per key.

The `Settings` dataclass, the validation (cattrs, key by key: a bad value is reported with its key and the
previous value kept), docs/SETTINGS.md's table and VS Code's `contributes.configuration` all come from TABLE;
`python -m lsp_server.settings --write` regenerates the two files and tests/test_settings.py checks them.

Settings come from `initializationOptions` and `workspace/didChangeConfiguration`, either flat or under a
`codegen` section.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cattrs

from lsp_server.constants import DEFAULT_MODEL, FIM_MODES, FIM_SUFFIX_TOKENS, MODES, PROSE_LANGUAGES

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
LOG_LEVELS = ("error", "warning", "info", "debug")
MIN_CONTEXT_WINDOW = 2  # one prompt token and one new token (the completer halves maxNewTokens to fit)


def default_modes() -> dict[str, str]:
    """Block mode for code, sentence mode for prose."""
    return {"*": "block", **{lang: "sentence" for lang in PROSE_LANGUAGES}}


@dataclass(frozen=True)
class Option:
    """One row of the settings table."""

    name: str  # camelCase, as clients spell it
    type: Any  # what cattrs structures the value into
    default: Any
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # the lower bound itself is excluded
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None  # further validation / normalisation after structuring
    schema: dict | None = None  # VS Code's JSON schema, where the type alone does not give it


def _device(v: str) -> str:
    """A device this machine has (cuda, cuda:N, mps are checked against torch)."""
    if not DEVICE_RE.match(v):
        raise ValueError(f"{v!r} is not valid (expected auto, cpu, cuda, cuda:N or mps)")
    kind, _, index = v.partition(":")
    if kind == "cuda":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= n:
            raise ValueError(f"{v!r} is not available on this machine ({n} CUDA devices)")
    if kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError("'mps' is not available on this machine")
    return v


def _window(v: int) -> int:
    if 0 < v < MIN_CONTEXT_WINDOW:
        raise ValueError(
            f"{v} cannot hold a prompt and a completion: use 0 (the model's window) "
            f"or at least {MIN_CONTEXT_WINDOW} tokens"
        )
    return v


def _modes(v: str | dict[str, str]) -> dict[str, str]:
    if isinstance(v, str):
        v = {"*": v}
    out = default_modes() if "*" not in v else {"*": "block"}
    for lang, mode in v.items():
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} for {lang!r} is not one of {', '.join(MODES)}")
        out[lang] = mode
    return out


def _patterns(v: dict[str, list[str]]) -> dict[str, list[str]]:
    for lang, pats in v.items():
        for p in pats:
            try:
                re.compile(p, re.MULTILINE)
            except re.error as e:
                raise ValueError(f"stop pattern {p!r} of {lang!r} is not a valid regex: {e}") from None
    return v


def _models(v: dict) -> dict[str, Any]:
    """{language: model name, or {"remote": {...}}} (a remote spec checked by lsp_server/remote.py)."""
    for lang, m in v.items():
        if not (isinstance(m, str) and m or isinstance(m, dict) and set(m) == {"remote"}):
            raise ValueError(f'{lang!r}: expected a model name or {{"remote": {{...}}}}, got {_show(m)}')
    return {
        k: m if isinstance(m, str) else {"remote": _remote(m["remote"], allow_off=False)}
        for k, m in v.items()
    }


def _remote(v: Any, allow_off: bool = True) -> dict:
    """{} (the local engine) or a remote server's spec, checked and normalised by RemoteSpec."""
    from lsp_server.remote import RemoteSpec

    return {} if v == {} and allow_off else RemoteSpec.from_dict(v).to_dict()


_REMOTE_SCHEMA = {
    "type": "object",
    "default": {},
    "properties": {
        "url": {"type": "string", "description": "OpenAI-compatible base URL, e.g. http://gpu-box:8000/v1"},
        "model": {"type": "string", "description": "The served model's name."},
        "apiKeyEnv": {"type": "string", "description": "Environment variable holding the API key."},
        "timeoutMs": {"type": "integer", "minimum": 100, "maximum": 600000, "default": 10000},
        "tokenizer": {"type": "string", "default": DEFAULT_MODEL},
    },
}


# Secrets by name, left out whatever `exclude` says (lsp_server/context_files.py); exclude's default.
SECRET_GLOBS = (".env*", "*.pem", "*.key", "id_rsa*", ".netrc", "credentials*", "*.p12", "*.pfx", ".git/**")
PROJECT_CONTEXT = {
    "enabled": True,
    "maxTokens": 1024,
    "maxChunks": 8,
    "exclude": list(SECRET_GLOBS),
    "remote": True,
}


def _project_context(v: dict) -> dict:
    """projectContext's keys checked one by one; the ones left out keep their defaults."""
    out = copy.deepcopy(PROJECT_CONTEXT)
    for key, value in v.items():
        if key not in out:
            raise ValueError(f"unknown key {key[:40]!r} (expected {', '.join(PROJECT_CONTEXT)})")
        if key in ("enabled", "remote") and not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {_show(value)}")
        if key in ("maxTokens", "maxChunks") and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20
        ):
            raise ValueError(f"{key}: expected an integer in [0, {1 << 20}], got {_show(value)}")
        if key == "exclude" and not (isinstance(value, list) and all(isinstance(p, str) for p in value)):
            raise ValueError(f"exclude: expected a list of glob patterns, got {_show(value)}")
        out[key] = value
    return out


_PROJECT_CONTEXT_SCHEMA = {
    "type": "object",
    "default": PROJECT_CONTEXT,
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "maxTokens": {"type": "integer", "minimum": 0, "default": PROJECT_CONTEXT["maxTokens"]},
        "maxChunks": {"type": "integer", "minimum": 0, "default": PROJECT_CONTEXT["maxChunks"]},
        "exclude": {
            "type": "array",
            "items": {"type": "string"},
            "default": list(SECRET_GLOBS),
            "description": "Glob patterns (workspace-relative; no `/`: a name at any depth) left out; the "
            "defaults are left out even when this list drops them",
        },
        "remote": {"type": "boolean", "default": True, "description": "false: no context to a team server"},
    },
}


_MODE_SCHEMA = {
    "type": "string",
    "enum": ["", *MODES],
    "default": "",
    "enumDescriptions": [
        "The server's default: block for code, sentence for prose",
        "The rest of the current line",
        "The current block (stops when indentation returns to the cursor's level)",
        "Only the token budget and the stop patterns limit it",
        "One sentence (prose)",
    ],
}

TABLE: tuple[Option, ...] = (
    Option("model", str, DEFAULT_MODEL, "hub id, local checkpoint directory, or `builtin`"),
    Option(
        "device", str, "auto", "`auto`, `cpu`, `cuda`, `cuda:N`, `mps` (one this machine has)", check=_device
    ),
    Option(
        "dtype",
        str,
        "auto",
        "weights; `int8` (CPU): int8 weights, float32 activations, float16 KV cache; `auto`: int8 on an "
        "x86 CPU with VNNI for CodeGen models, else float32 on CPU, bf16/fp16 on GPU (`codegen.status`: "
        "dtype, dtypeReason)",
        choices=DTYPES,
    ),
    Option("maxNewTokens", int, 64, "new-token budget of one completion", lo=1, hi=2048),
    Option("temperature", float, 0.0, "sampling temperature; 0 is greedy", lo=0.0, hi=5.0),
    Option("topP", float, 1.0, "nucleus sampling threshold", lo=0.0, hi=1.0, lo_open=True),
    Option(
        "contextWindow",
        int,
        0,
        "prompt + new tokens; 0 = the model's own window, else at least 2",
        lo=0,
        hi=1 << 20,
        check=_window,
    ),
    Option(
        "debounceMs", int, 0, "wait this long before computing; a newer keystroke supersedes", lo=0, hi=5000
    ),
    Option(
        "maxLatencyMs",
        int,
        1000,
        "time budget of one completion (prefill + decode; a team server's stream too); once spent it ends "
        "at the next line end (reason `time_budget`); 0 = none; why 1000: docs/PERFORMANCE.md",
        lo=0,
        hi=600_000,
    ),
    Option(
        "prefillOnOpen",
        bool,
        True,
        "prefill a document when it opens, unless that would evict another document's KV cache",
    ),
    Option(
        "prefetch",
        bool,
        True,
        "after an inline suggestion, compute the one that follows it as if accepted (lowest priority)",
    ),
    Option(
        "fim",
        str,
        "auto",
        "fill-in-the-middle (the text after the cursor in the prompt, in the model's template): `auto` (on "
        "when the model's tokenizer has FIM sentinels, unless its tokenizer_config.json sets "
        "`codegen_lsp_fim_auto: false`, as the built-in model's does: its FIM prompts do worse than plain "
        "ones), `on`, `off`; codegen.status shows the template",
        choices=FIM_MODES,
    ),
    Option(
        "fimSuffixTokens",
        int,
        FIM_SUFFIX_TOKENS,
        "token budget of the text after the cursor in a FIM prompt, cut at line ends (at most half the "
        "prompt); why this default: docs/PERFORMANCE.md",
        lo=0,
        hi=1 << 16,
    ),
    Option(
        "promptLookup",
        bool,
        True,
        "greedy completions check the continuation of a repeated n-gram in the same pass as the next token: "
        "the same text in fewer passes, on models where a pass of a few rows costs about a step "
        "(docs/PERFORMANCE.md)",
    ),
    Option(
        "tokenHealing",
        bool,
        True,
        "a prompt that ends in spaces (`return `) is sent without them and the completion made to start with "
        "them, as the model saw such text in training; local models only (a team server gets the text as is)",
    ),
    Option(
        "completionMode",
        str | dict[str, str],
        default_modes(),
        "`line`, `block`, `free`, `sentence`, or {language: mode}; a string applies to every language",
        check=_modes,
        schema=_MODE_SCHEMA,
    ),
    Option(
        "stopPatterns",
        dict[str, list[str]],
        {},
        "{language: [regex]} replacing that language's built-in list (`*` = every language)",
        check=_patterns,
    ),
    Option(
        "languageModels",
        dict,
        {},
        '{language: model}, e.g. a Japanese model for markdown; `{"remote": {...}}`: from a team server',
        check=_models,
    ),
    Option("cacheBudgetMb", int, 512, "KV-cache memory per model over all documents (MiB)", lo=1, hi=1 << 20),
    Option(
        "modelMemoryBudgetMb",
        int,
        0,
        "resident weights + allocated KV caches of the local models; least recently used models unload; "
        "0 = none",
        lo=0,
        hi=1 << 24,
    ),
    Option(
        "preparedCache",
        str,
        "",
        "directory of the prepared-weights cache (models in the engine's ready layout: a restart maps them "
        "instead of converting the checkpoint); empty = beside the hub cache, `off` = none",
    ),
    Option("logLevel", str, "info", "server log level", choices=LOG_LEVELS),
    Option(
        "remote",
        dict,
        {},
        "completions from a team server (vLLM), `{url, model, apiKeyEnv?, timeoutMs?, tokenizer?}`; "
        "`{}` = the local engine (docs/TEAM-SERVER.md)",
        check=_remote,
        schema=_REMOTE_SCHEMA,
    ),
    Option(
        "synthesisIdleSeconds",
        float,
        600.0,
        "idle time after which a synthesis conversation is freed",
        lo=0.1,
        hi=86400.0,
    ),
    Option(
        "projectContext",
        dict,
        dict(PROJECT_CONTEXT),
        "chunks of the workspace's other files before the current file (open documents, recent places, "
        "Python definitions): `{enabled, maxTokens, maxChunks, exclude, remote}`; `exclude`: globs left out "
        "(secrets by name always are); `remote: false`: none sent to a team server; docs/PERFORMANCE.md",
        check=_project_context,
        schema=_PROJECT_CONTEXT_SCHEMA,
    ),
)
OPTIONS = {o.name: o for o in TABLE}


def to_snake(name: str) -> str:
    """`maxNewTokens` -> `max_new_tokens` (the one camelCase converter)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def to_camel(name: str) -> str:
    """`max_new_tokens` -> `maxNewTokens`."""
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _field(o: Option):
    default = o.default
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default))
    return dataclasses.field(default=default)


class _Methods:
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


Settings = dataclasses.make_dataclass(
    "Settings", [(to_snake(o.name), o.type, _field(o)) for o in TABLE], bases=(_Methods,)
)
Settings.__doc__ = "Every user-visible option with its default (fields from TABLE)."


def _strict_int(v: Any, _type) -> int:
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)  # 5.0 from a JSON writer that prints every number as a float
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {_show(v)}")
    return v


def _strict_float(v: Any, _type) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {_show(v)}")
    if isinstance(v, int) and abs(v) > 1 << 53:
        raise ValueError(f"{_show(v)} is too large")
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v}")
    return float(v)


def _strict(kind: type, what: str):
    def hook(v: Any, _type):
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ValueError(f"expected {what}, got {_show(v)}")
        return v

    return hook


def _object(v: Any, type_) -> dict:
    """A JSON object, structured by cattrs' own dict hook (cattrs would call .items() on anything)."""
    if not isinstance(v, dict):
        raise ValueError(f"expected an object, got {_show(v)}")
    return _DICT_HOOKS[type_](v, type_) if type_ in _DICT_HOOKS else dict(v)


def _str_or_modes(v: Any, _type):
    return v if isinstance(v, str) else _object(v, dict[str, str])


def _show(v: Any) -> str:
    """A value for a message, cut to a readable length (a 5,000-digit number is not)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**30 else f"a {len(str(abs(v)))}-digit integer"
    return text if len(text) <= 80 else text[:77] + "..."


converter = cattrs.Converter(detailed_validation=True)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(bool, _strict(bool, "true or false"))
converter.register_structure_hook(str, _strict(str, "a string"))
_DICT_HOOKS = {t: converter.get_structure_hook(t) for t in (dict[str, str], dict[str, list[str]])}  # cattrs'
converter.register_structure_hook_func(lambda t: getattr(t, "__origin__", None) is dict, _object)
converter.register_structure_hook(str | dict[str, str], _str_or_modes)
converter.register_structure_hook(dict, lambda v, _t: _object(v, dict))  # any JSON object; checks follow


def _list_or_str(v: Any) -> Any:
    """A single stop pattern may be given as a string."""
    return {k: [p] if isinstance(p, str) else p for k, p in v.items()} if isinstance(v, dict) else v


def check(o: Option, value: Any) -> Any:
    """The validated value of one setting; ValueError with a message that does not repeat the key."""
    if o.name == "stopPatterns":
        value = _list_or_str(value)
    try:
        v = converter.structure(value, o.type)
    except (cattrs.BaseValidationError, ValueError, TypeError) as e:
        detail = "; ".join(cattrs.transform_error(e)) if isinstance(e, cattrs.BaseValidationError) else str(e)
        raise ValueError(detail) from None
    if isinstance(v, str) and o.type is str:
        v = v.strip()
        if not v:
            raise ValueError("expected a non-empty string")
    if o.choices:
        if v.lower() not in o.choices:
            raise ValueError(f"{v!r} is not one of {', '.join(o.choices)}")
        v = v.lower()
    if o.lo is not None and (v < o.lo or (o.lo_open and v == o.lo) or v > o.hi):
        raise ValueError(f"{_show(v)} is out of range {_bounds(o)}")
    return o.check(v) if o.check else v


def _bounds(o: Option) -> str:
    return f"{'(' if o.lo_open else '['}{o.lo}, {o.hi}]"


def unwrap(raw: Any) -> Any:
    """Accept `{"codegen": {...}}` as well as the flat object."""
    if isinstance(raw, dict) and isinstance(raw.get("codegen"), dict):
        return raw["codegen"]
    return raw


def update(previous, raw: Any) -> tuple[Any, list[str]]:
    """Apply camelCase `raw` over `previous`; return the new settings and one message per rejected key."""
    raw = unwrap(raw)
    if raw is None:
        return previous, []
    if not isinstance(raw, dict):
        return previous, [
            f"settings must be an object, got {type(raw).__name__}; keeping the previous settings"
        ]
    if raw and not any(k in OPTIONS for k in raw):
        return previous, []  # another extension's section: nothing for us
    changes: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        o = OPTIONS.get(key)
        if o is None:
            errors.append(f"unknown setting {key[:80]!r} ignored")
        elif value is not None:
            try:
                changes[to_snake(key)] = check(o, value)
            except ValueError as e:
                old = getattr(previous, to_snake(key))
                errors.append(f"invalid setting {key}: {e}; keeping {_show(old)}")
    return dataclasses.replace(previous, **changes), errors


def camel_keys(d: dict[str, Any]) -> dict[str, Any]:
    """A dict's keys as the client spells them (`cache_bytes` -> `cacheBytes`); values stay as they are."""
    return {to_camel(k): v for k, v in d.items()}


def as_camel_dict(settings) -> dict[str, Any]:
    """The settings as the client would spell them (for codegen.status)."""
    return camel_keys(dataclasses.asdict(settings))
