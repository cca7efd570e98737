#!/usr/bin/env bash
# SAELens run_evals, SAEBench core and absorption against transcoderbench on the same SAE and tokens.
# Needs: bash benchmarks/peers/setup.sh (the saelens and saebench venvs) and run_training.sh's
# outputs in WORK (tokens.safetensors and the TopK SAE in WORK/ours), or CHECKPOINT=... Not part of CI.
# Usage: bash benchmarks/peers/run_eval.sh [WORK_DIR]   (run from the repository root)
#   ROUNDS (default 2): interleaved rounds of the three core evaluations
#   WORDS (default 4000): absorption word budget for every tool (SAEBench's own default, all 47k
#   letter-only tokens, takes hours on a CPU)
set -euo pipefail
WORK=${1:-peer-runs}
VENVS=${PEER_VENVS:-peer-venvs}
PY=${PYTHON:-python}
SAELENS_PY=${SAELENS_PYTHON:-$VENVS/saelens/bin/python}
SAEBENCH_PY=${SAEBENCH_PYTHON:-$VENVS/saebench/bin/python}
CHECKPOINT=${CHECKPOINT:-$WORK/ours}
ROUNDS=${ROUNDS:-2}
WORDS=${WORDS:-4000}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
[ -d "$CHECKPOINT" ] || { echo "run_eval.sh: $CHECKPOINT not found; run benchmarks/peers/run_training.sh $WORK first, or set CHECKPOINT" >&2; exit 2; }
[ -f "$WORK/tokens.safetensors" ] || $PY benchmarks/peers/make_tokens.py "$WORK/tokens.safetensors"
MODEL_DIR=$($PY benchmarks/peers/model_dir.py)
rm -rf "$WORK/sae-saelens"
$PY -m transcoderbench export --format saelens --output_dir "$WORK/sae-saelens" "$CHECKPOINT" >/dev/null
OUT=$WORK/eval.jsonl
: > "$OUT"; : > "$WORK/stderr.log"
quiet() { grep -E '^\{' || true; }  # the JSON line only; progress bars and warnings go to stderr.log

for round in $(seq 1 "$ROUNDS"); do
  echo "core round $round: transcoderbench, SAELens, SAEBench" >&2
  $PY benchmarks/peers/eval_ours.py "$WORK/tokens.safetensors" "$CHECKPOINT" 2>>"$WORK/stderr.log" | quiet >> "$OUT"
  "$SAELENS_PY" benchmarks/peers/eval_saelens.py "$WORK/tokens.safetensors" "$MODEL_DIR" "$WORK/sae-saelens" 2>>"$WORK/stderr.log" | quiet >> "$OUT"
  "$SAEBENCH_PY" benchmarks/peers/eval_saebench.py core "$WORK/tokens.safetensors" "$MODEL_DIR" "$WORK/sae-saelens" 2>>"$WORK/stderr.log" | quiet >> "$OUT"
  if [ "$round" = 1 ]; then
    # Absorption once, between the core rounds; every tool starts from an empty cache.
    train=$((WORDS * 4 / 5)); test=$((WORDS - train))
    for variant in cpu-default one-prompt-per-word; do
      echo "absorption: transcoderbench $variant" >&2
      # cpu-default: our CPU defaults (3,000 / 1,000 words, 32 words share one context);
      # one-prompt-per-word: SAEBench's way, on its split of the same budget.
      flags=()
      [ "$variant" = one-prompt-per-word ] && flags=(--absorption_train_words "$train" --absorption_test_words "$test" \
        --absorption_words_per_context 1 --absorption_batch_size 64)
      rm -rf "$WORK/absorption-$variant"
      start=$(date +%s.%N)
      $PY -m transcoderbench absorption --checkpoint "$CHECKPOINT" --name ours --no-progress ${flags[@]+"${flags[@]}"} \
        --absorption_cache_dir "$WORK/absorption-$variant/cache" --output_dir "$WORK/absorption-$variant" >/dev/null 2>>"$WORK/stderr.log"
      $PY benchmarks/peers/eval_table.py --absorption_json "$WORK/absorption-$variant/absorption.json" \
        --variant "$variant" --seconds "$(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT"
    done
    echo "absorption: SAEBench ($WORDS words)" >&2
    # SAEBench reports nothing unless 20 letters pass its probe (F1 > 0.6); at CPU budgets fewer do,
    # so its gate is lowered and the table says how many letters each tool scored.
    "$SAEBENCH_PY" benchmarks/peers/eval_saebench.py absorption "$MODEL_DIR" "$WORK/sae-saelens" \
      --out "$WORK/absorption-saebench" --words "$WORDS" --min_letters "${SAEBENCH_MIN_LETTERS:-1}" 2>>"$WORK/stderr.log" | quiet >> "$OUT"
  fi
done
$PY benchmarks/peers/eval_table.py "$OUT"
