"""transcoderbench's evaluation on the held-out rows the peers read; prints one JSON line.

    PYTHONPATH=src python benchmarks/peers/eval_ours.py TOKENS CHECKPOINT [--batch 8]

The pass reads ``builtin:pydoc_data.topics`` packed as ``make_tokens.py`` packs it; the script
first checks, row by row, that these are exactly TOKENS' ``eval`` rows (so the peers' numbers
are for the same sequences). One streaming pass gives what SAELens needs two for: reconstruction,
sparsity, dead latents, and CE/KL with the transcoder spliced in and zero-ablated. ``eval_s``
times ``evaluate_transcoders`` (the pass, tokenising included); ``total_s`` the whole process.
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
from make_tokens import HELD_OUT, SEQ_LEN  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from transcoderbench.config import EvalConfig  # noqa: E402
from transcoderbench.data import resolve_text_source, token_batches  # noqa: E402
from transcoderbench.evaluate import evaluate_transcoders  # noqa: E402
from transcoderbench.formats import load_transcoder  # noqa: E402
from transcoderbench.lm import load_language_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens")
    ap.add_argument("checkpoint")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    rows = load_file(args.tokens)["eval"]
    n_batches = len(rows) // args.batch
    lm = load_language_model("smollm2-135m", device="cpu")
    ours = torch.cat(
        [
            tb.input_ids
            for tb in token_batches(
                resolve_text_source(HELD_OUT), lm.tokenizer, seq_len=SEQ_LEN, batch_size=args.batch, n_batches=n_batches
            )
        ]
    )
    if not torch.equal(ours, rows[: len(ours)]):
        raise SystemExit(f"eval_ours: {HELD_OUT} packs differently from {args.tokens}'s eval rows")
    config = EvalConfig()
    config.data.dataset, config.data.batches, config.data.batch_size = HELD_OUT, n_batches, args.batch
    config.data.seq_len, config.run_absorption = SEQ_LEN, False
    tc = load_transcoder(args.checkpoint)
    t0 = time.perf_counter()
    result = evaluate_transcoders({"ours": tc}, config, lm=lm, log=lambda msg: None)
    eval_s = time.perf_counter() - t0
    m = result.metrics["ours"]
    rec, sp, ds = m["reconstruction"], m["sparsity"], m["downstream"]
    print(
        json.dumps(
            {
                "tool": "transcoderbench",
                "explained_variance": rec["explained_variance"],
                "explained_variance_legacy": rec["explained_variance_legacy"],
                "cosine": rec["cosine_similarity"],
                "mse": rec["mse"],
                "l0": sp["l0_mean"],
                "dead": sp["dead_latents"],
                "ce_clean": ds["ce_clean"],
                "ce_spliced": ds["ce_spliced"],
                "ce_zero_ablation": ds["ce_zero_ablation"],
                "ce_loss_score": ds["loss_recovered_zero"],
                "kl_spliced": ds["kl_div"],
                "rows": len(ours),
                "eval_s": eval_s,
                "total_s": time.perf_counter() - START,
            }
        )
    )


if __name__ == "__main__":
    main()
