"""`codegen-lsp complete`: the completion on stdout, nothing else; errors on stderr with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference import hub
from inference.engine import Engine
from inference.generate import GenerationParams
from inference.heal import split
from inference.loader import load_model
from lsp_server import postprocess
from lsp_server.cli import main, text_before
from tests.checkpoints import make_codegen_checkpoint

SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    "
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_codegen_checkpoint(
        tmp_path_factory.mktemp("cli"), n_layer=2, n_embd=64, n_head=4, rotary_dim=8
    )


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "code.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def expected(ckpt, prompt, raw=False, n=24):
    """The engine's greedy text, trimmed as the server trims Python (block mode)."""
    line_prefix = prompt[prompt.rfind("\n") + 1 :]
    stops = () if raw else postprocess.patterns_for("python", "block", line_prefix)
    kept, heal = split(prompt)  # trailing spaces healed, as the CLI does
    r = Engine(load_model(str(ckpt), dtype="auto")).generate(  # the CLI's default dtype
        "x", kept, GenerationParams(max_new_tokens=n, stop_patterns=stops, heal=heal)
    )
    return r.text if raw else postprocess.trim(r.text, stops)


@pytest.mark.parametrize("raw", [False, True], ids=["trimmed", "raw"])
def test_complete_at_end_of_file(ckpt, source, capsys, raw):
    argv = ["complete", "--model", str(ckpt), "--file", str(source), "--max-new-tokens", "24"]
    assert main(argv + (["--raw"] if raw else [])) == 0
    out, err = capsys.readouterr()
    assert out == expected(ckpt, SOURCE, raw)
    if raw:
        assert out and out == expected(ckpt, SOURCE, True)


def test_complete_at_a_position(ckpt, source, capsys):
    argv = ["complete", "--model", str(ckpt), "--file", str(source), "--line", "4", "--character", "11"]
    assert main(argv + ["--max-new-tokens", "24"]) == 0
    assert capsys.readouterr().out == expected(ckpt, "import os\n\n\ndef add(a, b):\n    return ")


def test_text_before():
    assert text_before("ab\ncd\n", None, None) == "ab\ncd\n"
    assert text_before("ab\ncd\n", 1, 1) == "ab\nc"
    assert text_before("ab\ncd\n", 1, None) == "ab\ncd"
    assert text_before("ab\ncd\n", 2, 0) == "ab\ncd\n"
    assert text_before("ab\r\ncd", 1, 2) == "ab\r\ncd"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--line", "40"], "--line 40 is outside the file"),
        (["--line", "1", "--character", "5"], "--character 5 is outside line 1"),
        (["--character", "5"], "--character needs --line"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--dtype", "int4"], "unsupported dtype 'int4'"),
    ],
    ids=["line", "character", "character-alone", "temperature", "dtype"],
)
def test_bad_arguments(ckpt, source, capsys, extra, message):
    assert main(["complete", "--model", str(ckpt), "--file", str(source), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_missing_file(ckpt, tmp_path, capsys):
    assert main(["complete", "--model", str(ckpt), "--file", str(tmp_path / "nope.py")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no such file" in err


def test_default_model_falls_back_to_builtin_with_a_notice(ckpt, source, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "BUILTIN_DIR", ckpt)
    assert main(["complete", "--file", str(source), "--max-new-tokens", "24"]) == 0
    out, err = capsys.readouterr()
    assert out == expected(ckpt, SOURCE)
    assert "Salesforce/codegen-350M-mono" in err and "built-in model" in err
    assert err.count("built-in model for now") == 1


def test_unreachable_model_without_builtin(source, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "BUILTIN_DIR", tmp_path / "none")
    assert main(["complete", "--model", "org/model", "--file", str(source)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "hf download org/model" in err


def test_console_script_stdout_is_only_the_completion(ckpt, source):
    cmd = [sys.executable, "-m", "lsp_server.cli", "complete", "--model", str(ckpt), "--file", str(source)]
    proc = subprocess.run(
        cmd + ["--max-new-tokens", "24", "--log-level", "info"], capture_output=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("utf-8") == expected(ckpt, SOURCE)
    assert b"prompt tokens" in proc.stderr


def test_a_file_longer_than_the_window_is_cut_by_the_servers_cutter(ckpt, tmp_path, caplog, capsys):
    """512 positions, 24 new tokens: the prompt keeps the file's last lines, cut as the server cuts it."""
    from lsp_server.prompt import prompt_ids

    text = "".join(f"value_{i} = compute({i}, 'x')\n" for i in range(300)) + "def sub(a, b):\n    "
    path = tmp_path / "long.py"
    path.write_text(text, encoding="utf-8")
    argv = ["complete", "--model", str(ckpt), "--file", str(path), "--max-new-tokens", "24", "--raw"]
    with caplog.at_level("INFO", logger="codegen_lsp.cli"):
        assert main(argv) == 0
    engine = Engine(load_model(str(ckpt), dtype="auto"))
    assert len(engine.loaded.tokenizer.encode(text)) > 512
    kept, heal = split(text)  # the trailing indentation healed, as the CLI does
    ids, window = prompt_ids(kept, engine.loaded.tokenizer, engine.prompt_limit(24))
    assert window.start > 0 and text[window.start - 1] == "\n" and len(ids) <= 512 - 24
    want = engine.generate("x", ids, GenerationParams(max_new_tokens=24, heal=heal))
    assert (
        want.text and capsys.readouterr().out == want.text and caplog.text.count("(cut from the left)") == 1
    )
    assert want.prompt_tokens == len(ids)
    assert f"{len(ids)} prompt tokens (cut from the left)" in caplog.text
