#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests need
# (Debian's chromium for the browser test, playwright-core from npm), then runs
# the Rust tests (unit, integration: parity with PyTorch fixtures, gradient check,
# loader errors, HTTP API) and the real-browser test against the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (Debian) for the browser test"
  as_root apt-get install -y --no-install-recommends chromium chromium-driver \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends chromium chromium-driver; }
fi
if [ ! -d node_modules/playwright-core ]; then
  echo "== installing playwright-core (npm, no browser download)"
  npm ci --no-audit --no-fund
fi

echo "== cargo test (release profile: the maths runs at full speed)"
cargo test --release

echo "== browser test (headless chromium, the shipped model)"
cargo build --release --bin cellscope
CELLSCOPE_BIN=target/release/cellscope node tests/browser/page.test.mjs

echo "== all tests passed"
