#!/usr/bin/env bash
# Installs the real Codex CLI used by tests/codex.rs into target/codex
# (npm package @openai/codex, pinned below; its native binary comes from the
# optional dependency @openai/codex-linux-x64 / -arm64 / ...).
#
# usage: tests/install-codex.sh
#
# Idempotent: does nothing when target/codex already holds the pinned version
# and `codex --version` answers with it. Needs node + npm and the npm registry.
# The test reads CODEX_VERSION from this file: change the pin here only.
set -euo pipefail

CODEX_VERSION=0.169.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=$root/target/codex
bin=$prefix/node_modules/.bin/codex
want="codex-cli $CODEX_VERSION"

installed() {
    [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$want" ]
}

if installed; then
    echo "install-codex: $want already in $prefix"
    exit 0
fi

command -v npm >/dev/null || {
    echo "install-codex: npm not found on PATH (needed to install @openai/codex@$CODEX_VERSION)" >&2
    exit 1
}

echo "install-codex: npm install @openai/codex@$CODEX_VERSION into $prefix"
mkdir -p "$prefix"
npm install --prefix "$prefix" "@openai/codex@$CODEX_VERSION" \
    --save-exact --include=optional --no-audit --no-fund --no-update-notifier

if ! installed; then
    echo "install-codex: after npm install, '$bin --version' does not print '$want':" >&2
    "$bin" --version >&2 || true
    exit 1
fi
echo "install-codex: $want installed in $prefix"
