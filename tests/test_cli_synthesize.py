"""`codegen-lsp synthesize`: the program on stdout (and nothing else), figures on stderr, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from inference.engine import GenerationParams
from lsp_server import cli
from lsp_server import mtpb as syn
from tests.conftest import server_env

TURNS = ["Define a variable a = 3.", "Print a."]


def test_prints_the_program_of_the_engine(codegen_checkpoint, codegen_engine, capsys):
    argv = ["synthesize", "--model", str(codegen_checkpoint), "--temperature", "0"]
    assert cli.main([*argv, "--max-new-tokens-per-turn", "8", *TURNS]) == 0
    out, err = capsys.readouterr()
    want = syn.synthesize(codegen_engine, TURNS, GenerationParams(max_new_tokens=8))
    assert out == want["program"]
    assert out.startswith(syn.MTPB_HEADER + "# Define a variable a = 3.\n")
    assert "turn 1/2" in err and "turn 2/2" in err
    assert (
        f"prefilled {want['prefillTokens']} tokens in all for a final prompt of {want['promptTokens']}" in err
    )


def test_continues_a_file(codegen_checkpoint, codegen_engine, capsys, tmp_path):
    source = tmp_path / "prog.py"
    source.write_text("import os\nx = 1", encoding="utf-8")
    argv = ["synthesize", "--model", str(codegen_checkpoint), "--temperature", "0", "--file", str(source)]
    assert cli.main([*argv, "--max-new-tokens-per-turn", "8", TURNS[1]]) == 0
    out, _ = capsys.readouterr()
    want = syn.synthesize(
        codegen_engine, TURNS[1:], GenerationParams(max_new_tokens=8), text_before="import os\nx = 1"
    )
    assert out == want["program"] and out.startswith("\n# Print a.\n")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-new-tokens-per-turn", "0", "x"], "maxNewTokensPerTurn must be an integer from 1"),
        (["--max-new-tokens-per-turn", "100000", "x"], "maxNewTokensPerTurn must be an integer from 1"),
        (["--max-new-tokens-per-turn", "300", "x"], "from 1 to 255"),  # beyond the 256-position window
        (["  "], "turn 1 is empty"),
        (["--file", "/nonexistent/prog.py", "x"], "No such file"),
        (["--temperature", "-1", "x"], "temperature"),
    ],
    ids=[
        "zero-tokens",
        "absurd-tokens",
        "past-the-window",
        "empty-turn",
        "missing-file",
        "negative-temperature",
    ],
)
def test_bad_input_is_a_clear_error(codegen_checkpoint, capsys, extra, message):
    assert cli.main(["synthesize", "--model", str(codegen_checkpoint), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err


def test_subprocess_stdout_is_only_the_program(codegen_checkpoint, codegen_engine):
    cmd = [sys.executable, "-m", "lsp_server", "synthesize", "--model", str(codegen_checkpoint)]
    cmd += ["--temperature", "0", "--max-new-tokens-per-turn", "6", "--log-level", "info", *TURNS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=server_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == syn.synthesize(codegen_engine, TURNS, GenerationParams(max_new_tokens=6))["program"]
    assert "turn 2/2" in proc.stderr
