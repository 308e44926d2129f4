"""Loading: every weight layout, memory-mapped, hub cache resolution, the built-in fallback, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference import hub
from inference.errors import ModelLoadError
from inference.loader import load_model
from tests.checkpoints import make_codegen_checkpoint

SHAPE = dict(n_layer=2, n_embd=64, n_head=8, rotary_dim=4, n_positions=128)
IDS = torch.tensor([[15496, 995, 198, 50284, 7783, 2124, 11, 13]])


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same random weights as model.safetensors, sharded safetensors, and pytorch_model.bin."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        "safetensors": make_codegen_checkpoint(root / "single", **SHAPE),
        "sharded": make_codegen_checkpoint(root / "sharded", max_shard_size="100KB", **SHAPE),
        "pytorch_bin": make_codegen_checkpoint(root / "bin", safe_serialization=False, **SHAPE),
    }


@pytest.fixture(scope="module")
def reference_logits(layouts):
    from transformers import CodeGenForCausalLM

    with torch.no_grad():
        return CodeGenForCausalLM.from_pretrained(layouts["safetensors"]).eval()(IDS).logits


@pytest.fixture
def ckpt(layouts, tmp_path):
    """A private copy of the single-file checkpoint that a test may break."""
    return Path(shutil.copytree(layouts["safetensors"], tmp_path / "ckpt"))


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "pytorch_bin"])
def test_every_layout_gives_the_reference_logits(layouts, reference_logits, layout):
    path = layouts[layout]
    files = sorted(p.name for p in path.iterdir())
    assert {
        "safetensors": "model.safetensors",
        "sharded": "model.safetensors.index.json",
        "pytorch_bin": "pytorch_model.bin",
    }[layout] in files
    lm = load_model(str(path))
    assert lm.family == "codegen" and lm.name == str(path) and lm.path == path.resolve()
    with torch.no_grad():
        assert (lm.model(IDS) - reference_logits).abs().max() < 1e-4


def test_weights_go_straight_to_the_requested_dtype(layouts):
    lm = load_model(str(layouts["pytorch_bin"]), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert all(p.device.type == "cpu" for p in lm.model.parameters())


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(ckpt))


def test_malformed_config(ckpt):
    (ckpt / "config.json").write_text('{"model_type": "codegen", "n_embd": 64,')
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(str(ckpt))


def test_config_missing_fields(ckpt):
    (ckpt / "config.json").write_text(json.dumps({"model_type": "codegen", "vocab_size": 51200}))
    with pytest.raises(ModelLoadError, match="lacks n_embd, n_layer, n_head"):
        load_model(str(ckpt))


def test_unsupported_architecture_names_the_supported_ones(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ModelLoadError, match=r"unsupported architecture: model_type 'mamba'.*supported.*codegen.*qwen2"
    ):
        load_model(str(ckpt))


def test_missing_tensor_is_named(ckpt):
    state = load_file(ckpt / "model.safetensors")
    del state["transformer.h.1.mlp.fc_in.bias"]
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing tensor 'transformer\.h\.1\.mlp\.fc_in\.bias'"):
        load_model(str(ckpt))


def test_wrongly_shaped_tensor_is_named(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["n_inner"] = 100  # the checkpoint's MLP is 4 * 64 = 256 wide
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ModelLoadError, match=r"tensor 'transformer\.h\.0\.mlp\.fc_in\.weight' has shape \[256, 64\]"
    ):
        load_model(str(ckpt))


def test_truncated_safetensors(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_model(str(ckpt))


def test_truncated_pytorch_bin(layouts, tmp_path):
    ckpt = Path(shutil.copytree(layouts["pytorch_bin"], tmp_path / "bin"))
    path = ckpt / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="pytorch_model.bin"):
        load_model(str(ckpt))


def test_missing_shard(layouts, tmp_path):
    ckpt = Path(shutil.copytree(layouts["sharded"], tmp_path / "sharded"))
    next(ckpt.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(ModelLoadError, match="shard model-00002-of-.* is missing"):
        load_model(str(ckpt))


def test_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights in"):
        load_model(str(ckpt))


def test_missing_tokenizer(ckpt):
    for name in ("tokenizer.json", "vocab.json"):
        (ckpt / name).unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model(str(ckpt))


def test_bad_dtype_and_device(ckpt):
    with pytest.raises(
        ModelLoadError, match="unsupported dtype 'int4'; use auto, float32, bfloat16, float16 or int8"
    ):
        load_model(str(ckpt), dtype="int4")
    with pytest.raises(ModelLoadError, match="invalid device"):
        load_model(str(ckpt), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_model(str(ckpt), device="cuda")


def test_nonexistent_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(str(tmp_path / "nope"))


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty HF_HOME, offline, and no built-in model."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "BUILTIN_DIR", tmp_path / "no-builtin")
    return tmp_path / "hf" / "hub"


def test_uncached_hub_id_offline_says_how_to_get_it(empty_hub):
    with pytest.raises(ModelLoadError) as exc:
        load_model("Salesforce/codegen-350M-mono", allow_fallback=False)
    msg = str(exc.value)
    assert "'Salesforce/codegen-350M-mono' is not in the Hugging Face cache" in msg
    assert str(empty_hub) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download Salesforce/codegen-350M-mono" in msg


def test_uncached_hub_id_without_builtin_is_an_error(empty_hub):
    with pytest.raises(ModelLoadError, match=r"hf download .*built-in model is incomplete"):
        load_model("Salesforce/codegen-350M-mono")


def test_uncached_hub_id_falls_back_to_builtin(empty_hub, layouts, monkeypatch):
    monkeypatch.setattr(hub, "BUILTIN_DIR", layouts["safetensors"])
    lm = load_model("Salesforce/codegen-350M-mono")
    assert lm.name == "builtin" and lm.path == layouts["safetensors"]
    assert lm.notice and "\n" not in lm.notice
    assert "Salesforce/codegen-350M-mono" in lm.notice and "built-in model" in lm.notice


def test_builtin_name(layouts, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "BUILTIN_DIR", layouts["safetensors"])
    lm = load_model("builtin")
    assert lm.name == "builtin" and lm.notice is None
    monkeypatch.setattr(hub, "BUILTIN_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match="built-in model is incomplete: config.json"):
        load_model("builtin")


def populate_hub_cache(cache: Path, repo_id: str, src: Path, commit: str = "a" * 40) -> Path:
    """Lay out `src`'s files exactly as huggingface_hub's cache does (blobs, snapshot symlinks, refs/main)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return snap


