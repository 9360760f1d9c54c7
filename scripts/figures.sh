#!/usr/bin/env bash
# Regenerates the README's images (docs/screenshot.png, docs/quote-cell.png,
# docs/quote-writes.png, docs/if-cell.png, docs/compare.png) from the shipped models by running the browser test with
# CELLSCOPE_FIGURES=docs. The test suite itself writes them to a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin cellscope
CELLSCOPE_FIGURES=docs CELLSCOPE_BIN=target/release/cellscope node tests/browser/page.test.mjs
