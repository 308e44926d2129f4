"""Model manager: per-language model map, lazy loading on first use with $/progress, LRU unloading
within `modelMemoryBudgetMb` (resident bytes), and a one-time message when the previous model or the built-in
one stands in for a model that failed (or would not fit in memory)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types

from inference.errors import ModelLoadError
from lsp_server.progress import Progress, show
from lsp_server.settings import Settings, camel_keys

log = logging.getLogger(__name__)
BUILTIN = "builtin"
REMOTE = "remote"  # the device of a model served by a remote server


class ModelUnavailable(Exception):
    """No model can serve a language; the message says why and what to change."""


@dataclass
class ModelEntry:
    """One loaded model with its engine (sessions keyed by document URI)."""

    name: str
    device: str
    dtype: str
    loaded: Any  # inference.loader.LoadedModel
    engine: Any  # inference.engine.Engine
    weight_bytes: int
    load_s: float
    last_used: float = field(default_factory=time.monotonic)
    stands_in_for: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, self.device, self.dtype)


def resolve_device(device: str) -> str:
    """`auto` -> cuda, mps or cpu (whichever exists)."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` -> bfloat16 (or float16) on a GPU; on CPU the loader decides (int8 or float32, by family)."""
    if dtype != "auto" or device == "cpu":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float16" if device == "mps" else "float32"


def _weight_bytes(model) -> int:
    from inference.memory import resident_bytes

    return resident_bytes(model)


def _cache_bytes(entry: ModelEntry) -> int:
    """The KV-cache bytes an engine holds now (0 for a remote one)."""
    pool = getattr(entry.engine, "pool", None)
    return int(getattr(pool, "nbytes", 0) or 0)


