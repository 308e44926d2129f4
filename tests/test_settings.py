"""Settings: defaults, the camelCase converter, validation that keeps the previous value, and the one table
that docs/SETTINGS.md, VS Code's package.json and settings.ts agree with."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lsp_server import settings_docs
from lsp_server.settings import TABLE, Settings, as_camel_dict, to_camel, to_snake, update

NUMERIC = [o.name for o in TABLE if o.type in (int, float)]


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two CUDA devices (validation asks torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_defaults():
    s = Settings()
    assert s.model == "Salesforce/codegen-350M-mono"
    assert s.mode_for("python") == "block"
    assert s.mode_for("markdown") == s.mode_for("plaintext") == s.mode_for("restructuredtext") == "sentence"
    assert s.model_for("python") == s.model


@pytest.mark.parametrize(
    ("camel", "snake"), [("maxNewTokens", "max_new_tokens"), ("topP", "top_p"), ("model", "model")]
)
def test_case_conversion(camel, snake):
    assert to_snake(camel) == snake
    assert to_camel(snake) == camel


def test_update_accepts_flat_and_sectioned(two_gpus):
    s, errors = update(Settings(), {"maxNewTokens": 12, "temperature": 0.2, "topP": 0.9})
    assert errors == [] and (s.max_new_tokens, s.temperature, s.top_p) == (12, 0.2, 0.9)
    s, errors = update(Settings(), {"codegen": {"device": "cuda:1", "dtype": "BFloat16"}})
    assert errors == [] and (s.device, s.dtype) == ("cuda:1", "bfloat16")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"maxNewTokens": 0}, "max_new_tokens"),
        ({"maxNewTokens": "many"}, "max_new_tokens"),
        ({"maxNewTokens": True}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"topP": 0}, "top_p"),
        ({"device": "gpu"}, "device"),
        ({"dtype": "int4"}, "dtype"),
        ({"contextWindow": 1}, "context_window"),
        ({"completionMode": 3}, "completion_mode"),
        ({"languageModels": ["x"]}, "language_models"),
        ({"completionMode": "paragraph"}, "completion_mode"),
        ({"stopPatterns": {"python": ["("]}}, "stop_patterns"),
        ({"stopPatterns": ["x"]}, "stop_patterns"),
        ({"languageModels": {"markdown": 3}}, "language_models"),
        ({"model": ""}, "model"),
        ({"logLevel": "loud"}, "log_level"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else next(iter(v)) + "=" + repr(next(iter(v.values()))),
)
def test_invalid_value_is_reported_and_previous_kept(raw, field):
    prev = Settings(max_new_tokens=20)
    s, errors = update(prev, {**raw, "debounceMs": 5})
    assert len(errors) == 1 and to_camel(field) in errors[0]
    assert getattr(s, field) == getattr(prev, field)
    assert s.debounce_ms == 5  # the valid key next to it still applies


def test_unknown_key_and_non_object():
    s, errors = update(Settings(), {"maxTokens": 3, "model": "m"})
    assert errors and "maxTokens" in errors[0] and s.model == "m"
    assert update(Settings(), {"python": {"analysis": 1}}) == (Settings(), [])  # another extension's section
    s, errors = update(Settings(), "nonsense")
    assert errors and s == Settings()
    assert update(Settings(), None) == (Settings(), [])


def test_completion_mode_forms():
    s, _ = update(Settings(), {"completionMode": "line"})
    assert s.mode_for("python") == s.mode_for("markdown") == "line"
    s, _ = update(Settings(), {"completionMode": {"python": "free"}})
    assert (
        s.mode_for("python") == "free"
        and s.mode_for("go") == "block"
        and s.mode_for("markdown") == "sentence"
    )


def test_language_models_and_camel_dict():
    s, _ = update(Settings(), {"languageModels": {"markdown": "/models/ja"}})
    assert s.model_for("markdown") == "/models/ja" and s.model_for("python") == s.model
    d = as_camel_dict(s)
    assert d["languageModels"] == {"markdown": "/models/ja"} and "maxNewTokens" in d


def test_prefill_on_open_takes_a_boolean_only():
    s, errors = update(Settings(), {"prefillOnOpen": "yes"})
    assert s.prefill_on_open is True and errors and "prefillOnOpen" in errors[0]
    s, errors = update(s, {"prefillOnOpen": False})
    assert s.prefill_on_open is False and not errors


@pytest.mark.parametrize(
    "value", [1e999, float("nan"), -1e999, 2**64, 10**5000], ids=["inf", "nan", "-inf", "2^64", "5000-digits"]
)
@pytest.mark.parametrize("key", NUMERIC)
def test_non_finite_and_huge_numbers_are_rejected_with_the_key(key, value):
    """17.5: 1e999 (infinity) raised OverflowError naming no key, and lost the valid keys beside it."""
    other = "temperature" if key != "temperature" else "topP"
    s, errors = update(Settings(), {key: value, other: 0.5})
    assert len(errors) == 1 and errors[0].startswith(f"invalid setting {key}:"), errors
    assert len(errors[0]) < 300  # a 5,000-digit number is not repeated back
    assert getattr(s, to_snake(key)) == getattr(Settings(), to_snake(key))
    assert getattr(s, to_snake(other)) == 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_device_this_machine_lacks_is_rejected(device):
    """17.5: `cuda` without a GPU was accepted; the model was unloaded, every completion empty."""
    s, errors = update(Settings(device="cpu"), {"device": device})
    assert s.device == "cpu" and len(errors) == 1 and "device" in errors[0] and "not available" in errors[0]


def test_mps_off_apple_silicon_is_rejected():
    s, errors = update(Settings(), {"device": "mps"})
    assert (s.device == "mps") == torch.backends.mps.is_available()
    assert bool(errors) != torch.backends.mps.is_available()


def test_context_window_bounds():
    assert update(Settings(), {"contextWindow": 2})[0].context_window == 2
    assert update(Settings(), {"contextWindow": 0})[0].context_window == 0
    _, errors = update(Settings(), {"contextWindow": 1})
    assert "at least 2" in errors[0]


def test_integral_floats_are_integers_and_fractions_are_not():
    assert update(Settings(), {"maxNewTokens": 12.0}) == (Settings(max_new_tokens=12), [])
    _, errors = update(Settings(), {"maxNewTokens": 12.5})
    assert errors and "maxNewTokens" in errors[0]


def test_the_docs_table_is_generated_from_the_settings_table():
    text = settings_docs.DOC.read_text(encoding="utf-8")
    assert settings_docs.settings_doc(text) == text, "run: python -m lsp_server.settings_docs --write"
    for o in TABLE:
        assert f"| `{o.name}` |" in text


def test_vscode_configuration_is_generated_from_the_settings_table():
    text = settings_docs.PACKAGE.read_text(encoding="utf-8")
    assert settings_docs.package_json(text) == text, "run: python -m lsp_server.settings_docs --write"
    props = json.loads(text)["contributes"]["configuration"]["properties"]
    assert props["codegenLsp.maxNewTokens"]["maximum"] == 2048
    assert props["codegenLsp.temperature"]["maximum"] == 5
    assert "codegenLsp.synthesisIdleSeconds" in props


def test_vscode_sends_every_server_setting():
    """editors/vscode/src/settings.ts lists the table keys: scalars always, objects when set."""
    ts = (settings_docs.ROOT / "editors/vscode/src/settings.ts").read_text(encoding="utf-8")

    def names(const: str) -> list[str]:
        body = re.search(rf"export const {const} = \[(.*?)\] as const", ts, re.S).group(1)
        return re.findall(r'"(\w+)"', body)

    scalars = [o.name for o in TABLE if o.type in settings_docs.SCALARS]
    assert names("SCALAR_SETTINGS") == scalars
    assert names("OPTIONAL_SETTINGS") == [o.name for o in TABLE if o.type not in settings_docs.SCALARS]


def test_settings_fields_follow_the_table():
    assert [to_camel(f) for f in as_camel_dict(Settings())] == [o.name for o in TABLE]
    assert as_camel_dict(Settings()) == {o.name: o.default for o in TABLE}


@pytest.mark.parametrize("doc", ["editors/nvim/doc/codegen_lsp.txt", "editors/vscode/README.md", "README.md"])
def test_editor_docs_name_every_setting(doc):
    text = (settings_docs.ROOT / doc).read_text(encoding="utf-8")
    assert [o.name for o in TABLE if not re.search(rf"`(codegenLsp\.)?{o.name}`", text)] == []
