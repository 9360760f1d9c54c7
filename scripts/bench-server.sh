#!/usr/bin/env bash
# The server over real HTTP (curl) beside PyTorch, on the shipped model (2 × 512):
#   - /api/view, 2,000 characters, one layer: the shown kind alone (what the page
#     fetches first) and every kind (what it fetches next, or a script at once), the
#     default int8 trace and "exact": true;
#   - /api/trace on 20,000 characters (.npy, all layers, h and c; and JSON, layer
#     1, c only): the exact trace, against PyTorch's fused nn.LSTM on the same
#     weights and text length at 1 and 2 threads (scripts/bench_torch.py), as
#     chars/s and a ratio to PyTorch's best.
# The trace cache is off (--trace-cache-mb 0): every request traces, as a page's
# first view of a text does. Best of RUNS (default 3) per row.
#   scripts/bench-server.sh [MODEL]
#   CELLSCOPE_TRACE_THREADS=1 scripts/bench-server.sh   # every trace on one thread
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/linux-lstm.safetensors}
PORT=${PORT:-3917}
RUNS=${RUNS:-3}
cargo build --release --quiet
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg);" \
  "CELLSCOPE_TRACE_THREADS=${CELLSCOPE_TRACE_THREADS:-unset (two threads for a lone request)}"
target/release/cellscope serve --model "$MODEL" --addr 127.0.0.1:$PORT --max-text-chars 20000 \
  --max-body-bytes 4000000 --max-response-bytes 400000000 --trace-cache-mb 0 2>/dev/null &
PID=$!
TMP=$(mktemp -d)
trap 'kill $PID 2>/dev/null; rm -rf "$TMP"' EXIT
for i in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.2; done
python3 - "$TMP" <<'PY'
import json, sys
src = open("models/linux-lstm.reference.txt").read()
for n in (2000, 20000):
    text = (src * (n // len(src) + 1))[:n]
    for name, body in {
        "view_one_kind": {"text": text, "layer": 1, "kinds": ["c"]},
        "view": {"text": text, "layer": 1},
        "view_exact": {"text": text, "layer": 1, "exact": True},
        "trace_json_c_l1": {"text": text, "layers": [1], "kinds": ["c"], "top_k": 5},
        "trace_npy_hc": {"text": text},
    }.items():
        open(f"{sys.argv[1]}/{name}_{n}.json", "w").write(json.dumps(body))
PY
# PyTorch's fused nn.LSTM on the same weights: best chars/s at 1 and 2 threads.
torch_best=0
if python3 -c 'import torch, safetensors' 2>/dev/null; then
  for threads in 1 2; do
    rate=$(python3 scripts/bench_torch.py infer --impls fused --threads $threads --chars 20000 --min-time 2 --model "$MODEL" |
      python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["best_chars_per_s"])')
    printf '%-26s %7s %9.3f %10.0f\n' "torch_fused, $threads thread(s)" 20000 "$(python3 -c "print(20000/$rate)")" "$rate"
    torch_best=$(python3 -c "print(max($torch_best, $rate))")
  done
fi
printf '%-26s %7s %9s %10s %10s %12s %s\n' endpoint chars seconds chars/s /torch bytes precision
for n in 2000 20000; do
  for name in view_one_kind view view_exact trace_npy_hc trace_json_c_l1; do
    [ "$n" = 20000 ] && [[ $name == view* ]] && continue
    [ "$n" = 2000 ] && [[ $name == trace* ]] && continue
    url=/api/view; [[ $name == trace* ]] && url=/api/trace; [ "$name" = trace_npy_hc ] && url="/api/trace?format=npy"
    best=999
    for run in $(seq 1 "$RUNS"); do
      out=$(curl -s -D "$TMP/headers" -o /dev/null -w '%{time_total} %{size_download} %{http_code}' \
        -H 'content-type: application/json' --data-binary @"$TMP/${name}_$n.json" "localhost:$PORT$url")
      set -- $out
      [ "$3" = 200 ] || { echo "HTTP $3 for $name $n"; exit 1; }
      best=$(python3 -c "print(min($best, $1))"); size=$2
    done
    precision=$(sed -n 's/^x-cellscope-precision: *//Ip' "$TMP/headers" | tr -d '\r'); precision=${precision:-f32}
    ratio=""; [[ $name == trace* ]] && [ "$torch_best" != 0 ] && ratio=$(python3 -c "print(f'{$n/$best/$torch_best:.2f}×')")
    printf '%-26s %7s %9.3f %10.0f %10s %12s %s\n' "$name" "$n" "$best" "$(python3 -c "print($n/$best)")" "$ratio" "$size" "$precision"
  done
done
echo "(best of $RUNS, trace cache off; /torch: chars/s over PyTorch fused's best at its best thread count; load average $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores)"
