#!/usr/bin/env bash
# How far back the shipped model looks (POST /api/saliency): the gradient of one
# prediction with respect to every earlier input, for a closing brace and a closing
# quote in the model's reference text, and the median 1% horizon over 40 positions.
# Usage: scripts/saliency-example.sh   (starts its own server on $PORT)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3920}
source scripts/with-server.sh

PORT=$PORT python3 - <<'PY'
import json, os, random, statistics, urllib.request
base = f"http://127.0.0.1:{os.environ['PORT']}"
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))
ref = open("models/linux-lstm.reference.txt").read()
def show(label, p):
    r = post("/api/saliency", {"text": ref, "position": p})
    g = r["grad_norm"]
    peak = max(g)
    at = lambda d: g[p - d - r["first"]] / peak if p - d >= r["first"] else float("nan")
    line = ref[max(0, p - 40) : p + 1].replace("\t", "\\t").replace("\n", "\\n")
    print(f"{label}: position {p}, predicting {r['target']!r} after {line.strip()[-40:]!r} (ln p = {r['logp']:.3f})")
    print("  distance:    " + " ".join(f"{d:>7}" for d in [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]))
    print("  grad / peak: " + " ".join(f"{at(d):7.4f}" for d in [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]))
    print(f"  stays above 1% of its peak up to {r['horizon_1pct']} characters back")
brace = next(i - 1 for i in range(3000, len(ref)) if ref[i] == "}" and ref[i - 1] == "\t")
show("closing brace", brace)
quote = next(i - 1 for i in range(3000, len(ref)) if ref[i] == '"' and ref.count('"', 0, i) % 2 == 1)
show("closing quote", quote)
random.seed(1)
positions = sorted(random.sample(range(500, len(ref) - 2), 40))
horizons = [post("/api/saliency", {"text": ref, "position": p})["horizon_1pct"] for p in positions]
print(f"\nmemory horizon: median distance at which the gradient falls below 1% of its peak, "
      f"over 40 random positions of the reference text: {statistics.median(horizons)} characters "
      f"(quartiles {statistics.quantiles(horizons, n=4)})")
PY
