"""int8 weights: quality on the built-in model over held-out code, the quantization bound on random
checkpoints, the CLI and the server path, and clear errors where int8 cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inference import ops, quant
from inference.engine import Engine
from inference.errors import ModelLoadError
from inference.generate import GenerationParams
from inference.heal import split
from inference.kv_cache import KVCache
from inference.loader import load_model
from tests.checkpoints import make_codegen_checkpoint, make_llama_checkpoint, make_neox_japanese_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from train_default_model import corpus_files, read_source  # noqa: E402

pytestmark = pytest.mark.skipif(quant.int8_kernel() is None, reason="no int8 kernel on this CPU/torch")
U32 = 2.0**-24  # float32 unit roundoff


def gamma(n: int) -> float:
    """Higham's gamma_n: a float32 sum of n terms is within gamma_n * (sum of |terms|) of exact."""
    return n * U32 / (1 - n * U32)


@pytest.fixture(scope="module")
def builtin_pair():
    return load_model("builtin", dtype="float32"), load_model("builtin", dtype="int8")


def heldout_windows(tok, n: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [B, n]: consecutive windows of the held-out stdlib modules the built-in model never saw."""
    _, held = corpus_files()
    stream: list[int] = []
    for path in held:
        stream += tok.encode(read_source(path)) + [tok.eos_token_id]
        if len(stream) > positions + n + 1:
            break
    windows = [stream[i : i + n + 1] for i in range(0, positions, n)]
    return torch.tensor([w[:-1] for w in windows]), torch.tensor([w[1:] for w in windows])


def cached_forward(lm, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits of x [B, T] fed `chunk` tokens at a time through a KV cache in the engine's dtype."""
    cfg, T = lm.config, x.shape[1]
    cache = KVCache(cfg.n_layer, cfg.kv_heads, cfg.head_dim, T, batch=x.shape[0], dtype=lm.kv_dtype)
    steps = [(s, min(s + chunk, T)) for s in range(0, T, chunk)]
    return torch.cat([lm.model(x[:, a:b], torch.arange(a, b), cache) for a, b in steps], dim=1)


def test_builtin_int8_agrees_with_float32_on_heldout_code(builtin_pair, monkeypatch):
    """>= 98 % next-token top-1 agreement over >= 5,000 held-out positions, loss within 1 % (relative).

    int8 runs as the engine decodes: its float16 KV cache, read a few queries at a time (bag_attention).
    """
    f32, q8 = builtin_pair
    if quant.reduce_range():
        pytest.skip("7-bit activations on this CPU (no VNNI): int8 is not offered by dtype auto here")
    x, y = heldout_windows(f32.tokenizer, f32.config.n_positions, 5_376)  # windows of n_positions
    assert y.numel() >= 5_000 and q8.kv_dtype == torch.float16
    with torch.inference_mode():
        a, b = f32.model(x), cached_forward(q8, x, ops.SMALL_ATTENTION_MAX_T)
    agreement = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    loss_a = F.cross_entropy(a.flatten(0, 1), y.flatten()).item()
    loss_b = F.cross_entropy(b.flatten(0, 1), y.flatten()).item()
    assert agreement >= 0.98, f"top-1 agreement {agreement:.4f}"
    assert abs(loss_b - loss_a) <= 0.01 * loss_a, f"loss {loss_a:.4f} -> {loss_b:.4f}"


def linear_int8_bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, qw: quant.Int8Weight):
    """Elementwise bound on |int8 product - (x @ w.T + b)| from the quantization steps.

    Weights: q = round(w / s) per output row, so |w - q s| <= s (1/2 + 128 u) (the division rounds too).
    Activations (fbgemm, per call): uint8 over [min(x, 0), max(x, 0)] with step sx = range / qmax
    (qmax 255, or 127 with reduce_range), so |x - x_q| <= sx (1/2 + 256 u) (clamping at a nudged zero point
    stays within half a step). Then w_q x_q - w x = dw x + w dx + dw dx, summed over K inputs:
        |dy_i| <= ew_i sum|x_j| + ex sum_j |w_ij| + K ew_i ex,
    the integer sums are exact and the rescale and bias add a few roundings; both it and the float32
    reference product are within gamma_{K+3} (sum |x_q||w_q| + |b|) of their exact values.
    """
    K = w.shape[1]
    x, w = x.double().reshape(-1, K), w.double()
    qmax = 127 if qw.reduce_range else 255
    sx = (x.max().clamp_min(0) - x.min().clamp_max(0)).item() / qmax
    ex = sx * (0.5 + 256 * U32)
    ew = qw.scale.double() * (0.5 + 128 * U32)  # [out]
    ax, aw = x.abs(), w.abs()
    quant_err = ax.sum(1, keepdim=True) * ew + ex * aw.sum(1) + K * ew * ex
    mag = (ax + ex) @ (aw + ew[:, None]).T + (b.double().abs() if b is not None else 0)
    return quant_err + 2 * gamma(K + 3) * mag


