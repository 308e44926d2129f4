"""Headless Neovim 0.11 with the plugin from editors/nvim and the real server on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.editors.helpers import ARTIFACTS, ROOT
from tests.editors.lsp_client import reference_inline

pytestmark = pytest.mark.editors

HERE = Path(__file__).resolve().parent
PLUGIN = ROOT / "editors" / "nvim"

PRELUDE = """
vim.opt.rtp:prepend({plugin})
vim.cmd("runtime! plugin/codegen_lsp.lua")
vim.lsp.set_log_level("warn")
local H = dofile({harness})
local OPTS = vim.json.decode(vim.env.CODEGEN_TEST_OPTS)
local DIR = vim.env.CODEGEN_TEST_DIR
require("codegen_lsp").setup(OPTS)
"""


def run_nvim(nvim_bin: str, tmp_path: Path, body: str, opts: dict, timeout: float = 180) -> dict:
    """Run `body` (Lua using H, OPTS, DIR) in headless Neovim; return what it put in H.out."""
    script = tmp_path / "test.lua"
    script.write_text(
        PRELUDE.format(plugin=json.dumps(str(PLUGIN)), harness=json.dumps(str(HERE / "nvim_harness.lua")))
        + f"H.run(function(H)\n{body}\nend)\n"
    )
    out = tmp_path / "out.json"
    state = tmp_path / "state"
    env = {
        **os.environ,
        "CODEGEN_TEST_OUT": str(out),
        "CODEGEN_TEST_OPTS": json.dumps(opts),
        "CODEGEN_TEST_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "XDG_STATE_HOME": str(state),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    cmd = [nvim_bin, "--headless", "-u", "NONE", "-i", "NONE", "-n", "-c", f"luafile {script}"]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"Neovim did not finish in {timeout}s; lsp log:\n{_lsp_log(state)}\n{e.stdout}")
    if not out.exists():
        log = _lsp_log(state)
        pytest.fail(f"Neovim wrote no result (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}\n{log}")
    result = json.loads(out.read_text())
    if result.get("error"):
        log = _lsp_log(state)
        pytest.fail(f"Lua test failed: {result['error']}\nmessages: {result.get('messages')}\n{log}")
    return result


def _lsp_log(state: Path) -> str:
    log = state / "nvim" / "lsp.log"
    return log.read_text()[-6000:] if log.exists() else "(no lsp.log)"


@pytest.fixture
def opts(editor_checkpoint, server_cmd) -> dict:
    """setup() options: plugin keys plus camelCase server settings (tiny model, CPU, free mode)."""
    return {
        "cmd": server_cmd,
        "filetypes": ["python"],
        "ghost_text": {"debounce_ms": 250},
        "model": str(editor_checkpoint),
        "device": "cpu",
        "dtype": "float32",
        "maxNewTokens": 12,
        "maxLatencyMs": 0,  # no time budget: answers are compared across requests, and load must not cut one
        "completionMode": "free",
        "stopPatterns": {"python": []},
        "logLevel": "debug",
    }


def inline_text(item: dict, line: str, col: int) -> str:
    """The text the server's inline item puts after the cursor at byte `col` of `line`."""
    text = item["insertText"]
    if isinstance(text, dict):
        text = text["value"]
    rng = item.get("range")
    if rng:
        typed = line[rng["start"]["character"] : col]
        assert text.startswith(typed), (text, typed)
        text = text[len(typed) :]
    return text


