#!/usr/bin/env bash
# Load test of `cellscope serve` with the shipped model (issue 11's goals):
#   A. 32 connections, POST /api/trace on 2,000 characters (full trace computed,
#      one cell returned; every request a different text, so the trace cache
#      does not answer it), for DURATION seconds;
#   B. 8 connections, POST /api/trace?format=npy on 20,000 characters (layer 1,
#      all 512 c cells: a 41 MB answer each), for DURATION seconds.
# Prints requests/s, latency p50/p99, errors (non-2xx + socket errors), the
# server's peak RSS, and its RSS before and after (memory back to baseline?).
# Needs wrk (Debian package; installed if missing). Usage: scripts/load-test.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
PORT=${PORT:-3917}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || as_root apt-get install -y --no-install-recommends wrk >/dev/null

work=$(mktemp -d)

python3 - "$work" <<'EOF'
import json, sys
src = open("tests/data/other_c/sample.c").read()
text = (src * 20)
json.dump({"text": text[:2000], "layers": [1], "kinds": ["c"], "cells": [42]}, open(sys.argv[1] + "/a.json", "w"))
# Pieces of text for A: request n sends src[7n : 7n + 2000] (JSON-escaped by wrk's Lua below).
open(sys.argv[1] + "/src.txt", "w").write(text[:60000])
json.dump({"text": text[:20000], "layers": [1], "kinds": ["c"], "top_k": 0}, open(sys.argv[1] + "/b.json", "w"))
EOF
cat > "$work/post.lua" <<'EOF'
local f = io.open(os.getenv("BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local vary = os.getenv("VARY")
local src, n = nil, 0
if vary then local g = io.open(vary, "rb"); src = g:read("*a"); g:close() end
local function esc(s)
  return (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end))
end
function request()
  if not src then return wrk.format() end
  n = n + 1
  local at = (n * 7 + math.random(0, 50000)) % (#src - 2100)
  local body = '{"text":"' .. esc(src:sub(at + 1, at + 2000)) .. '","layers":[1],"kinds":["c"],"cells":[42]}'
  return wrk.format(nil, nil, nil, body)
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT requests=%d rps=%.1f p50_ms=%.0f p99_ms=%.0f errors=%d (non-2xx %d, timeouts %d)\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, errors, summary.errors.status, summary.errors.timeout))
end
EOF

SERVER_LOG="$work/server.log"
CLEANUP="rm -rf $work"
source scripts/with-server.sh
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$server/status; }
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$server/status; }

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores)"
echo "server: --max-concurrent 2 --max-queue 64 (defaults)"
# Warm up (the home page's sample trace, one request of each kind).
curl -sf localhost:$PORT/ >/dev/null
curl -sf -H 'content-type: application/json' -d @"$work/a.json" localhost:$PORT/api/trace >/dev/null
base=$(rss)
echo "baseline RSS: ${base} MB"

echo "== A: 32 connections, /api/trace, 2,000 chars, one cell, ${DURATION}s"
BODY="$work/a.json" VARY="$work/src.txt" wrk -t2 -c32 -d"${DURATION}s" --timeout 30s -s "$work/post.lua" "http://127.0.0.1:$PORT/api/trace" | grep RESULT
settle() { # requests already running finish after wrk stops; wait for the queue to drain
  for _ in $(seq 60); do sleep 1; [ "$(awk '/State/ {print $2}' /proc/$server/status)" = S ] && \
    [ "$(ps -o %cpu= -p $server | cut -d. -f1 | tr -d ' ')" -lt 5 ] && break; done; sleep 1; }
settle
echo "peak RSS so far: $(hwm) MB; RSS after: $(rss) MB"

echo "== B: 8 connections, /api/trace?format=npy, 20,000 chars, layer 1 c (41 MB answers), ${DURATION}s"
BODY="$work/b.json" wrk -t2 -c8 -d"${DURATION}s" --timeout 60s -s "$work/post.lua" "http://127.0.0.1:$PORT/api/trace?format=npy" | grep RESULT
settle
echo "peak RSS: $(hwm) MB; RSS after: $(rss) MB (baseline ${base} MB; the trace cache holds up to 256 MB of recent traces)"
echo "server log: $(grep -c WARN "$work/server.log" || true) warnings, $(grep -c ERROR "$work/server.log" || true) errors"
