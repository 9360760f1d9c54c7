#!/usr/bin/env bash
# Trains (or resumes) the shipped Linux model. Re-run the same command to continue
# after a stop: it resumes from the checkpoint when one exists.
#   scripts/linux-corpus.sh            # once: builds data/linux/{train,val,test}.txt
#   scripts/train-linux.sh [extra flags, e.g. --max-minutes 120]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CELLSCOPE_BIN:-target/release/cellscope}
OUT=${OUT:-checkpoints/linux-2x512.safetensors}
mkdir -p "$(dirname "$OUT")"
RESUME=()
if [ -e "${OUT%.safetensors}.ckpt.safetensors" ]; then RESUME=(--resume); fi
exec "$BIN" train --train data/linux/train.txt --val data/linux/val.txt --test data/linux/test.txt \
  --out "$OUT" --layers 2 --hidden 512 --batch 50 --seq 100 --lr 2e-3 --optimizer adam --clip 5 \
  --dropout 0.1 --epochs 10 --decay-after 4 --lr-decay 0.85 --eval-every 1000 --threads 2 --seed 1 \
  "${RESUME[@]}" "$@"