class ModelManager:
    """Loaded models by (name, device, dtype); loads run on the inference thread."""

    def __init__(self, ls, worker, settings: Settings) -> None:
        self.ls = ls
        self.worker = worker
        self.settings = settings
        self.entries: dict[tuple[str, str, str], ModelEntry] = {}
        self._loading: dict[tuple[str, str, str], asyncio.Future] = {}
        self.failures: dict[tuple[str, str, str], str] = {}  # not retried until the settings change
        self._told: set[str] = set()

    def key_for(self, name: str) -> tuple[str, str, str]:
        device = resolve_device(self.settings.device)
        return (name, device, resolve_dtype(self.settings.dtype, device))

    def key_of(self, language: str) -> tuple[str, str, str]:
        """The key of what serves `language`: a local model, or a remote server (device `remote`)."""
        remote = self.settings.remote_for(language)
        return remote_key(remote) if remote else self.key_for(self.settings.model_for(language))

    def update_settings(self, settings: Settings) -> None:
        """New settings: forget failures, unload models no language uses any more, resize the KV caches."""
        if settings.cache_budget_mb != self.settings.cache_budget_mb:
            self._resize_caches(settings.cache_budget_mb << 20)
        languages = {""} | set(self.settings.language_models) | set(settings.language_models)
        before = {lang: self.key_of(lang) for lang in languages}
        self.settings = settings
        self.failures.clear()
        self._told.clear()
        wanted = self._wanted()
        for key in list(self.entries):
            entry = self.entries[key]
            stand_in = entry.stands_in_for is not None and self.key_for(entry.stands_in_for) in wanted
            # the local models it served languages for, not loaded yet: it serves on until they are
            replaced_by = [
                k
                for lang, old in before.items()
                if old == key and (k := self.key_of(lang)) not in self.entries and k[1] != REMOTE
            ]
            if key in wanted:  # chosen now: it serves its own name (a failing model marks it again)
                entry.stands_in_for = None
            elif not stand_in and replaced_by and entry.device != REMOTE:
                entry.stands_in_for = replaced_by[0][0]
            elif not stand_in:
                self.unload(key)

    def _wanted(self) -> set:
        return {self.key_of("")} | {self.key_of(lang) for lang in self.settings.language_models}

    def _resize_caches(self, budget: int) -> None:
        """Every engine's cache pool to `budget` bytes, on the inference thread (it takes the engine lock)."""
        engines = [e.engine for e in self.entries.values() if hasattr(e.engine, "set_cache_budget")]
        if engines:
            off_loop(self.worker, lambda: [e.set_cache_budget(budget) for e in engines])  # local only

    def unload(self, key) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            log.info("unloading model %s (%s, %s)", *key)
            off_loop(self.worker, lambda: _free(entry))

    def loaded_for(self, language: str) -> ModelEntry | None:
        """The entry already serving `language`, without loading anything."""
        key = self.key_of(language)
        entry = self.entries.get(key)
        if entry is None:
            entry = next((e for e in self.entries.values() if e.stands_in_for == key[0]), None)
        return entry

    async def ready_for(self, language: str) -> ModelEntry | None:
        """The entry serving `language` once its load (if one is under way) ends; never starts a load."""
        entry = self.loaded_for(language)
        if entry is not None:
            return entry
        loading = self._loading.get(self.key_of(language))
        if loading is None:
            return None
        try:
            await asyncio.shield(loading)
        except Exception:  # the load failed: whoever asked for it reports that
            return None
        return self.loaded_for(language)

    async def get(self, language: str) -> ModelEntry:
        """The model for `language`, loading it (or the built-in stand-in) on first use."""
        key = self.key_of(language)
        name = key[0]
        try:
            entry = await self._get(key)
        except ModelUnavailable as e:
            previous = next((p for p in self.entries.values() if p.stands_in_for == name), None)
            if previous is not None and previous.name != BUILTIN:
                if name not in self._told:
                    self._told.add(name)
                    show(
                        self.ls, f"codegen: {e}. Keeping {previous.name} for now.", types.MessageType.Warning
                    )
                previous.last_used = time.monotonic()
                return previous
            if name == BUILTIN:
                raise
            try:
                entry = await self._get(self.key_for(BUILTIN), stands_in_for=name)
            except ModelUnavailable as e2:
                raise ModelUnavailable(f"{e}; the built-in model failed too: {e2}") from None
            if name not in self._told:
                self._told.add(name)
                show(
                    self.ls,
                    f"codegen: {e}. Using the built-in model instead; set `codegen.model` "
                    "(or `codegen.languageModels`) to a local checkpoint directory or a reachable hub id.",
                    types.MessageType.Warning,
                )
            entry.stands_in_for = name
        entry.last_used = time.monotonic()
        return entry

    async def _get(self, key, stands_in_for: str | None = None) -> ModelEntry:
        if key in self.entries:
            return self.entries[key]
        if key in self.failures:
            raise ModelUnavailable(self.failures[key])
        if key not in self._loading:
            self._loading[key] = asyncio.ensure_future(self._load(key, stands_in_for))
        try:
            return await asyncio.shield(self._loading[key])
        finally:
            if self._loading.get(key) is not None and self._loading[key].done():
                self._loading.pop(key, None)

    async def _load(self, key, stands_in_for: str | None = None) -> ModelEntry:
        from inference.engine import Engine
        from inference.loader import load_model

        name, device, dtype = key
        detail = "remote server" if device == REMOTE else f"{device}, {dtype}"
        progress = await Progress(self.ls, f"codegen: loading {name}").begin(detail)

        def on_progress(*args, **kwargs) -> None:
            progress.report(" ".join(str(a) for a in (*args, *kwargs.values()) if a is not None))

        available, on_fits = self._memory_hooks(name)

        def load() -> ModelEntry:
            t0 = time.perf_counter()
            if device == REMOTE:
                return remote_entry(json.loads(dtype), t0)
            budget = self.settings.cache_budget_mb << 20
            loaded = load_model(
                name,
                device=device,
                dtype=dtype,
                progress=on_progress,
                allow_fallback=False,
                prepared_cache=self.settings.prepared_cache,
                kv_bytes=budget,
                available=available,
                on_fits=on_fits,
            )
            engine = Engine(loaded, cache_budget_bytes=budget)
            return ModelEntry(
                name, device, dtype, loaded, engine, _weight_bytes(loaded.model), time.perf_counter() - t0
            )

        try:
            entry = await self.worker.call(load)
        except Exception as e:
            message = f"could not load model {name!r}: {e}"
            if not _is_load_error(e):
                log.exception("loading %s failed", name)
            self.failures[key] = message
            progress.end("failed")
            raise ModelUnavailable(message) from None
        entry.stands_in_for = stands_in_for
        self.entries[key] = entry  # before the progress ends: a client then asking for the status sees it
        self._drop_replaced(name)
        self._enforce_budget(keep=key)
        progress.end(f"loaded in {entry.load_s:.1f} s")
        log.info("loaded %s on %s (%s) in %.2f s", name, device, dtype, entry.load_s)
        return entry

    def _memory_hooks(self, name: str):
        """(available, on_fits) for loading `name`: the memory of the models it replaces counts as free, and
        they are unloaded as soon as it is known to fit (before its weights are read)."""
        loop = asyncio.get_running_loop()
        previous = [e for e in self.entries.values() if e.stands_in_for == name and e.device != REMOTE]
        freed = sum(e.weight_bytes + _cache_bytes(e) for e in previous)

        def available() -> int | None:
            from inference.memory import available_bytes

            have = available_bytes()
            return None if have is None else have + freed

        def on_fits() -> None:
            if previous:
                loop.call_soon_threadsafe(self._drop_replaced, name)

        return available, on_fits

    def _drop_replaced(self, name: str) -> None:
        """Unload the models that served on while `name` loaded (not one another language chose)."""
        wanted = self._wanted()
        for key, e in list(self.entries.items()):
            if e.stands_in_for == name and key not in wanted:
                self.unload(key)

    def _enforce_budget(self, keep) -> None:
        """Unload least recently used local models while their resident weights and KV caches exceed it."""
        budget = self.settings.model_memory_budget_mb << 20
        if budget <= 0:
            return
        local = [e for e in self.entries.values() if e.device != REMOTE]
        while sum(e.weight_bytes + _cache_bytes(e) for e in local) > budget and len(local) > 1:
            lru = min((e for e in local if e.key != keep), key=lambda e: e.last_used)
            local.remove(lru)
            self.unload(lru.key)

    def status(self) -> list[dict]:
        """What codegen.status shows about the models."""
        out = []
        for e in self.entries.values():
            stats = camel_keys(e.engine.stats()) if hasattr(e.engine, "stats") else {}
            out.append(
                {
                    "name": e.name,
                    "path": str(getattr(e.loaded, "path", "")),
                    "family": getattr(e.loaded, "family", ""),
                    "device": e.device,
                    "dtype": getattr(e.loaded, "precision", e.dtype),
                    "dtypeReason": getattr(e.loaded, "why", ""),
                    "weightMb": round(e.weight_bytes / 2**20, 1),
                    "residentMb": round(e.weight_bytes / 2**20, 1),
                    "cacheMb": round(_cache_bytes(e) / 2**20, 1),
                    "loadSeconds": round(e.load_s, 3),
                    "preparedCache": getattr(e.loaded, "prepared", ""),
                    "peakEstimateMb": round(getattr(e.loaded, "peak_estimate", 0) / 2**20, 1),
                    "standsInFor": e.stands_in_for,
                    "engine": stats,
                }
            )
        return out


