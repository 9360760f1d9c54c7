#!/usr/bin/env bash
# Times the server on 2,000- and 20,000-character traces over real HTTP (curl),
# against the shipped model: /api/view (what the page fetches: one layer, all six
# kinds, int8) and /api/trace (JSON, layer 1, c only; and .npy, all layers, h and c).
#   scripts/bench-server.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/linux-lstm.safetensors}
PORT=${PORT:-3917}
cargo build --release --quiet
target/release/cellscope serve --model "$MODEL" --addr 127.0.0.1:$PORT --max-text-chars 20000 --max-body-bytes 4000000 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
for i in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.2; done
TMP=$(mktemp -d)
python3 - "$TMP" <<'PY'
import json, sys
src = open("models/linux-lstm.reference.txt").read()
for n in (2000, 20000):
    text = (src * (n // len(src) + 1))[:n]
    for name, body in {
        "view": {"text": text, "layer": 1},
        "trace_json_c_l1": {"text": text, "layers": [1], "kinds": ["c"], "top_k": 5},
        "trace_npy_hc": {"text": text},
    }.items():
        open(f"{sys.argv[1]}/{name}_{n}.json", "w").write(json.dumps(body))
PY
printf '%-18s %7s %10s %12s\n' endpoint chars seconds bytes
for n in 2000 20000; do
  for name in view trace_json_c_l1 trace_npy_hc; do
    url=/api/view; [ "$name" != view ] && url=/api/trace; [ "$name" = trace_npy_hc ] && url="/api/trace?format=npy"
    best=999
    for run in 1 2 3; do
      out=$(curl -s -o /dev/null -w '%{time_total} %{size_download} %{http_code}' -H 'content-type: application/json' --data-binary @"$TMP/${name}_$n.json" "localhost:$PORT$url")
      set -- $out
      [ "$3" = 200 ] || { echo "HTTP $3 for $name $n"; exit 1; }
      best=$(python3 -c "print(min($best, $1))"); size=$2
    done
    printf '%-18s %7s %10.3f %12s\n' "$name" "$n" "$best" "$size"
  done
done
echo "(best of 3; load average $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores)"
