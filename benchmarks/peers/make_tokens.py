"""Write the token batches every tool sees (ours, sparsify, SAELens) to one safetensors file.

Our own packing (BOS first, documents joined by EOS, seq_len 128) of the built-in training text
(``builtin:stdlib-docstrings``) and held-out text (``builtin:pydoc_data.topics``), so the peers
read exactly the sequences our trainer and evaluator read.

    PYTHONPATH=src python benchmarks/peers/make_tokens.py OUT.safetensors [--train 93184] [--eval 16384]
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.lm import load_language_model

TRAIN, HELD_OUT, SEQ_LEN = "builtin:stdlib-docstrings", "builtin:pydoc_data.topics", 128


def sequences(tokenizer, dataset: str, n_tokens: int) -> torch.Tensor:
    rows, total = [], 0
    for tb in token_batches(resolve_text_source(dataset), tokenizer, seq_len=SEQ_LEN, batch_size=8):
        rows.append(tb.input_ids)
        total += tb.input_ids.numel()
        if total >= n_tokens:
            break
    return torch.cat(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=93_184)
    ap.add_argument("--eval", type=int, default=16_384)
    args = ap.parse_args()
    tokenizer = load_language_model("smollm2-135m", device="cpu").tokenizer
    save_file(
        {"train": sequences(tokenizer, TRAIN, args.train), "eval": sequences(tokenizer, HELD_OUT, args.eval)},
        args.out,
    )


if __name__ == "__main__":
    main()
