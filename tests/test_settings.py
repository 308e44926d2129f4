"""Settings: defaults, the camelCase converter, validation that keeps the previous value."""

from __future__ import annotations

import pytest

from lsp_server.settings import Settings, as_camel_dict, to_camel, to_snake, update


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


def test_update_accepts_flat_and_sectioned():
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
