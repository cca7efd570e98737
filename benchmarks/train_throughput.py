"""Training throughput: tokens per second, and the share of time in the language model vs the transcoder step.

Runs a short real training (``transcoderbench.train.train``) in streaming mode, so the language
model keeps producing fresh activations as in a long run, and reports:

- tokens/s of the whole run (first buffer fill included),
- tokens/s the language model delivers (forward up to the deepest needed layer, tokenizing included),
- tokens/s of the transcoder steps alone (forward, backward, Adam, bookkeeping),
- the share of wall time in each.

Usage (defaults: the built-in SmolLM2-135M at layer 10, the demo's transcoder size)::

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --architecture batchtopk --dict_size 4096 --steps 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from transcoderbench.lm import load_language_model
from transcoderbench.train import TrainConfig, train


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=10)
    p.add_argument("--architecture", default="matryoshka", choices=["matryoshka", "batchtopk", "topk"])
    p.add_argument("--dict_size", type=int, default=2304)
    p.add_argument("--top_k", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=1024, help="tokens per training step")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lm_batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--buffer_tokens", type=int, default=16384, help="small, so the model keeps running (streaming)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_start = time.perf_counter()
    lm = load_language_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - load_start
    groups = "1/16,1/8,1/4,9/16" if args.architecture == "matryoshka" else None
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            model=args.model,
            layer=args.layer,
            architecture=args.architecture,
            group_sizes=groups,
            dict_size=args.dict_size,
            top_k=args.top_k,
            batch_size=args.batch_size,
            token_budget=args.batch_size * args.steps,
            lm_batch_size=args.lm_batch_size,
            seq_len=args.seq_len,
            buffer_tokens=args.buffer_tokens,
            device=args.device,
            dead_window=4 * args.batch_size,
            warmup_steps=5,
            lr=3e-3,
            output_dir=f"{tmp}/run",
        )
        result = train(config, lm=lm, log=lambda msg: print(msg, file=sys.stderr))[0]
    t = result.timing
    tokens = args.batch_size * args.steps
    lm_tokens = result.transcoder.info["training"]["buffer"]["lm_tokens_read"]
    other = t["total_seconds"] - t["lm_seconds"] - t["transcoder_seconds"]
    out = {
        "model": args.model,
        "layer": args.layer,
        "architecture": args.architecture,
        "dict_size": args.dict_size,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "model_load_seconds": round(load_seconds, 2),
        "training_tokens": tokens,
        "lm_tokens_read": lm_tokens,
        "total_seconds": round(t["total_seconds"], 2),
        "lm_seconds": round(t["lm_seconds"], 2),
        "transcoder_seconds": round(t["transcoder_seconds"], 2),
        "other_seconds": round(other, 2),
        "tokens_per_second": round(tokens / t["total_seconds"], 1),
        "lm_tokens_per_second": round(lm_tokens / max(t["lm_seconds"], 1e-9), 1),
        "transcoder_tokens_per_second": round(tokens / max(t["transcoder_seconds"], 1e-9), 1),
        "lm_share": round(t["lm_seconds"] / t["total_seconds"], 3),
        "transcoder_share": round(t["transcoder_seconds"] / t["total_seconds"], 3),
        "last_step_fvu": round(result.final_metrics["fvu"], 4),
    }
    print(
        f"training throughput: {out['tokens_per_second']:,.0f} tokens/s over {tokens:,} tokens "
        f"({out['total_seconds']:.1f} s)"
    )
    print(
        f"  language model: {out['lm_share']:.0%} of the time, {out['lm_tokens_per_second']:,.0f} tokens/s "
        f"(forward to layer {args.layer})"
    )
    print(
        f"  transcoder steps: {out['transcoder_share']:.0%} of the time, "
        f"{out['transcoder_tokens_per_second']:,.0f} tokens/s"
    )
    print(f"  other (shuffling, logging, checkpoint): {other:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
