#!/usr/bin/env bash
# Training throughput, cellscope beside PyTorch on the same problem (benches/train.rs).
#   scripts/bench-train.sh                                  # 2×128 and 2×256, 1 and 2 threads
#   scripts/bench-train.sh --hidden 256 --threads 1 --runs 3 --steps 20
#   scripts/bench-train.sh --no-torch
# Each shard's GEMMs run on one thread (as in `cellscope train`); PyTorch gets
# torch.set_num_threads(T) for the same T.
set -euo pipefail
cd "$(dirname "$0")/.."
export MATMUL_NUM_THREADS=1
exec cargo bench --bench train -- "$@"
