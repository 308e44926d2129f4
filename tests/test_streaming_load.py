"""Streaming loads (tensor by tensor, each block final before the next) give today's weights bit for bit; the
prepared-weights cache; the memory check that refuses what cannot fit, and the server serving on."""

from __future__ import annotations

import logging
import shutil
import types as pytypes

import pytest
import torch

from inference import memory, ops, prepared, quant, registry
from inference.config import read_config_json
from inference.loader import fill_weights, wait_for_writes
from inference.loader import load_model as _load_model
from inference.weights import open_weights
from tests.checkpoints import make_codegen_checkpoint, make_neox_japanese_checkpoint

SHAPE = dict(n_layer=2, n_embd=64, n_head=8, rotary_dim=4, n_positions=128)
IDS = torch.tensor([[15496, 995, 198, 50284, 7783, 2124, 11, 13]])
INT8 = quant.int8_kernel() is not None
PRECISIONS = ["float32", pytest.param("int8", marks=pytest.mark.skipif(not INT8, reason="no fbgemm"))]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {
        "safetensors": make_codegen_checkpoint(root / "single", **SHAPE),
        "sharded": make_codegen_checkpoint(root / "sharded", max_shard_size="100KB", **SHAPE),
        "pytorch_bin": make_codegen_checkpoint(root / "bin", safe_serialization=False, **SHAPE),
        "neox": make_neox_japanese_checkpoint(root / "ja"),
    }


def load_model(*args, **kwargs):
    """load_model, then its prepared-cache write (a thread) finished."""
    lm = _load_model(*args, **kwargs)
    writing = lm.prepared == "writing"
    wait_for_writes()
    assert lm.prepared == ("written" if writing else lm.prepared)
    return lm


def todays_loader(path, int8: bool):
    """The loader before streaming: every tensor in, then fuse, then quantize (or transpose) the model."""
    fam = registry.family_for(read_config_json(path))
    config = fam.config_class().from_dict(read_config_json(path))
    with torch.device("meta"):
        model = fam.model_class()(config)
    source = open_weights(path)
    fill_weights(model, source, fam.weight_map(config), fam.ignored, torch.device("cpu"), torch.float32)
    model.init_buffers("cpu")
    model.prepare_for_inference()
    quant.quantize_model(model) if int8 else ops.store_transposed(model)
    return model.eval()


def snapshot(model) -> dict:
    """Every tensor the model computes with: parameters (with strides), buffers, int8 q / scale / bias."""
    out = {n: (p.detach(), p.stride()) for n, p in model.named_parameters(remove_duplicate=False)}
    out |= {n: (b, b.stride()) for n, b in model.named_buffers()}
    for name, w in quant.int8_weights(model).items():
        q, scale, bias = w.quantized()
        out |= {f"{name}.q": (q, ()), f"{name}.scale": (scale, ()), f"{name}.bias": (bias, ())}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        (x, sx), (y, sy) = a[name], b[name]
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and sx == sy and torch.equal(x, y), name


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("layout", ["safetensors", "sharded", "pytorch_bin", "neox"])
def test_streaming_load_gives_todays_weights_bit_for_bit(ckpts, layout, precision):
    lm = load_model(str(ckpts[layout]), dtype=precision, prepared_cache="off")
    assert lm.prepared == "off" and lm.resident_bytes > 0
    assert_same(snapshot(lm.model), snapshot(todays_loader(ckpts[layout], precision == "int8")))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "MIN_BYTES", 0)  # the test checkpoints are tiny
    return tmp_path / "prepared"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_cache_is_written_then_used_with_the_same_weights(ckpts, cache, precision):
    first = load_model(str(ckpts["safetensors"]), dtype=precision, prepared_cache=str(cache))
    second = load_model(str(ckpts["safetensors"]), dtype=precision, prepared_cache=str(cache))
    assert (first.prepared, second.prepared) == ("written", "used")
    assert len(list(cache.glob("*.weights"))) == 1
    assert_same(snapshot(second.model), snapshot(first.model))
    with torch.no_grad():
        assert torch.equal(first.model(IDS), second.model(IDS))
    assert second.resident_bytes == first.resident_bytes


