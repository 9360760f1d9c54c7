#!/usr/bin/env bash
# One thread against two for the server's model runs, over real HTTP: one binary,
# two servers side by side on the shipped model (2 × 512), one with
# CELLSCOPE_TRACE_THREADS=1 and one with it unset (two threads for a lone request),
# the trace cache off so every request runs the model. Requests alternate between
# the two servers, so a change in the machine's speed favours neither; best of RUNS
# (default 5) per row, 2,000 characters of the reference text.
#   scripts/bench-threads.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/linux-lstm.safetensors}
ONE=${PORT_ONE:-3918}
TWO=${PORT_TWO:-3919}
RUNS=${RUNS:-5}
cargo build --release --quiet
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
CELLSCOPE_TRACE_THREADS=1 target/release/cellscope serve --model "$MODEL" --addr 127.0.0.1:$ONE \
  --trace-cache-mb 0 2>/dev/null &
P1=$!
env -u CELLSCOPE_TRACE_THREADS target/release/cellscope serve --model "$MODEL" --addr 127.0.0.1:$TWO \
  --trace-cache-mb 0 2>/dev/null &
P2=$!
trap 'kill $P1 $P2 2>/dev/null' EXIT
for port in $ONE $TWO; do
  for i in $(seq 1 100); do curl -sf localhost:$port/healthz >/dev/null && break; sleep 0.2; done
done
# Each server computes its cell pages' reference trace as it starts: let that finish.
sleep 10
python3 - "$ONE" "$TWO" "$RUNS" "${MODEL%.safetensors}.reference.txt" <<'PY'
import json, sys, time, urllib.request
one, two, runs, reference = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
src = open(reference).read()
text = (src * (2000 // len(src) + 1))[:2000]
def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
    return time.perf_counter() - start
model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{two}/api/model"))["id"]
cases = [
    ("/api/cells/rank, if", "/api/cells/rank", {"text": text, "feature": "if"}),
    ("/api/intervene, one clamp", "/api/intervene",
     {"text": text, "clamps": [{"layer": 1, "kind": "c", "cell": 5, "value": 0}], "top_k": 3}),
    ("/api/saliency, 1,500 back", "/api/saliency", {"text": text, "position": 1500}),
    ("/api/compare, one model, comment", "/api/compare", {"text": text, "feature": "comment", "models": [model]}),
    ("/api/view, kind c", "/api/view", {"text": text, "layer": 1, "kinds": ["c"]}),
]
best = {(name, port): float("inf") for name, _, _ in cases for port in (one, two)}
for _ in range(runs):
    for name, path, body in cases:
        for port in (one, two):
            best[name, port] = min(best[name, port], post(port, path, body))
print(f"{'request (2,000 chars, cache off)':36s} {'1 thread':>9s} {'2 threads':>10s} {'ratio':>7s}")
for name, _, _ in cases:
    a, b = best[name, one], best[name, two]
    print(f"{name:36s} {a:8.3f}s {b:9.3f}s {a / b:6.2f}x")
print(f"(best of {runs}, requests alternating between the two servers)")
PY
