"""Train sparsify's TopK SAE (its own short-run recipe: schedule-free SignSGD, no auxiliary loss)
on the shared tokens; prints the wall time as JSON. Run with the sparsify venv's python.

    peer-venvs/sparsify/bin/python benchmarks/peers/train_sparsify.py TOKENS MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time

import torch
from datasets import Dataset
from safetensors.torch import load_file
from sparsify import SaeConfig, TrainConfig, Trainer
from transformers import AutoModelForCausalLM


def main() -> None:
    tokens, model_dir, out = sys.argv[1:4]
    torch.manual_seed(0)
    ids = load_file(tokens)["train"]
    data = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    cfg = TrainConfig(
        SaeConfig(num_latents=2304, k=32),
        batch_size=8,  # sequences of 128 tokens: 1024 tokens a step
        layers=[10],  # residual stream after block 10 = blocks.10.hook_resid_post
        save_dir=out,
        run_name="sparsify",
        log_to_wandb=False,
        save_every=10**9,
    )
    start = time.perf_counter()
    Trainer(cfg, data, model).fit()
    print(json.dumps({"tool": "sparsify", "train_s": round(time.perf_counter() - start, 1), "tokens": ids.numel()}))


if __name__ == "__main__":
    main()
