"""Reconstruction-only evaluation with and without stopping the forward pass early.

Runs the same transcoder over the same batches of the built-in corpus on SmolLM2 twice in one
process, alternating the two modes to share warm-up and noise, and prints the wall times and
their ratio.

    python benchmarks/early_stop.py --layer 10 --batches 20
"""

from __future__ import annotations

import argparse
import time

import torch

from transcoderbench.evaluate import prepare_runs, run_pass
from transcoderbench.lm import load_language_model
from transcoderbench.transcoders import MatryoshkaTranscoder
from workload import add_workload_args, builtin_batches, set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser, batches=20, repeats=3)
    args = parser.parse_args()
    set_threads(args)
    lm = load_language_model(args.model)
    d = lm.d_model
    g = torch.Generator().manual_seed(0)
    tc = MatryoshkaTranscoder(
        torch.randn(d, 4 * d, generator=g) * 0.05,
        torch.zeros(4 * d),
        torch.randn(4 * d, d, generator=g) * 0.02,
        torch.zeros(d),
        input_site=f"blocks.{args.layer}.hook_mlp_in",
        output_site=f"blocks.{args.layer}.hook_mlp_out",
        prefix_ends=[d, 2 * d, 4 * d],
        threshold=0.1,
    )
    batches = builtin_batches(lm, args)
    times: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(args.repeats):
        for stop in (True, False):
            runs = prepare_runs(lm, {"tc": tc})
            start = time.perf_counter()
            run_pass(lm, runs, batches, stop_early=stop, show_progress=False)
            times[stop].append(time.perf_counter() - start)
            results[stop] = runs[0].results()["reconstruction"]["fvu"]
    assert results[True] == results[False], "early stop changed the metrics"
    early, full = min(times[True]), min(times[False])
    tokens = len(batches) * args.batch_size * args.seq_len
    print(
        f"model {args.model}, layer {args.layer} of {lm.n_layers}, {tokens:,} tokens, torch threads {torch.get_num_threads()}"
    )
    print(
        f"early stop after layer {args.layer}: {early:7.2f} s  ({tokens / early:,.0f} tokens/s)   [best of {args.repeats}]"
    )
    print(f"full forward:               {full:7.2f} s  ({tokens / full:,.0f} tokens/s)   [best of {args.repeats}]")
    print(f"speed-up from stopping early: {full / early:.2f}x (identical FVU: {results[True]:.6f})")


if __name__ == "__main__":
    main()
