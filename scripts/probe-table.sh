#!/usr/bin/env bash
# Print the README's direction table: for string, comment and if, a concept direction
# (find-cells --probe: a sparse L1 logistic probe over the h and c cells of both layers)
# fitted on the Linux test split, then scored on the SQLite sample (C from another
# project), beside the best single cell chosen on the same Linux characters.
#
# Usage: scripts/probe-table.sh [MODEL]
#   MODEL defaults to the shipped models/linux-lstm.safetensors.
#
# Needs data/linux/test.txt (scripts/linux-corpus.sh); the SQLite sample is committed
# (tests/data/other_c/sample.c). The fit sees 20,000 characters of the test split in 20
# evenly spaced windows (find-cells' default --max-chars), holds out two tenths of them;
# the whole split is traced once per concept. The probes are written to a temporary folder.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=${1:-models/linux-lstm.safetensors}
linux=data/linux/test.txt
sqlite=tests/data/other_c/sample.c
for f in "$model" "$linux"; do
    if [[ ! -f $f ]]; then
        echo "error: $f is missing (scripts/linux-corpus.sh builds the data; pass a model path)" >&2
        exit 1
    fi
done
cargo build --release --quiet
bin=target/release/cellscope
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "| concept | direction: cells | Linux held-out AUC: direction | best single cell (chosen on Linux) | its Linux held-out AUC | SQLite AUC: direction | SQLite AUC: that cell |"
echo "|---|---:|---:|---|---:|---:|---:|"
for concept in string comment if; do
    echo "fitting $concept on $linux ..." >&2
    "$bin" find-cells --model "$model" --file "$linux" --feature "$concept" --probe --save "$out/$concept.json" --json >"$out/$concept.fit.json"
    echo "scoring $concept on $sqlite ..." >&2
    "$bin" find-cells --model "$model" --file "$sqlite" --feature "$concept" --score-with "$out/$concept.json" --json >"$out/$concept.score.json"
    jq -r --slurpfile s "$out/$concept.score.json" --arg c "$concept" '
        "| \($c) | \(.weights | length) | \(.auc_heldout * 1000 | round / 1000) | \(.best_cell.layer)/\(.best_cell.kind)/\(.best_cell.cell) (\(if .best_cell.sign < 0 then "−" else "+" end)) | \(.best_cell.auc_heldout * 1000 | round / 1000) | \($s[0].auc * 1000 | round / 1000) | \($s[0].best_cell_auc * 1000 | round / 1000) |"
    ' "$out/$concept.fit.json"
done