def test_the_cache_is_rebuilt_for_a_changed_checkpoint_or_cpu_kind(ckpts, cache, tmp_path, monkeypatch):
    path = shutil.copytree(ckpts["safetensors"], tmp_path / "ckpt")
    assert load_model(str(path), prepared_cache=str(cache)).prepared == "written"
    assert load_model(str(path), prepared_cache=str(cache)).prepared == "used"
    make_codegen_checkpoint(path, seed=1, **SHAPE)  # new weights in the same place
    changed = load_model(str(path), prepared_cache=str(cache))
    assert changed.prepared == "written"
    assert_same(snapshot(changed.model), snapshot(todays_loader(path, False)))
    monkeypatch.setattr(prepared, "kernel_kind", lambda: "another-cpu")
    assert load_model(str(path), prepared_cache=str(cache)).prepared == "written"
    assert len(list(cache.glob("*.weights"))) == 3


@pytest.mark.parametrize("damage", ["truncated", "corrupt_header", "not_ours"])
def test_a_damaged_entry_is_ignored_and_rebuilt_with_one_log_line(ckpts, cache, damage, caplog):
    path = str(ckpts["safetensors"])
    load_model(path, prepared_cache=str(cache))
    (entry,) = cache.glob("*.weights")
    data = entry.read_bytes()
    entry.write_bytes(
        {
            "truncated": data[: len(data) - 1000],
            "corrupt_header": data[:20] + b"\xff" * 50 + data[70:],
            "not_ours": b"\x00" * len(data),
        }[damage]
    )
    with caplog.at_level(logging.WARNING, logger="inference.loader"):
        lm = load_model(path, prepared_cache=str(cache))
    assert lm.prepared == "written"
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.loader"]
    assert len(lines) == 1 and "ignored and rebuilt" in lines[0], [r.getMessage() for r in caplog.records]
    assert_same(snapshot(lm.model), snapshot(todays_loader(ckpts["safetensors"], False)))
    assert load_model(path, prepared_cache=str(cache)).prepared == "used"


def test_the_memory_estimate_bounds_what_a_load_holds(ckpts):
    lm = load_model(str(ckpts["safetensors"]), prepared_cache="off")
    assert lm.resident_bytes <= lm.peak_estimate
    est = memory.estimate(lm.model, False, torch.float32)  # the prepared (fused) model, counted again
    assert abs(est.weights - lm.resident_bytes) <= lm.resident_bytes * 0.05


def test_a_model_that_cannot_fit_is_refused_saying_what_would(ckpts):
    path = str(ckpts["safetensors"])
    with pytest.raises(memory.ModelMemoryError) as err:
        load_model(path, prepared_cache="off", kv_bytes=1 << 20, available=lambda: 1 << 20)
    msg = str(err.value)
    assert path in msg and "float32" in msg and "GB available" in msg and "team server" in msg
    assert "smaller checkpoint" in msg and ("int8" in msg or not INT8)


async def test_the_server_keeps_the_previous_model_when_the_new_one_cannot_fit(ckpts, tmp_path, monkeypatch):
    from lsp_server.models import ModelManager
    from lsp_server.scheduler import Worker
    from lsp_server.settings import Settings, update

    big = make_codegen_checkpoint(tmp_path / "big", n_layer=2, n_embd=256, n_head=8, rotary_dim=4)
    small = str(ckpts["safetensors"])
    settings, errors = update(Settings(device="cpu", dtype="float32"), {"model": small, "cacheBudgetMb": 1})
    assert not errors
    shown = []
    ls = pytypes.SimpleNamespace(
        client_capabilities=None, window_show_message=lambda p: shown.append(p.message)
    )
    m = ModelManager(ls, Worker(), settings)
    with torch.device("meta"):
        fam = registry.family_for(read_config_json(big))
        need = memory.estimate(
            fam.model_class()(fam.config_class().from_dict(read_config_json(big))), False, torch.float32
        )
    monkeypatch.setattr(memory, "available_bytes", lambda: need.peak // 3)  # fits the small one, not the big
    first = await m.get("python")
    assert first.name == small
    settings, _ = update(m.settings, {"model": str(big)})
    m.update_settings(settings)
    entry = await m.get("python")
    assert entry is first and [k[0] for k in m.entries] == [small]
    assert len(shown) == 1 and str(big) in shown[0] and "GB" in shown[0] and "Keeping" in shown[0]
    assert m.status()[0]["residentMb"] > 0 and m.status()[0]["preparedCache"] == "off"
    monkeypatch.setattr(memory, "available_bytes", lambda: need.peak * 3)
    m.update_settings(settings)  # a settings change retries: now it fits, and the small one goes
    assert (await m.get("python")).name == str(big)
    assert [k[0] for k in m.entries] == [str(big)]
