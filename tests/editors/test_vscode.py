"""The VS Code extension: compiled and packaged, then installed in a real VS Code (code-server) driven by
headless Chromium, showing the server's inline suggestion as ghost text."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.editors.helpers import ROOT, ci_tools, missing
from tests.editors.lsp_client import reference_inline, reference_program

pytestmark = pytest.mark.editors

HERE = Path(__file__).resolve().parent
EXT_DIR = ROOT / "editors" / "vscode"
SOURCE = "def add(a, b):\n    return a"
TYPED = " + b"
TYPED2 = "  # sum"
MAX_TOKENS, MAX_TOKENS_AFTER = 12, 2
SYNTH = "# Define a function that adds two numbers.\n# Print the sum of 2 and 3."
TURNS = ["Define a function that adds two numbers.", "Print the sum of 2 and 3."]


def acceptance_tables(text: str) -> list[list[dict]]:
    """The acceptance tables "CodeGen: Show status" wrote (a header of keys, then a row per language and
    model, indented under `acceptance`), integers as integers."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.rstrip().endswith("acceptance") and line.rstrip().split("] ")[-1] == "acceptance":
            header, rows = lines[i + 1].split(), []
            for row in lines[i + 2 :]:
                if not row.startswith("  ") or row.startswith("   "):
                    break
                cells = zip(header, row.split(), strict=True)
                rows.append({k: int(v) if v.isdigit() else v for k, v in cells})
            out.append(rows)
    return out


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Node, code-server, Chromium, playwright-core and the .vsix from editors/ci-setup.sh."""
    t = ci_tools()
    for key, what in [
        ("CODEGEN_LSP_NODE", "Node 24"),
        ("CODEGEN_LSP_CODE_SERVER", "code-server"),
        ("CODEGEN_LSP_CHROMIUM", "Chromium"),
        ("CODEGEN_LSP_PLAYWRIGHT", "playwright-core"),
        ("CODEGEN_LSP_VSIX", "the packaged extension (.vsix)"),
    ]:
        if not t.get(key) or not Path(t[key]).exists():
            missing(f"{what} not found ({key}={t.get(key)!r})")
    return t


def test_extension_compiles_and_packages(tools):
    """tsc type-checks the sources; the .vsix holds the compiled code, the manifest and the runtime deps."""
    node = tools["CODEGEN_LSP_NODE"]
    tsc = EXT_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        missing("editors/vscode/node_modules is missing (npm ci)")
    proc = subprocess.run([node, str(tsc), "-p", str(EXT_DIR), "--noEmit"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(tools["CODEGEN_LSP_VSIX"]) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("extension/package.json"))
        code = z.read("extension/out/extension.js").decode()
    assert "extension/node_modules/vscode-languageclient/lib/node/main.js" in names
    assert {"extension/readme.md", "extension/LICENSE.txt"} <= names
    assert not any(n.startswith("extension/src/") for n in names)
    assert manifest["main"] == "./out/extension.js"
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert commands == {
        "codegenLsp.synthesize",
        "codegenLsp.restart",
        "codegenLsp.clearCache",
        "codegenLsp.showStatus",
    }
    settings = manifest["contributes"]["configuration"]["properties"]
    for key in (
        "model",
        "device",
        "dtype",
        "maxNewTokens",
        "temperature",
        "completionMode",
        "languageModels",
        "remote",
    ):
        assert f"codegenLsp.{key}" in settings
    # The compiled code is the current source (ci-setup.sh compiles before packaging).
    assert "codegen.synthesize" in code and "textDocument" in code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_settings(server_cmd: list[str], checkpoint: Path, max_tokens: int) -> dict:
    return {
        "security.workspace.trust.enabled": False,
        "chat.disableAIFeatures": True,
        "telemetry.telemetryLevel": "off",
        "extensions.autoCheckUpdates": False,
        "extensions.autoUpdate": False,
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "update.mode": "none",
        "editor.inlineSuggest.enabled": True,
        "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
        "editor.suggestOnTriggerCharacters": False,
        "editor.wordBasedSuggestions": "off",
        "editor.autoClosingBrackets": "never",
        "codegenLsp.server.command": server_cmd,
        "codegenLsp.model": str(checkpoint),
        "codegenLsp.device": "cpu",
        "codegenLsp.dtype": "float32",
        "codegenLsp.maxNewTokens": max_tokens,
        "codegenLsp.maxLatencyMs": 0,  # no time budget: answers compared across requests, whatever the load
        "codegenLsp.completionMode": "free",
        "codegenLsp.stopPatterns": {"python": []},
        "codegenLsp.logLevel": "debug",
    }


@pytest.fixture(scope="module")
def code_server(tools, tmp_path_factory, editor_checkpoint, server_cmd):
    """code-server on loopback with the extension installed from the .vsix; stopped (whole group) after."""
    base = tmp_path_factory.mktemp("code-server")
    user_data, extensions, folder = base / "user-data", base / "extensions", base / "project"
    for d in (user_data / "User", extensions, folder):
        d.mkdir(parents=True)
    settings_file = user_data / "User" / "settings.json"
    settings_file.write_text(json.dumps(user_settings(server_cmd, editor_checkpoint, MAX_TOKENS), indent=2))
    (folder / "add.py").write_text(SOURCE)
    (folder / "synth.py").write_text(SYNTH)
    config = base / "config.yaml"
    config.write_text("auth: none\ncert: false\n")
    node_bin = str(Path(tools["CODEGEN_LSP_NODE"]).parent)
    env = {
        **os.environ,
        "PATH": node_bin + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_CACHE_HOME": str(base / "cache"),
    }
    cs = tools["CODEGEN_LSP_CODE_SERVER"]
    common = ["--user-data-dir", str(user_data), "--extensions-dir", str(extensions), "--config", str(config)]
    inst = subprocess.run(
        [cs, *common, "--install-extension", tools["CODEGEN_LSP_VSIX"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert any(p.name.startswith("codegen-lsp.codegen-lsp-") for p in extensions.iterdir()), inst.stdout
    port = free_port()
    log = open(base / "code-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            cs,
            *common,
            "--bind-addr",
            f"127.0.0.1:{port}",
            "--auth",
            "none",
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            "--disable-getting-started-override",
            "--enable-proposed-api",  # partial accepts reach the extension (inlineCompletionsAdditions)
            "codegen-lsp.codegen-lsp",
            str(folder),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(
                        f"code-server did not start:\n{(base / 'code-server.log').read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        yield {
            "url": url,
            "folder": folder,
            "settings_file": settings_file,
            "env": env,
            "base": base,
            "user_data": user_data,
        }
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        # The extension host's children (the language server) are in the same group; make sure none is left.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def server_log(cs: dict) -> str:
    """The extension's output channel (server stderr and client log) for failure messages."""
    logs = sorted(Path(cs["user_data"]).rglob("*CodeGen LSP*.log"))
    return "\n".join(p.read_text()[-4000:] for p in logs) or "(no CodeGen LSP log)"