def test_completion_item_through_builtin_autotrigger(nvim_bin, tmp_path, opts):
    body = """
    vim.o.completeopt = "menuone,noselect,popup"
    local buf, client = H.open(DIR .. "/auto.py", { "import os", "", "def main():", "    path = os" })
    local trig = (client.server_capabilities.completionProvider or {}).triggerCharacters or {}
    assert(#trig > 0, "the server declares no completion trigger characters")
    H.out.trigger = trig
    local ch = vim.tbl_contains(trig, ".") and "." or trig[1]
    H.type("A" .. ch)
    local ok, err = pcall(H.wait_for, "the popup", function() return vim.fn.pumvisible() == 1 end, 30000)
    if not ok then
      H.out.status = H.execute(client, buf, "codegen.status", {})
      H.out.line = vim.api.nvim_get_current_line()
      H.out.mode = vim.api.nvim_get_mode().mode
      error(err .. vim.inspect(H.out))
    end
    H.out.items = vim.tbl_map(function(it) return it.word end, vim.fn.complete_info({ "items" }).items)
    H.out.lines_before = H.lines(buf)
    -- What the server answers for this very document and position, asked directly.
    local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
    params.context = { triggerKind = 2, triggerCharacter = ch }
    local resp = client:request_sync("textDocument/completion", params, 60000, buf)
    local result = resp and resp.result or {}
    H.out.server = vim.tbl_map(function(it)
      return { label = it.label, insertText = it.insertText, newText = it.textEdit and it.textEdit.newText }
    end, result.items or result)
    H.type("<C-n>")
    H.sleep(50)
    H.type("<C-y>")
    H.sleep(100)
    H.out.line_after = vim.api.nvim_get_current_line()
    H.out.lines_after = H.lines(buf)
    H.type("<Esc>")
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    assert len(out["server"]) == 1, f"the server returned {out['server']}"
    new_text = out["server"][0]["newText"]
    assert new_text and new_text.strip(), "the server's item is empty"
    # The menu shows the item (Neovim's word is the text up to the first blank) ...
    assert out["items"] == [re.match(r"\S*", new_text).group()], out["items"]
    # ... and accepting it inserts the item's whole text at the cursor.
    assert "\n".join(out["lines_after"]) == "\n".join(out["lines_before"]) + new_text


def test_ghost_text_debounced_and_accept_inserts_server_text(nvim_bin, tmp_path, opts):
    body = """
    local buf, client = H.open(DIR .. "/ghost.py", { "def add(a, b):", "    return a" })
    -- Count the plugin's inlineCompletion requests (the debounce must collapse a burst of keys into one).
    local sent = 0
    local orig = client.request
    client.request = function(self, method, ...)
      if method == "textDocument/inlineCompletion" then sent = sent + 1 end
      return orig(self, method, ...)
    end
    H.type("A")
    for _, ch in ipairs({ " ", "+", " ", "b" }) do
      H.type(ch)
      H.sleep(15)
    end
    H.wait_for("ghost text", function() return H.ghost_text(buf) end, 60000)
    H.out.requests = sent
    H.out.ghost = H.ghost_text(buf)
    H.out.before = H.lines(buf)
    H.out.cursor = vim.api.nvim_win_get_cursor(0)
    client.request = orig
    H.out.server = H.inline_sync(client, buf)
    H.type("<M-l>")
    H.sleep(50)
    H.out.after = H.lines(buf)
    H.out.ghost_after = H.ghost_text(buf)
    H.out.cursor_after = vim.api.nvim_win_get_cursor(0)
    H.type("<Esc>")
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    assert out["before"] == ["def add(a, b):", "    return a + b"]
    row, col = out["cursor"][0] - 1, out["cursor"][1]
    assert out["server"], "the server returned no inline completion"
    expected = inline_text(out["server"], out["before"][row], col)
    assert expected, "the server's suggestion is empty"
    ghost = out["ghost"]
    assert (ghost["row"], ghost["col"], ghost["pos"]) == (row, col, "inline")
    assert ghost["text"] == expected
    assert out["requests"] == 1, f"debounce: {out['requests']} inlineCompletion requests for one burst"
    # Accepting inserts exactly the server's text at the cursor and leaves no ghost text.
    text = "\n".join(out["before"])
    offset = sum(len(line) + 1 for line in out["before"][:row]) + col
    assert "\n".join(out["after"]) == text[:offset] + expected + text[offset:]
    assert out.get("ghost_after") is None


MULTILINE_CANDIDATES = [
    "for i in range(10):\n",
    "class Point:\n    def __init__(self, x, y):\n",
    "def fib(n):\n",
    "import os\n\n\ndef main():\n",
    "while True:\n",
]


