#!/usr/bin/env bash
# What a reader of the page waits for: every request the page makes, once each, in
# the order a session makes them, on a fresh `serve` with its defaults (trace cache
# on, the start-up warm-up done), 2,000 characters of the reference text.
# Sequential single requests, so the numbers move with the machine's speed; compare
# two binaries by running this twice in a row, or use the A/B scripts' approach.
#   scripts/page-latency.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/cellscope}
PORT=${PORT:-3931}
[ "$BIN" = target/release/cellscope ] && cargo build --release --quiet
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" serve --addr 127.0.0.1:$PORT 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.2; done
sleep "${WARM:-12}"   # the reference trace and int8 weights, built at start
PORT=$PORT python3 - <<'PY'
import json, os, time, urllib.request
base = f"http://127.0.0.1:{os.environ['PORT']}"
src = open("models/linux-lstm.reference.txt").read()
text = (src * 3)[:2000]
def req(path, body=None):
    t = time.time()
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    n = len(urllib.request.urlopen(r).read())
    return time.time() - t, n
steps = [
    ("view, layer 1, c (a Run)", "/api/view", {"text": text, "layer": 1, "kinds": ["c"]}),
    ("view, layer 1, all kinds", "/api/view", {"text": text, "layer": 1}),
    ("view, layer 0, c", "/api/view", {"text": text, "layer": 0, "kinds": ["c"]}),
    ("rank if (first exact trace)", "/api/cells/rank", {"text": text, "feature": "if"}),
    ("rank string", "/api/cells/rank", {"text": text, "feature": "string"}),
    ("direction (probe) string", "/api/probe", {"text": text, "feature": "string"}),
    ("intervene, one clamp", "/api/intervene", {"text": text, "clamps": [{"layer": 1, "kind": "c", "cell": 5, "value": 0}]}),
    ("explain a character", "/api/explain", {"text": text, "position": 1000, "layer": 1, "cell": 5}),
    ("saliency of a character", "/api/saliency", {"text": text, "position": 1000}),
    ("sample 300 characters", "/api/sample", {"prime": "static int ", "length": 300, "temperature": 0.8}),
    ("cell page data", "/api/cell/1/c/5", None),
    ("compare every served model", "/api/compare", {"text": text, "feature": "comment"}),
    ("memory horizon (first)", "/api/horizon", None),
]
for name, path, body in steps:
    s, n = req(path, body)
    print(f"{name:30s} {s * 1000:7.0f} ms {n:10d} bytes")
PY
