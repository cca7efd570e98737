"""Train sparsify's TopK SAE (its own short-run recipe: schedule-free SignSGD, no auxiliary loss)
on the shared tokens; prints the wall time as JSON. Run with the sparsify venv's python.

    peer-venvs/sparsify/bin/python benchmarks/peers/train_sparsify.py TOKENS MODEL_DIR OUT_DIR [--exclude_special] [--shuffle]

``--exclude_special``: sparsify's ``exclude_tokens`` = the BOS, EOS and PAD ids, so it trains on the
positions ours trains on (ours never trains on them); without it, sparsify's default (every position).
``--shuffle``: the sequences in a random order (seed 0). sparsify's trainer reads them in the given
order ("the dataset should be shuffled before passing it to the trainer"); without it, file order.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from datasets import Dataset
from safetensors.torch import load_file
from sparsify import SaeConfig, TrainConfig, Trainer
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    tokens, model_dir, out = sys.argv[1:4]
    exclude: list[int] = []
    if "--exclude_special" in sys.argv[4:]:
        tok = AutoTokenizer.from_pretrained(model_dir)
        exclude = sorted({i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None})
    torch.manual_seed(0)
    ids = load_file(tokens)["train"]
    data = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    if "--shuffle" in sys.argv[4:]:
        data = data.shuffle(seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    cfg = TrainConfig(
        SaeConfig(num_latents=2304, k=32),
        batch_size=8,  # sequences of 128 tokens: 1024 tokens a step
        layers=[10],  # residual stream after block 10 = blocks.10.hook_resid_post
        save_dir=out,
        run_name="sparsify",
        log_to_wandb=False,
        save_every=10**9,
        exclude_tokens=exclude,
    )
    start = time.perf_counter()
    Trainer(cfg, data, model).fit()
    seconds = round(time.perf_counter() - start, 1)
    print(json.dumps({"tool": "sparsify", "train_s": seconds, "tokens": ids.numel(), "exclude_tokens": exclude}))


if __name__ == "__main__":
    main()