def test_multiline_ghost_text_and_accept(nvim_bin, tmp_path, opts, server_cmd):
    """The project's builtin model writes code over several lines: shown below the cursor, accepted whole."""
    opts.update(model="builtin", completionMode="block", maxNewTokens=32, stopPatterns={})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server_opts = {k: v for k, v in opts.items() if k not in ("cmd", "filetypes", "ghost_text")}
    # Neovim sends the buffer with its final end-of-line: the cursor line is followed by "\n".
    probe = (tmp_path / "probe").as_uri()
    answers = reference_inline(  # a candidate may get nothing: one with several lines is what is needed
        server_cmd, env, tmp_path, server_opts, probe, MULTILINE_CANDIDATES, suffix="\n", allow_empty=True
    )
    chosen = next(
        (t for t, a in zip(MULTILINE_CANDIDATES, answers, strict=True) if "\n" in a.strip("\n")), None
    )
    assert chosen, f"the builtin model wrote no multi-line suggestion for any candidate: {answers}"
    lines = chosen.split("\n")[:-1]
    body = f"""
    local buf, client = H.open(DIR .. "/multi.py", vim.json.decode({json.dumps(json.dumps(lines))}))
    H.type("A<CR>")
    H.wait_for("ghost text", function() return H.ghost_text(buf) end, 60000)
    H.out.ghost = H.ghost_text(buf)
    H.out.before = H.lines(buf)
    H.out.cursor = vim.api.nvim_win_get_cursor(0)
    H.out.server = H.inline_sync(client, buf)
    H.type("<M-l>")
    H.out.after = H.lines(buf)
    H.out.cursor_after = vim.api.nvim_win_get_cursor(0)
    H.type("<Esc>")
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    row, col = out["cursor"][0] - 1, out["cursor"][1]
    expected = inline_text(out["server"], out["before"][row], col)
    assert "\n" in expected.strip("\n"), expected
    assert out["ghost"]["text"] == expected
    text = "\n".join(out["before"])
    assert text == chosen
    assert "\n".join(out["after"]) == text + expected
    # The cursor ends after the inserted text.
    assert out["cursor_after"] == [len(out["after"]), len(out["after"][-1])]


def test_ghost_text_dismiss_trigger_and_accept_line_keys(nvim_bin, tmp_path, opts):
    body = """
    local buf, client = H.open(DIR .. "/keys.py", { "def add(a, b):", "    return a" })
    H.type("A + b")
    H.wait_for("ghost text", function() return H.ghost_text(buf) end, 60000)
    H.out.shown = H.ghost_text(buf)
    H.type("<C-]>")
    H.out.after_dismiss = H.ghost_text(buf) or vim.NIL
    H.out.lines_after_dismiss = H.lines(buf)
    H.type("<M-\\\\>")
    H.wait_for("ghost text after <M-\\\\>", function() return H.ghost_text(buf) end, 60000)
    H.out.retriggered = H.ghost_text(buf)
    H.type("<M-Right>")
    H.out.lines_after_accept_line = H.lines(buf)
    H.type("<Esc>")
    H.out.mode = vim.api.nvim_get_mode().mode
    H.out.ghost_after_esc = H.ghost_text(buf) or vim.NIL
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    shown = out["shown"]["text"]
    assert out["after_dismiss"] is None and out["lines_after_dismiss"] == [
        "def add(a, b):",
        "    return a + b",
    ]
    assert out["retriggered"]["text"] == shown  # same document and position: the same answer
    first_line = shown.split("\n")[0]
    assert out["lines_after_accept_line"][1] == "    return a + b" + first_line
    assert out["mode"] == "n" and out["ghost_after_esc"] is None


