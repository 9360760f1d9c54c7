#!/usr/bin/env bash
# The README's causal-lab example, measured on the shipped model:
#   1. the finder ranks h and c cells for "string", "comment" and "if" on the
#      first half of the model's reference text (Linux C);
#   2. each of the top 4 is ablated (0), held at its value outside the concept
#      (5th/95th percentile, on the side where the concept is not) and held at
#      its value inside, on the other half; prints the change in loss on the
#      concept's characters and on all others (nats per character);
#   3. a greedy sample with and without the best comment cell held "inside".
# Usage: scripts/causal-example.sh   (starts its own server on $PORT)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3918}
source scripts/with-server.sh

PORT=$PORT python3 - <<'PY'
import json, os, urllib.request
base = f"http://127.0.0.1:{os.environ['PORT']}"
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))
ref = open("models/linux-lstm.reference.txt").read()
find, test = ref[:5000], ref[5000:]   # find cells on one half, intervene on the other
cpu = open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()
print(f"cpu: {cpu}")
print("each entry: clamp value: Δ loss on the concept's characters / Δ loss on all other characters (nats/char)")
held = {}
for concept in ["string", "comment", "if"]:
    print(f"\n{concept}: the finder's top 4 h/c cells on reference[:5000], clamped on reference[5000:]")
    print(f"  {'cell':9} {'AUC':>5}  {'ablate (0)':>16}  {'held outside':>25}  {'held inside':>25}")
    for best in post("/api/cells/rank", {"text": find, "feature": concept, "kinds": ["h", "c"], "top_k": 4})["cells"]:
        L, K, n, sign = best["layer"], best["kind"], best["cell"], best["sign"]
        trace = post("/api/trace", {"text": find, "layers": [L], "kinds": [K], "cells": [n], "top_k": 0})
        vals = sorted(r[0] for r in trace["layers"][0][K])
        lo, hi = vals[len(vals) // 20], vals[-len(vals) // 20]
        inside, outside = (hi, lo) if sign > 0 else (lo, hi)
        cols = []
        for v in [0.0, outside, inside]:
            r = post("/api/intervene", {"text": test, "clamps": [{"layer": L, "kind": K, "cell": n, "value": v}]})
            c = next(x for x in r["concepts"] if x["concept"] == concept)
            cols.append((v, -c["mean_delta"], -c["mean_delta_others"]))
        fmt = lambda c, val=True: (f"{c[0]:+7.2f}: " if val else "") + f"{c[1]:+.3f} / {c[2]:+.3f}"
        print(f"  {L}/{K}/{n:<5} {best['score']:.3f}  {fmt(cols[0], False):>16}  {fmt(cols[1]):>25}  {fmt(cols[2]):>25}")
        held.setdefault(concept, (L, K, n, inside))
    print(f"  (the unclamped model's loss on that text: {r['loss_base']:.3f} nats/char)")
L, K, n, inside = held["comment"]
for label, clamps in [("plain", []),
                      (f"comment cell {L}/{K}/{n} held at its inside value {inside:.2f}",
                       [{"layer": L, "kind": K, "cell": n, "value": inside}])]:
    s = post("/api/sample", {"prime": "static int ", "length": 200, "temperature": 0, "clamps": clamps})
    print(f"\ngreedy sample, {label}:\nstatic int {s['text']}")
PY
