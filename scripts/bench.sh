#!/usr/bin/env bash
# Trace throughput, cellscope beside PyTorch on the same weights (benches/trace.rs).
#   scripts/bench.sh                          # random 2×256 and 2×512 models
#   scripts/bench.sh --model m.safetensors    # a trained model
#   scripts/bench.sh --no-torch --min-time 1
# One thread on both sides: GEMMs in matrixmultiply and torch.set_num_threads(1).
set -euo pipefail
cd "$(dirname "$0")/.."
export MATMUL_NUM_THREADS=1
exec cargo bench --bench trace -- "$@"
