"""Model manager: per-language map, lazy load, LRU unloading within the memory budget, built-in stand-in."""

from __future__ import annotations

import types as pytypes

import pytest
import torch

import inference.engine
import inference.loader
from inference.errors import ModelLoadError
from lsp_server.models import ModelManager, ModelUnavailable
from lsp_server.scheduler import Worker
from lsp_server.settings import Settings, update


class FakeLS:
    client_capabilities = None

    def __init__(self):
        self.shown = []

    def window_show_message(self, params):
        self.shown.append(params.message)


class FakeEngine:
    def __init__(self, loaded, cache_budget_bytes):
        self.loaded, self.cleared = loaded, 0
        self.pool = pytypes.SimpleNamespace(nbytes=min(cache_budget_bytes, 1 << 20))  # 1 MiB of KV in use

    def clear_cache(self):
        self.cleared += 1

    def stats(self):
        return {}


@pytest.fixture
def loads(monkeypatch):
    """Fake loader: every model is 1 MiB of float32 weights; names starting with 'bad' fail."""
    calls = []

    def load_model(name, device="cpu", dtype="float32", progress=None, allow_fallback=True, **kwargs):
        calls.append(name)
        if name.startswith("bad") or name == "builtin" and "no-builtin" in calls:
            raise ModelLoadError(f"model {name!r}: no such directory")
        progress and progress(f"loading {name}")
        model = torch.nn.Linear(512, 512, bias=False)  # 1 MiB
        return pytypes.SimpleNamespace(name=name, path=name, family="codegen", model=model, notice=None)

    monkeypatch.setattr(inference.loader, "load_model", load_model)
    monkeypatch.setattr(inference.engine, "Engine", FakeEngine)
    return calls


def manager(**raw):
    settings, errors = update(Settings(device="cpu", dtype="float32"), raw)
    assert not errors
    ls = FakeLS()
    return ModelManager(ls, Worker(), settings), ls


async def test_per_language_models_load_lazily_once(loads):
    m, _ = manager(model="code", languageModels={"markdown": "ja"})
    assert loads == []
    a = await m.get("python")
    b = await m.get("go")
    c = await m.get("markdown")
    assert a is b and a.name == "code" and c.name == "ja" and loads == ["code", "ja"]
    assert m.loaded_for("markdown") is c


async def test_lru_unloading_within_the_memory_budget(loads):
    # each model: 1 MiB of resident weights + 1 MiB of KV cache in use; 5 MiB fit two models
    m, _ = manager(
        model="a", languageModels={"markdown": "b", "rst": "c"}, cacheBudgetMb=1, modelMemoryBudgetMb=5
    )
    await m.get("python")
    await m.get("markdown")
    await m.get("python")  # "a" is now more recent than "b"
    await m.get("rst")
    assert sorted(k[0] for k in m.entries) == ["a", "c"]
    await m.get("markdown")  # loads again, evicting the least recently used ("a")
    assert sorted(k[0] for k in m.entries) == ["b", "c"] and loads.count("b") == 2


async def test_failed_model_falls_back_to_builtin_and_says_so_once(loads):
    m, ls = manager(model="bad-path")
    e1 = await m.get("python")
    e2 = await m.get("python")
    assert e1 is e2 and e1.name == "builtin" and e1.stands_in_for == "bad-path"
    assert len(ls.shown) == 1 and "bad-path" in ls.shown[0] and "built-in" in ls.shown[0]
    assert loads == ["bad-path", "builtin"]  # the failure is remembered, not retried per keystroke


async def test_status_at_the_end_of_a_load_shows_the_model_and_what_it_stands_in_for(loads, monkeypatch):
    # Editors refresh their status when a load's progress ends: by then the status must be complete.
    import lsp_server.models

    m, _ = manager(model="bad-path")
    seen = []
    monkeypatch.setattr(lsp_server.models.Progress, "end", lambda self, message="": seen.append(m.status()))
    await m.get("python")
    assert seen[0] == []  # the configured model failed
    assert [(s["name"], s["standsInFor"]) for s in seen[1]] == [("builtin", "bad-path")]


async def test_no_model_at_all_is_a_clear_error(loads):
    loads.append("no-builtin")
    m, _ = manager(model="bad-one")
    with pytest.raises(ModelUnavailable, match="bad-one.*built-in model failed too"):
        await m.get("python")


async def test_settings_change_unloads_unused_models_and_retries_failures(loads):
    m, _ = manager(model="a", languageModels={"markdown": "b"})
    await m.get("python")
    await m.get("markdown")
    settings, _ = update(m.settings, {"languageModels": {}})
    m.update_settings(settings)
    assert [k[0] for k in m.entries] == ["a"]


async def test_a_stand_in_chosen_in_the_settings_no_longer_stands_in(loads):
    m, _ = manager(model="bad-path")
    await m.get("python")
    settings, _ = update(m.settings, {"model": "builtin"})
    m.update_settings(settings)
    entry = await m.get("python")
    assert loads == ["bad-path", "builtin"] and entry.stands_in_for is None
    assert [s["standsInFor"] for s in m.status()] == [None]
