"""The workload the CPU benchmarks share: their common flags and the built-in corpus's first batches.

Imported by the scripts in this folder (``python benchmarks/NAME.py`` puts it on the path).
"""

from __future__ import annotations

import argparse

import torch

from transcoderbench.data import TokenBatch, resolve_text_source, token_batches
from transcoderbench.lm import LanguageModel


def add_workload_args(parser: argparse.ArgumentParser, *, batches: int, repeats: int) -> None:
    """``--model --layer --batches --batch_size --seq_len --repeats --threads``."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a loaded machine)")


def set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def builtin_batches(lm: LanguageModel, args: argparse.Namespace) -> list[TokenBatch]:
    """The first ``--batches`` batches of the built-in corpus, held in memory so every repeat reads the same."""
    source = resolve_text_source(None)
    return list(
        token_batches(source, lm.tokenizer, seq_len=args.seq_len, batch_size=args.batch_size, n_batches=args.batches)
    )
