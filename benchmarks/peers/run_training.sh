#!/usr/bin/env bash
# sparsify vs transcoderbench training on the same tokens, width and k; held-out FVU by our evaluator.
# Needs: bash benchmarks/peers/setup.sh (the sparsify venv). Not part of CI.
# Usage: bash benchmarks/peers/run_training.sh [WORK_DIR]   (run from the repository root)
set -euo pipefail
WORK=${1:-peer-runs}
VENVS=${PEER_VENVS:-peer-venvs}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
mkdir -p "$WORK"
MODEL_DIR=$($PY benchmarks/peers/model_dir.py)
$PY benchmarks/peers/make_tokens.py "$WORK/tokens.safetensors"

# Ours: a TopK SAE on the same site and token count (our tokens are the ones make_tokens.py wrote),
# with our short-run recipe (the demo's: Adam 3e-3 -> 3e-4 cosine after 20 warmup steps, batches of
# 512 tokens, dead latents noticed after 20k tokens); the CLI defaults are for runs of ~50M tokens.
start=$(date +%s.%N)
$PY -m transcoderbench train --model smollm2-135m --input_site blocks.10.hook_resid_post \
  --output_site blocks.10.hook_resid_post --architecture topk --dict_size 2304 --top_k 32 \
  --dataset builtin:stdlib-docstrings --token_budget 93184 --dataset_tokens 93184 --batch_tokens 512 \
  --lr 3e-3 --min_lr 3e-4 --warmup_steps 20 --top_k_aux 256 --dead_window 20000 \
  --optimizer "${OURS_OPTIMIZER:-adam}" --device cpu --no-progress --output_dir "$WORK/ours" --overwrite
ours_s=$(echo "$(date +%s.%N) - $start" | bc)
echo "ours: $ours_s s wall"

start=$(date +%s.%N)
"${SPARSIFY_PYTHON:-$VENVS/sparsify/bin/python}" benchmarks/peers/train_sparsify.py "$WORK/tokens.safetensors" \
  "$MODEL_DIR" "$WORK/sparsify" ${SPARSIFY_ARGS:-}
sparsify_s=$(echo "$(date +%s.%N) - $start" | bc)
echo "sparsify: $sparsify_s s wall"

for tool in ours sparsify; do
  ckpt="$WORK/$tool"; [ "$tool" = sparsify ] && ckpt="$WORK/sparsify/sparsify/layers.10"
  $PY -m transcoderbench evaluate --checkpoint "$ckpt" --model smollm2-135m --name "$tool" --dataset builtin:pydoc_data.topics \
    --batches 16 --batch_size 8 --seq_len 128 --no-downstream --no-absorption --output_dir "$WORK/eval-$tool" >/dev/null
done
$PY benchmarks/peers/table.py "$WORK" "$ours_s" "$sparsify_s"