def test_hub_id_resolved_from_the_local_cache(empty_hub, layouts, reference_logits):
    snap = populate_hub_cache(empty_hub, "Salesforce/codegen-350M-mono", layouts["safetensors"])
    lm = load_model("Salesforce/codegen-350M-mono", allow_fallback=False)
    assert lm.name == "Salesforce/codegen-350M-mono" and lm.notice is None
    assert lm.path == snap
    with torch.no_grad():
        assert (lm.model(IDS) - reference_logits).abs().max() < 1e-4


def test_looks_like_path():
    assert hub.looks_like_path("./models/x") and hub.looks_like_path("/abs") and hub.looks_like_path("~/m")
    assert not hub.looks_like_path("Salesforce/codegen-350M-mono")


@pytest.mark.parametrize("family", ["codegen", "gpt_neox_japanese"])
def test_loading_builds_on_meta_without_torch_dynamo(family, layouts, tmp_path):
    """Building a model on the meta device must not run torch._refs (whose first use imports torch._dynamo
    and sympy: about a second of every process's first load, for no data)."""
    import subprocess
    import sys

    if family == "codegen":
        path = layouts["safetensors"]
    else:
        from tests.checkpoints import make_neox_japanese_checkpoint

        path = make_neox_japanese_checkpoint(tmp_path / "ja")
    code = (
        "import sys; from inference.loader import load_model; "
        f"load_model({str(path)!r}, device='cpu', dtype='float32'); "
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
