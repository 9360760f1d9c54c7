#!/usr/bin/env bash
# Print the README's concept table: for each built-in C concept, the cell of MODEL that
# tracks it best on the Linux test split and on a sample of SQLite (C from another
# project), side by side, as markdown.
#
# Usage: scripts/concept-table.sh [MODEL]
#   MODEL defaults to the shipped models/linux-lstm.safetensors.
#
# Needs data/linux/test.txt (built by scripts/linux-corpus.sh); the SQLite sample is
# committed (tests/data/other_c/sample.c). All eight kinds (h, c, i, f, g, o, write, keep)
# of every layer are searched, since the paper's cells were found on c. One
# `find-cells --all-concepts` pass per text; expect a few minutes for a 2 x 512 model on
# two cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=${1:-models/linux-lstm.safetensors}
linux=data/linux/test.txt
sqlite=tests/data/other_c/sample.c

if [[ ! -f $model ]]; then
    echo "error: no model at $model (train one with scripts/train-linux.sh, or pass its path)" >&2
    exit 1
fi
if [[ ! -f $linux ]]; then
    echo "error: $linux is missing; build it with scripts/linux-corpus.sh" >&2
    exit 1
fi

# Prints `concept metric layer/kind/cell score sign` rows (plus a header and `#` notes).
find_cells() {
    cargo run --release --quiet -- find-cells --model "$model" --file "$1" --all-concepts --kinds all
}

echo "ranking cells on $linux ..." >&2
linux_rows=$(find_cells "$linux")
echo "ranking cells on $sqlite ..." >&2
sqlite_rows=$(find_cells "$sqlite")

# Character count with thousands separators, whatever the locale.
chars() {
    wc -m <"$1" | awk '{ n = $1; s = ""; while (n >= 1000) { s = sprintf(",%03d", n % 1000) s; n = int(n / 1000) }; print n s }'
}

echo "Best cell per concept for \`$(basename "$model")\` (cells as layer/kind/index; score: AUC"
echo "for yes/no concepts, |Pearson r| for graded ones; (+) higher inside or growing with it,"
echo "(−) lower)."
echo
echo "| concept | metric | Linux test split ($(chars "$linux") chars) | score | SQLite sample ($(chars "$sqlite") chars) | score |"
echo "|---|---|---|---|---|---|"
awk -v linux="$linux_rows" -v sqlite="$sqlite_rows" '
    function load(text, cell, score,    lines, n, i, f) {
        n = split(text, lines, "\n")
        for (i = 2; i <= n; i++) {
            if (lines[i] ~ /^#/ || split(lines[i], f, " ") != 5) continue
            metric[f[1]] = f[2]
            cell[f[1]] = f[3]
            if (f[4] == "-") { score[f[1]] = "n/a" }
            else { score[f[1]] = sprintf("%.3f (%s)", f[4], f[5] == "-" ? "−" : f[5]) }
        }
    }
    BEGIN {
        load(linux, lc, ls)
        load(sqlite, sc, ss)
        n = split("string comment if paren-depth column char brace-depth preprocessor", order, " ")
        for (i = 1; i <= n; i++) {
            c = order[i]
            m = metric[c] == "auc" ? "AUC" : "\\|r\\|"
            printf "| %s | %s | %s | %s | %s | %s |\n", c, m, lc[c], ls[c], sc[c], ss[c]
        }
    }'
