#!/usr/bin/env bash
# Trains (or resumes) the three comparison models of issue 13 on the Linux split with
# the same budget and about the same number of parameters (V = 97 characters):
#   lstm  2 × 256   914,785 parameters
#   gru   2 × 297   912,778
#   rnn   2 × 520   914,257   (tanh)
# Same data, batch 50 × seq 100, Adam 2e-3, clip 5, no dropout, validation and checkpoint
# every 250 steps, seed 1. The budget is the same for all three: --steps N (default 4460 =
# 4 epochs of 1,115 batches, 22.3 M characters, the schedule's constant-LR phase; the
# schedule itself is the default model's, 10 epochs with LR × 0.85 per epoch after 4, so
# a larger --steps continues the same runs). Ten epochs of all three take about 9 hours
# of a 2-core machine; four take about 3.5.
#
#   scripts/linux-corpus.sh                          # once: data/linux/{train,val,test}.txt
#   scripts/train-compare.sh [--max-minutes M] [--rounds R] [--steps N]
#
# The three take turns, M minutes each (default 20), so they advance together and can be
# compared at any point; each turn resumes its model from its checkpoint. Without
# --rounds it goes on until all three have finished. Re-run the same command to continue
# after a stop (Ctrl-C saves a checkpoint; a kill loses at most 250 steps of one model).
# Environment: CELLSCOPE_BIN (default target/release/cellscope), DIR (default
# checkpoints/compare), ARCHS (default "lstm gru rnn"). Each model writes
# $DIR/{arch}.safetensors, .ckpt.safetensors, .log.jsonl, and this script appends the
# progress lines to $DIR/{arch}.out and the last report to $DIR/{arch}.report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CELLSCOPE_BIN:-target/release/cellscope}
DIR=${DIR:-checkpoints/compare}
ARCHS=${ARCHS:-lstm gru rnn}
MINUTES=20
ROUNDS=0
STEPS=4460
while [ $# -gt 0 ]; do
  case "$1" in
    --max-minutes) MINUTES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    *) echo "unknown argument $1 (use --max-minutes M, --rounds R, --steps N)" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR"

hidden() {
  case "$1" in
    lstm) echo 256 ;;
    gru) echo 297 ;;
    rnn) echo 520 ;;
    *) echo "unknown architecture $1" >&2; exit 2 ;;
  esac
}

# One turn of one model; prints "finished" or "more".
turn() {
  local arch=$1 out="$DIR/$1.safetensors" resume=()
  if [ -e "$DIR/$arch.ckpt.safetensors" ]; then resume=(--resume); fi
  "$BIN" train --arch "$arch" --layers 2 --hidden "$(hidden "$arch")" \
    --train data/linux/train.txt --val data/linux/val.txt --test data/linux/test.txt --out "$out" \
    --batch 50 --seq 100 --lr 2e-3 --optimizer adam --clip 5 --dropout 0 \
    --epochs 10 --decay-after 4 --lr-decay 0.85 --eval-every 250 --threads 2 --seed 1 \
    --max-steps "$STEPS" --max-minutes "$MINUTES" "${resume[@]}" >"$DIR/$arch.report.json" 2>>"$DIR/$arch.out"
  if grep -q '"interrupted": true' "$DIR/$arch.report.json"; then
    echo "interrupted"
  elif grep -q '"finished": true' "$DIR/$arch.report.json"; then
    echo "finished"
  else
    echo "more"
  fi
}

round=0
while :; do
  round=$((round + 1))
  left=0
  for arch in $ARCHS; do
    if [ -e "$DIR/$arch.report.json" ] && grep -q '"finished": true' "$DIR/$arch.report.json" &&
      grep -q "\"steps\": $STEPS," "$DIR/$arch.report.json"; then
      continue
    fi
    state=$(turn "$arch")
    echo "$(date -u +%FT%TZ) round $round: $arch $state ($(tail -c 300 "$DIR/$arch.log.jsonl" | tail -n 1))"
    case "$state" in
      interrupted) exit 130 ;;
      more) left=$((left + 1)) ;;
    esac
  done
  if [ "$left" -eq 0 ] || { [ "$ROUNDS" -gt 0 ] && [ "$round" -ge "$ROUNDS" ]; }; then
    break
  fi
done