def test_ghost_text_in_code_server(tools, code_server, editor_checkpoint, server_cmd, artifacts):
    """Type in a Python file in VS Code: the ghost text is the server's inline completion; a changed
    maxNewTokens reaches the server; Tab accepts; synthesis inserts the program; a model that cannot be
    loaded is named in the status bar with the built-in model standing in."""
    cfg = {
        "playwright": tools["CODEGEN_LSP_PLAYWRIGHT"],
        "chromium": tools["CODEGEN_LSP_CHROMIUM"],
        "url": code_server["url"],
        "folder": str(code_server["folder"]),
        "file": "add.py",
        "type": TYPED,
        "type2": TYPED2,
        "screenshot": str(artifacts / "vscode-ghost-text.png"),
        "screenshot2": str(artifacts / "vscode-ghost-text-after-settings.png"),
        "screenshotSettings": str(artifacts / "vscode-settings-editor.png"),
        "settingsFile": str(code_server["settings_file"]),
        "newMaxTokens": MAX_TOKENS_AFTER,
        "synthFile": "synth.py",
        "synthLinesBefore": SYNTH.count("\n") + 1,
        "synthCharsBefore": len(SYNTH),
        "screenshotSynth": str(artifacts / "vscode-synthesize.png"),
        "badModel": str(code_server["base"] / "no-model"),
        "type3": "  # more",
        "screenshotFallback": str(artifacts / "vscode-fallback-model.png"),
    }
    (code_server["base"] / "no-model").mkdir(exist_ok=True)
    cfg_file = code_server["base"] / "e2e.json"
    cfg_file.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [tools["CODEGEN_LSP_NODE"], str(HERE / "vscode_e2e.mjs"), str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=240,
        env=code_server["env"],
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"the driver printed no result (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(lines[-1])
    (artifacts / "vscode-e2e.json").write_text(json.dumps(out, indent=2))
    (artifacts / "vscode-extension.log").write_text(server_log(code_server))
    assert out["ok"], (
        f"{out.get('error')}\nsteps: {out['steps']}\nstatus bar: {out.get('statusBar')}\n"
        + server_log(code_server)
    )

    # The reference: the same server, settings and documents, asked directly.
    opts = {"model": str(editor_checkpoint), "device": "cpu", "dtype": "float32", "completionMode": "free"}
    opts["stopPatterns"] = {"python": []}
    ref = functools.partial(reference_inline, server_cmd, code_server["env"], code_server["folder"])
    uri = (code_server["folder"] / "ref").as_uri()
    text1, text2 = SOURCE + TYPED, SOURCE + TYPED + TYPED2
    ref1, ref2_before = ref({**opts, "maxNewTokens": MAX_TOKENS}, uri, [text1, text2])
    [ref2] = ref({**opts, "maxNewTokens": MAX_TOKENS_AFTER}, uri, [text2])
    assert ref2 != ref2_before and ref2_before.startswith(ref2), (ref2, ref2_before)

    first = out["first"]
    assert first["shown"], f"no ghost text in the DOM; ghost classes seen: {first['classes']}\n{out['steps']}"
    assert "CodeGen: codegen-tiny (cpu)" in out["status"]
    assert "\n".join([first["inline"], *first["below"]]) == ref1
    # maxNewTokens changed in the Settings editor: the next suggestion is the server's answer under it.
    assert json.loads(out["settingsJson"])["codegenLsp.maxNewTokens"] == MAX_TOKENS_AFTER
    second = out["second"]
    assert "\n".join([second["inline"], *second["below"]]) == ref2
    # Ctrl+Right accepted its first word, Tab the rest: the document holds the suggestion, and the server
    # counted one partial and one whole acceptance (the figures "CodeGen: Show status" wrote).
    n = text2.count("\n") + 1
    took = "\n".join(out["afterWord"][:n])[len(text2) :]  # what the word accept inserted (VS Code's rule)
    assert "\n".join(out["afterWord"][:n]).startswith(text2) and took, out["afterWord"]
    assert ref2.startswith(took) and took != ref2, (took, ref2)
    assert out["afterTab"][:n] == (text2 + ref2).split("\n")
    logs = "".join(p.read_text() for p in Path(code_server["user_data"]).rglob("*CodeGen LSP*.log"))
    shown = acceptance_tables(logs)
    assert shown, logs[-3000:]
    (row,) = shown[-1]
    assert row["accepted"] == 1 and row["partlyAccepted"] == 1, row
    assert row["acceptedChars"] == len(ref2), row
    # The synthesis command replaced the selected comment lines with the server's program: each comment
    # once, its code right after it; one undo brings the selection's text back.
    uri = (code_server["folder"] / "synth.py").as_uri()
    end = {"line": SYNTH.count("\n"), "character": len(SYNTH.split("\n")[-1])}
    selection = {"start": {"line": 0, "character": 0}, "end": end}
    opts = {"model": str(editor_checkpoint), "device": "cpu", "dtype": "float32"}
    answer = reference_program(
        server_cmd, code_server["env"], code_server["folder"], opts, uri, SYNTH, {"range": selection}, TURNS
    )
    program = answer["program"]
    for turn in answer["turns"]:
        assert turn["code"].strip() and program.count(turn["prompt"]) == 1, answer
        assert f"# {turn['prompt']}\n{turn['code']}" in program
    expected = program.split("\n")
    shown = out["synthLines"]
    assert len(shown) >= min(len(expected), 20), (shown, expected)
    assert shown == expected[: len(shown)]
    assert out["synthUndone"] == SYNTH.split("\n")
    # A model directory with nothing in it: the model loaded before serves on, and the user is told so.
    assert out["fallbackStatus"] == "CodeGen: codegen-tiny (cpu) instead of no-model", out["fallbackStatus"]
    warned = [t for t in out["notifications"] if "no-model" in t and "Keeping" in t and "codegen-tiny" in t]
    assert warned, out["notifications"]
