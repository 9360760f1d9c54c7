#!/usr/bin/env bash
# The README's comparison of the served models (issue 13): per model its size, training
# budget, validation and test loss (from the model file's metadata, written by the
# trainer), and on the reference text (models/linux-lstm.reference.txt) its best cell
# for three concepts (POST /api/compare, all layers and kinds) and how far back its
# predictions look (median 1% gradient horizon over 16 positions, up to 300 back, and
# the median relative gradient at distances 10, 50, 100).
# Usage: scripts/compare-table.sh   (starts its own server on $PORT with every model in models/)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3921}
source scripts/with-server.sh

PORT=$PORT python3 - <<'PY'
import json, os, urllib.request
base = f"http://127.0.0.1:{os.environ['PORT']}"
def get(path):
    return json.load(urllib.request.urlopen(base + path, timeout=600))
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=1800))
ref = open("models/linux-lstm.reference.txt").read()
def num(v, spec):
    return "—" if v is None else format(v, spec)
models = get("/api/models")["models"]
print("| model | layers × H | parameters | steps (epochs) | best val | test loss |")
print("|---|---|---:|---:|---:|---:|")
for m in models:
    t = get(f"/api/model?model={m['id']}")["train"]
    print(f"| `{m['id']}` ({m['arch'].upper()}) | {m['layers']} × {m['hidden_size']} | {m['params']:,} | "
          f"{num(t.get('steps'), ',')} ({num(t.get('epochs'), '.1f')}) | {num(t.get('best_val_loss'), '.3f')} | "
          f"{num(m['test_loss'], '.3f')} |")
concepts = ["string", "if", "comment"]
rows = {m["id"]: {} for m in models}
for i, c in enumerate(concepts):
    # The gradient curves once (the first concept's call); the others rank cells only.
    reach = {"positions": 16, "max_back": 300} if i == 0 else {"positions": 1, "max_back": 1}
    r = post("/api/compare", {"text": ref, "feature": c, "top_k": 1, **reach})
    for m in r["models"]:
        b = m["best"][0]
        rows[m["id"]][c] = f"{b['score']:.3f} ({b['layer']}/{b['kind']}/{b['cell']})"
        if i == 0:
            rows[m["id"]]["h"] = m["horizon"]
print()
print("| model | " + " | ".join(f"best `{c}` cell, AUC (layer/kind/cell)" for c in concepts)
      + " | 1% horizon, median (quartiles) | relative gradient at 10 / 50 / 100 back |")
print("|---|" + "---:|" * (len(concepts) + 2))
for m in models:
    h = rows[m["id"]]["h"]
    p = h["profile"]
    print(f"| `{m['id']}` | " + " | ".join(rows[m["id"]][c] for c in concepts)
          + f" | {h['median']:.0f} ({h['quartiles'][0]:.0f}–{h['quartiles'][1]:.0f}) | "
          + " / ".join(f"{p[d]:.1e}" for d in (10, 50, 100)) + " |")
PY
