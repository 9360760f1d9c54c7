#!/usr/bin/env bash
# Trace throughput, cellscope beside PyTorch on the same weights (benches/trace.rs).
#   scripts/bench.sh                          # random 2×256 and 2×512 models
#   scripts/bench.sh --model m.safetensors    # a trained model
#   scripts/bench.sh --no-torch --min-time 1
#   scripts/bench.sh --crossover --no-torch   # 1 against 2 threads by text length
# GEMMs in matrixmultiply on one thread; cellscope's rows on 1 thread and pipelined
# on 2 (Model::trace_clamped_with_threads), PyTorch's with torch.set_num_threads(1)
# and (fused) 2. The heading names the CPU. Run on a quiet machine: a second thread
# gains only where a second core is free.
set -euo pipefail
cd "$(dirname "$0")/.."
export MATMUL_NUM_THREADS=1
# The release profile, so the library built for `cargo test --release` is reused.
exec cargo bench --profile release --bench trace -- "$@"