def check_every_product(path: Path, ids: torch.Tensor, monkeypatch) -> int:
    """Run the int8 model, checking each Int8Weight product against the float32 weights it came from."""
    f32, q8 = load_model(str(path), dtype="float32"), load_model(str(path), dtype="int8")
    names = {id(w): n for n, w in quant.int8_weights(q8.model).items()}
    floats = dict(f32.model.named_parameters(remove_duplicate=False))
    bias_of = {"weight": "bias", "w_in": "b_in", "w_out": "b_out", "w_qkv": "b_qkv", "w_gu": "b_gu"}
    real_call, checked = quant.Int8Weight.__call__, []

    def checked_call(self, x):
        y = real_call(self, x)
        name = names[id(self)]
        prefix, _, leaf = name.rpartition(".")
        w = floats[name]
        b = floats.get(f"{prefix}.{bias_of[leaf]}" if prefix else bias_of[leaf])
        want = F.linear(x, w, b)
        err = (y.double() - want.double()).abs().reshape(-1, w.shape[0])
        bound = linear_int8_bound(x, w, b, self)
        assert (err <= bound).all(), f"{name}: error {err.max():.3g} over its bound"
        assert err.max() > 0  # int8, not the float weights
        checked.append(name)
        return y

    monkeypatch.setattr(quant.Int8Weight, "__call__", checked_call)
    cfg, T = q8.config, ids.shape[1]
    cache = KVCache(cfg.n_layer, cfg.kv_heads, cfg.head_dim, T, batch=ids.shape[0], dtype=q8.kv_dtype)
    with torch.inference_mode():
        logits = q8.model(ids[:, :-3], torch.arange(T - 3), cache)  # prefill: many-row products
        for t in range(T - 3, T):  # decode: one-row products over the cache
            q8.model(ids[:, t : t + 1], torch.arange(t, t + 1), cache)
    assert set(checked) == set(names.values())  # every linear, lm_head included, went through int8
    assert len(checked) == 4 * len(names)
    return logits.shape[-1]


def test_codegen_int8_logits_within_the_quantization_bound(tmp_path, monkeypatch):
    path = make_codegen_checkpoint(tmp_path, n_layer=2, n_embd=128, n_head=8, rotary_dim=8)
    ids = torch.randint(0, 51200, (2, 40), generator=torch.Generator().manual_seed(0))
    assert check_every_product(path, ids, monkeypatch) == 51200


def test_neox_japanese_int8_logits_within_the_quantization_bound(tmp_path, monkeypatch):
    path = make_neox_japanese_checkpoint(tmp_path, n_layer=2, hidden_size=64, n_head=4)
    ids = torch.randint(0, 32000, (1, 33), generator=torch.Generator().manual_seed(1))
    assert check_every_product(path, ids, monkeypatch) == 32000


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_llama_int8_logits_within_the_quantization_bound(tmp_path, monkeypatch, model_type):
    """Grouped-query attention over the float16 cache; Qwen2's q/k/v biases folded into the int8 product."""
    path = make_llama_checkpoint(tmp_path, model_type=model_type, n_head=4, n_kv_head=2, attention_bias=True)
    ids = torch.randint(0, 151643, (2, 37), generator=torch.Generator().manual_seed(2))
    assert check_every_product(path, ids, monkeypatch) == 151936


def test_int8_holds_no_float_copy_of_the_linear_weights(tmp_path):
    path = make_codegen_checkpoint(tmp_path, n_layer=2, n_embd=64, n_head=4, rotary_dim=8)
    lm = load_model(str(path), dtype="int8")
    names = {n for n, _ in lm.model.named_parameters()}
    assert names == {"wte.weight", "ln_f.weight", "ln_f.bias"} | {
        f"h.{i}.ln_1.{p}" for i in range(2) for p in ("weight", "bias")
    }
    assert set(quant.int8_weights(lm.model)) == {"lm_head.weight"} | {
        f"h.{i}.{w}" for i in range(2) for w in ("w_in", "w_out")
    }
    assert lm.precision == "int8" and lm.dtype == torch.float32
    assert Engine(lm).stats()["dtype"] == "int8"


def test_int8_engine_keeps_a_float16_cache_of_half_the_bytes(tmp_path):
    """The engine's KV cache under int8 is float16 (fbgemm reads its rows): half float32's bytes a session."""
    path = make_codegen_checkpoint(tmp_path, n_layer=2, n_embd=64, n_head=4, rotary_dim=8)
    stats = {}
    for dtype in ("float32", "int8"):
        engine = Engine(load_model(str(path), dtype=dtype))
        engine.generate("a.py", "def add(a, b):\n", GenerationParams(max_new_tokens=4))
        stats[dtype] = engine.stats()
    assert (stats["float32"]["kv_dtype"], stats["int8"]["kv_dtype"]) == ("float32", "float16")
    assert stats["int8"]["cache_bytes"] * 2 == stats["float32"]["cache_bytes"] > 0