def test_accept_word_then_accept_reports_acceptance_to_the_server(nvim_bin, tmp_path, opts):
    body = """
    local buf, client = H.open(DIR .. "/words.py", { "def add(a, b):", "    return a" })
    H.type("A + b")
    H.wait_for("ghost text", function() return H.ghost_text(buf) end, 60000)
    H.out.shown = H.ghost_text(buf)
    H.out.before = vim.api.nvim_get_current_line()
    H.type("<C-Right>")
    H.out.after_word = vim.api.nvim_get_current_line()
    H.out.rest = H.ghost_text(buf) or vim.NIL
    H.type("<M-l>")
    H.out.after = H.lines(buf)
    H.type("<Esc>")
    H.sleep(200)
    H.out.acceptance = H.execute(client, buf, "codegen.status", {}).acceptance
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    shown = out["shown"]["text"]
    word = re.match(r"\s*\w+|\s*[^\w\s]+|\s+", shown).group()
    assert word and word != shown, shown
    assert out["after_word"] == out["before"] + word
    assert out["rest"]["text"] == shown[len(word) :]
    assert "\n".join(out["after"]) == "def add(a, b):\n" + out["before"] + shown
    (row,) = out["acceptance"]
    assert row["shown"] >= 1 and row["accepted"] == 1 and row["partlyAccepted"] == 1, row
    assert row["acceptedChars"] == len(shown), row


def test_synthesize_command_replaces_the_selected_comments_with_the_program(nvim_bin, tmp_path, opts):
    body = """
    local buf, client = H.open(DIR .. "/synth.py", {
      "# Define a function that adds two numbers.",
      "# Print the sum of 2 and 3.",
      "done = True",
    })
    H.out.before = H.lines(buf)
    local synth = require("codegen_lsp.synthesize")
    vim.cmd("1,2CodegenSynthesize")
    H.wait_for("the synthesis answer", function() return synth.last end, 120000)
    H.out.result = synth.last.result
    H.out.err = synth.last.err
    H.wait_for("the program in the buffer", function() return #H.lines(buf) > 3 end, 10000)
    H.out.after = H.lines(buf)
    H.out.modified = vim.bo[buf].modified
    H.out.undo_steps = vim.fn.undotree(buf).seq_last
    vim.cmd("undo")
    H.out.undone = H.lines(buf)
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    assert out.get("err") is None, out["err"]
    result = out["result"]
    assert result["applied"] is True, result
    program = result["program"]
    assert [t["prompt"] for t in result["turns"]] == [
        "Define a function that adds two numbers.",
        "Print the sum of 2 and 3.",
    ]
    # The server's versioned edit replaced the two selected lines with the program (in the buffer, unsaved).
    after = "\n".join(out["after"]) + "\n"
    assert after == program + "done = True\n"
    for turn in result["turns"]:  # each comment exactly once, its code right after it
        assert turn["code"].strip(), turn
        assert after.count(turn["prompt"]) == 1
        assert f"# {turn['prompt']}\n{turn['code']}" in after
    assert out["modified"] is True
    # One undo step restores the selection's text.
    assert out["undo_steps"] == 1 and out["undone"] == out["before"]


def test_settings_reach_the_server(nvim_bin, tmp_path, opts):
    opts["ghost_text"] = {"enabled": False}  # only the requests this test sends
    body = """
    local buf, client = H.open(DIR .. "/settings.py", { "def main():", "    total = 0" })
    H.type("A")
    H.out.item1 = H.inline_sync(client, buf)
    H.out.first = H.execute(client, buf, "codegen.status", {})
    require("codegen_lsp").update_settings({ maxNewTokens = 3 })
    H.type("<CR>")
    H.out.item2 = H.inline_sync(client, buf)
    H.out.second = H.execute(client, buf, "codegen.status", {})
    H.type("<Esc>")
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    first, second = out["first"], out["second"]
    # setup() options arrive as initialization options ...
    assert first["settings"]["model"].endswith("codegen-tiny")
    assert first["settings"]["maxNewTokens"] == 12
    assert first["latency"]["last"]["newTokens"] > 3, first["latency"]
    # ... and update_settings() as workspace/didChangeConfiguration: the next generation obeys it.
    assert second["settings"]["maxNewTokens"] == 3
    assert second["latency"]["last"]["newTokens"] <= 3, second["latency"]
    assert second["latency"]["count"] == first["latency"]["count"] + 1


def test_checkhealth(nvim_bin, tmp_path, opts):
    body = """
    local buf, client = H.open(DIR .. "/health.py", { "x = 1" })
    vim.cmd("checkhealth codegen_lsp")
    H.wait_for("the health report", function()
      return table.concat(H.lines(0), "\\n"):find("device:", 1, true)
    end, 60000)
    H.out.report = H.lines(0)
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    report = "\n".join(out["report"])
    (ARTIFACTS / "nvim-checkhealth.txt").parent.mkdir(exist_ok=True)
    (ARTIFACTS / "nvim-checkhealth.txt").write_text(report)
    assert "ERROR" not in report, report
    assert "server executable:" in report
    assert "Python:" in report and "torch" in report
    assert "codegen-tiny" in report  # the model from the settings
    assert "device: cpu" in report


def test_checkhealth_names_the_model_the_builtin_stands_in_for(nvim_bin, tmp_path, opts):
    opts["model"] = str(tmp_path / "no-model")  # a directory with no model in it
    (tmp_path / "no-model").mkdir()
    body = """
    local buf, client = H.open(DIR .. "/stand_in.py", { "x = 1" })
    H.type("A")
    H.out.item = H.inline_sync(client, buf)  -- the first request loads the model: the built-in one stands in
    local status = require("codegen_lsp.status")
    H.out.statusline = H.wait_for("the statusline to name the stand-in", function()
      return status.statusline():find("instead of", 1, true) and status.statusline()
    end, 30000)
    vim.cmd("checkhealth codegen_lsp")
    H.wait_for("the health report", function()
      return table.concat(H.lines(0), "\\n"):find("device:", 1, true)
    end, 60000)
    H.out.report = H.lines(0)
    """
    out = run_nvim(nvim_bin, tmp_path, body, opts)
    report = "\n".join(out["report"])
    line = next(ln for ln in out["report"] if "model: " in ln and "Budget" not in ln)
    assert "WARNING" in line and "model: builtin, standing in:" in line, report
    assert "no-model" in line and "has no config.json" in line, report
    assert "OK device: cpu" in report, report
    assert out["statusline"] == "codegen: builtin instead of no-model"
