#!/usr/bin/env bash
# One virtual environment per peer, CPU torch pinned first so no peer pulls a CUDA build.
# Usage: bash benchmarks/peers/setup.sh [ROOT]   (default ROOT: ./peer-venvs, outside git's view via .gitignore of venvs)
set -euo pipefail
ROOT=${1:-peer-venvs}
TORCH=${TORCH_SPEC:-torch==2.13.0}
mkdir -p "$ROOT"
make_venv() {  # name, packages...
  local name=$1; shift
  [ -x "$ROOT/$name/bin/python" ] || python3 -m venv "$ROOT/$name"
  "$ROOT/$name/bin/pip" install -q --upgrade pip
  # CPU wheel first (a plain `pip install torch` on Linux is the CUDA build).
  # No retries there: where that index is unreachable (a registry mirror only), fall back at once.
  "$ROOT/$name/bin/pip" install -q --retries 0 --timeout 15 "$TORCH" \
    --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" 2>/dev/null \
    || "$ROOT/$name/bin/pip" install -q "$TORCH"
  # The pin holds for the peers' own dependencies too (sae-bench's torchvision would otherwise
  # replace it with the newest CUDA torch).
  "$ROOT/$name/bin/pip" install -q -c <(echo "$TORCH") "$@"
  "$ROOT/$name/bin/python" -c "import torch; print('$name', torch.__version__)"
}
make_venv sparsify "eai-sparsify==1.3.3"
# SAELens 6.x needs TransformerLens 3.x: 4.x changed the hooked-model API it imports.
make_venv saelens "sae-lens==6.54.*" "transformer-lens<4"
make_venv saebench "sae-bench==0.6.*" "transformer-lens<4"
# sae-bench requires torchvision, and pip pairs the pinned CPU torch with a torchvision wheel built
# for the CUDA one; its operators then fail to register ("operator torchvision::nms does not
# exist"), and transformers, seeing torchvision installed, cannot import the BERT classes that
# TransformerLens imports. SAEBench's core and absorption evaluations never use torchvision.
if ! "$ROOT/saebench/bin/python" -c "import torch, torchvision; torch.ops.torchvision.nms" 2>/dev/null; then
  "$ROOT/saebench/bin/pip" uninstall -y -q torchvision
fi
