"""Downstream (spliced) evaluation cost against its floor, for 1, 2 and 4 transcoders.

The floor is the language-model work that cannot be avoided: one clean forward to the logits,
plus, for every spliced variant (each transcoder's nested prefixes and the zero/mean ablations
of the site), the layers after the splice layer and the head. It is measured with plain calls
of the model's own modules on the same batches, with no transcoder, no loss and no metric work.
Our time is the whole downstream evaluation (``run_pass`` with a splice plan: transcoders,
reconstruction metrics, CE, KL and per-sequence sums). Both are timed in one process,
alternating, best of ``--repeats``.

    python benchmarks/downstream.py --layer 10 --batches 4
"""

from __future__ import annotations

import argparse
import time

import torch

from transcoderbench.evaluate import plan_downstream, prepare_runs, run_pass
from transcoderbench.lm import load_language_model
from transcoderbench.lm.splice import clean_forward, find_head, resume
from transcoderbench.transcoders import MatryoshkaTranscoder
from workload import add_workload_args, builtin_batches, set_threads


def transcoder(d: int, layer: int, seed: int) -> MatryoshkaTranscoder:
    g = torch.Generator().manual_seed(seed)
    width = 4 * d
    return MatryoshkaTranscoder(
        torch.randn(d, width, generator=g) * 0.05,
        torch.zeros(width),
        torch.randn(width, d, generator=g) * 0.02,
        torch.zeros(d),
        input_site=f"blocks.{layer}.hook_mlp_in",
        output_site=f"blocks.{layer}.hook_mlp_out",
        prefix_ends=[d // 2, d, 2 * d, width],
        threshold=0.1,
    )


@torch.no_grad()
def floor_time(lm, batches, layer: int, n_variants: int) -> float:
    """Clean forward with logits + n_variants x (remaining layers + head), plain module calls, timed."""
    head = find_head(lm)
    total = 0.0
    for tb in batches:
        ids, mask = tb.input_ids, tb.attention_mask
        clean = clean_forward(lm, ids, mask, [], {layer}, head)  # untimed: only to get the later blocks' arguments
        t0 = time.perf_counter()
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        for _ in range(n_variants):
            h = resume(lm, clean, layer, clean.block_outputs[layer])
            head(h)
        total += time.perf_counter() - t0
    return total


def ours_time(lm, batches, tcs, variants_per_pass: int) -> float:
    runs = prepare_runs(lm, tcs, n_sequences=len(batches) * batches[0].input_ids.shape[0])
    plan = plan_downstream(
        lm,
        runs,
        batches[:1],
        n_sequences=len(batches) * batches[0].input_ids.shape[0],
        variants_per_pass=variants_per_pass,
    )
    start = time.perf_counter()
    run_pass(lm, runs, batches, splice=plan, show_progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser, batches=4, repeats=2)
    parser.add_argument("--variants_per_pass", type=int, default=4)
    parser.add_argument("--counts", default="1,2,4")
    args = parser.parse_args()
    set_threads(args)
    lm = load_language_model(args.model)
    batches = builtin_batches(lm, args)
    tokens = len(batches) * args.batch_size * args.seq_len
    print(
        f"model {args.model}, splice at layer {args.layer} of {lm.n_layers}, {tokens:,} tokens, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    print(f"{'transcoders':>11} {'variants':>8} {'floor s':>9} {'ours s':>9} {'ratio':>7}")
    for count in (int(c) for c in args.counts.split(",")):
        tcs = {f"t{i}": transcoder(lm.d_model, args.layer, i) for i in range(count)}
        n_variants = 2 + sum(len(tc.prefix_ends) for tc in tcs.values())
        floor, ours = [], []
        for _ in range(args.repeats):
            floor.append(floor_time(lm, batches, args.layer, n_variants))
            ours.append(ours_time(lm, batches, tcs, args.variants_per_pass))
        print(f"{count:>11} {n_variants:>8} {min(floor):>9.2f} {min(ours):>9.2f} {min(ours) / min(floor):>6.2f}x")


if __name__ == "__main__":
    main()