@pytest.mark.parametrize(
    "device, message",
    [("meta", "int8 runs on CPU only; on meta use float16 or bfloat16")],
    ids=["not-cpu"],
)
def test_int8_where_it_cannot_run_says_what_can(tmp_path, device, message):
    path = make_codegen_checkpoint(tmp_path, n_layer=1, n_embd=64, n_head=4, rotary_dim=8)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(path), device=device, dtype="int8")


def test_int8_without_a_kernel_says_what_can(monkeypatch):
    monkeypatch.setattr(quant, "int8_kernel", lambda: None)
    with pytest.raises(ModelLoadError, match="needs an x86 CPU with AVX2.*use float32 or bfloat16"):
        quant.check_int8(torch.device("cpu"), "codegen")
    monkeypatch.undo()
    with pytest.raises(ModelLoadError, match="not available for gptj; it is for codegen, gpt_neox_japanese"):
        quant.check_int8(torch.device("cpu"), "gptj")


def test_cli_complete_with_int8_is_the_int8_engine(codegen_checkpoint, tmp_path, capsys):
    from lsp_server.cli import main

    src = tmp_path / "code.py"
    src.write_text("import os\n\n\ndef add(a, b):\n    ", encoding="utf-8")
    argv = ["complete", "--model", str(codegen_checkpoint), "--file", str(src), "--max-new-tokens", "16"]
    assert main(argv + ["--dtype", "int8", "--raw"]) == 0
    lm = load_model(str(codegen_checkpoint), dtype="int8")
    kept, heal = split(src.read_text())  # the trailing indentation healed, as the CLI does
    want = Engine(lm).generate("x", kept, GenerationParams(max_new_tokens=16, heal=heal))
    assert capsys.readouterr().out == want.text and want.text


@pytest.mark.asyncio
async def test_server_completes_with_int8_and_status_says_so(start_server, codegen_checkpoint):
    from tests.conftest import inline, open_doc, status
    from tests.test_server_completion import expected_completion

    client = await start_server({"model": str(codegen_checkpoint), "dtype": "int8", "maxNewTokens": 8})
    open_doc(client, "file:///a.py", "def hello(name):\n    ")
    items = await inline(client, "file:///a.py", 1, 4, automatic=False)
    engine = Engine(load_model(str(codegen_checkpoint), dtype="int8"))
    assert (items[0].insert_text if items else "") == expected_completion(
        engine, "def hello(name):\n    ", max_new=8
    )
    (model,) = (await status(client))["models"]
    assert model["dtype"] == "int8" and model["engine"]["dtype"] == "int8"


@pytest.mark.parametrize(
    "kernel, reduce, family, want, why",
    [
        ("fbgemm", False, "codegen", "int8", "VNNI: int8 weights"),
        ("fbgemm", False, "gpt_neox_japanese", "float32", "not checked for gpt_neox_japanese"),
        ("fbgemm", True, "codegen", "float32", "no VNNI: int8 would quantize activations to 7 bits"),
        (None, False, "codegen", "float32", "no int8 kernel"),
    ],
    ids=["vnni-codegen", "vnni-neox-ja", "avx2-only", "no-kernel"],
)
def test_auto_precision_on_cpu(monkeypatch, kernel, reduce, family, want, why):
    from inference.precision import auto_precision

    monkeypatch.setattr(quant, "int8_kernel", lambda: kernel)
    monkeypatch.setattr(quant, "reduce_range", lambda: reduce)
    got, reason = auto_precision(torch.device("cpu"), family)
    assert got == want and why in reason


def test_cli_says_which_precision_runs_and_why(codegen_checkpoint, tmp_path, capsys):
    from inference.precision import auto_precision
    from lsp_server.cli import main

    src = tmp_path / "code.py"
    src.write_text("def add(a, b):\n    ", encoding="utf-8")
    assert (
        main(["complete", "--model", str(codegen_checkpoint), "--file", str(src), "--max-new-tokens", "2"])
        == 0
    )
    precision, why = auto_precision(torch.device("cpu"), "codegen")
    assert f"codegen-lsp: running in {precision}: {why}" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_server_status_says_which_precision_auto_chose(start_server, codegen_checkpoint):
    from inference.precision import auto_precision
    from tests.conftest import inline, open_doc, status

    client = await start_server({"model": str(codegen_checkpoint), "device": "cpu", "maxNewTokens": 2})
    open_doc(client, "file:///a.py", "x = ")
    await inline(client, "file:///a.py", 0, 4, automatic=False)
    (model,) = (await status(client))["models"]
    assert (model["dtype"], model["dtypeReason"]) == auto_precision(torch.device("cpu"), "codegen")