def _free(entry: ModelEntry) -> None:
    entry.engine.clear_cache()
    if entry.device == REMOTE:
        entry.engine.close()
    if entry.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def off_loop(worker, fn) -> None:
    """Run fn() on the inference thread, in order with its jobs, without waiting (the event loop never
    takes an engine's lock: a generation may hold it for seconds). Handed over at once, so a request that
    arrives after a settings change runs after it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no running loop (a test driving the manager directly): run it here
        fn()
        return
    worker.post(fn)


def remote_key(spec: dict) -> tuple[str, str, str]:
    """(name, 'remote', the spec as JSON): another url, model or tokenizer is another entry."""
    return (f"{spec['model']} @ {spec['url']}", REMOTE, json.dumps(spec, sort_keys=True))


def remote_entry(spec: dict, t0: float) -> ModelEntry:
    """A ModelEntry whose engine is a remote server (runs on the inference thread: reads the tokenizer)."""
    from lsp_server.remote import RemoteEngine, RemoteSpec, load_tokenizer_for

    rs = RemoteSpec.from_dict(spec)
    try:
        tokenizer = load_tokenizer_for(rs.tokenizer)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the remote model's tokenizer {rs.tokenizer!r}: {exc}") from exc
    engine = RemoteEngine(rs, tokenizer)
    key = remote_key(spec)
    return ModelEntry(key[0], REMOTE, key[2], engine.loaded, engine, 0, time.perf_counter() - t0)


def _is_load_error(e: Exception) -> bool:
    from inference.errors import ModelLoadError

    return isinstance(e, ModelLoadError)
