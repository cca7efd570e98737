"""Cost of collecting per-latent evidence in the evaluation pass, measured side by side.

Runs the same TopK transcoder (k=32) over the same batches of the built-in corpus on SmolLM2 with
and without the latents collector, alternating the two to share warm-up and noise, in the cheapest
pass there is (reconstruction only, forward stopped after the layer), so the relative overhead is
the largest it gets. Then builds the latents record and page once and prints their sizes.

    python benchmarks/latents_cost.py --d_sae 2304 --batches 10
    python benchmarks/latents_cost.py --d_sae 16384 --batches 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from transcoderbench.config import LatentsConfig
from transcoderbench.evaluate import prepare_runs, run_pass
from transcoderbench.latents import LatentCollector, finish_latents, latents_record, plan_latents, render_latents_page
from transcoderbench.lm import load_language_model
from transcoderbench.transcoders import TopKTranscoder
from workload import add_workload_args, builtin_batches, set_threads


def timed(collector: Any, inside: list[float]) -> Any:
    """The collector, with the wall time of each ``update`` appended to ``inside``."""
    update = collector.update

    def wrapper(batch: Any) -> None:
        start = time.perf_counter()
        update(batch)
        if batch.f.is_cuda:
            torch.cuda.synchronize()
        inside.append(time.perf_counter() - start)

    collector.update = wrapper
    return collector


def synthetic_page_size(d_sae: int, top_k: int, n_sequences: int, seq_len: int = 128, vocab: int = 49152) -> None:
    """Upper bound of the page size: every latent fires, every slot is filled, every sequence is retained."""
    g = torch.Generator().manual_seed(0)
    c = LatentCollector(d_sae, top_k=top_k, samples=5)
    st = c.state
    for prefix in ("top", "smp"):
        slots = st[f"{prefix}_act"].shape[1]
        st[f"{prefix}_act"] = torch.rand(d_sae, slots, generator=g).sort(dim=1, descending=True).values * 10
        st[f"{prefix}_seq"] = torch.randint(0, n_sequences, (d_sae, slots), generator=g)
        st[f"{prefix}_pos"] = torch.randint(1, seq_len, (d_sae, slots), generator=g)
    st["smp_key"] = torch.rand(d_sae, 5, generator=g)
    st["count"] = torch.randint(1, 5000, (d_sae,), generator=g)
    st["act_sum"] = st["count"].double() * 2.5
    st["n_tokens"] = torch.tensor(n_sequences * (seq_len - 1))
    st["hist"] = torch.randint(0, 300, (d_sae * 32,), generator=g) * (torch.arange(d_sae * 32) % 32 < 12)
    c.sequences.tokens = {
        s: torch.randint(0, vocab, (seq_len,), generator=g, dtype=torch.int32) for s in range(n_sequences)
    }
    tc = TopKTranscoder(
        torch.zeros(8, d_sae),
        torch.zeros(d_sae),
        torch.randn(d_sae, 8, generator=g),
        torch.zeros(8),
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_out",
        k=1,
    )
    record = latents_record("synthetic", tc, c.evidence(), None)
    for lat in record["latents"]:  # what the logit lens adds with a real model: 2 x 10 [token, logit] pairs
        lat["up"] = [[int(t), 1.234] for t in torch.randint(0, vocab, (10,), generator=g)]
        lat["down"] = [[int(t), -1.234] for t in torch.randint(0, vocab, (10,), generator=g)]
    record["vocab"].update({str(i): f"tok{i}" for i in range(vocab)})
    page = render_latents_page(record)
    print(
        f"synthetic upper bound: d_sae {d_sae}, top_k {top_k}, 5 samples, {n_sequences} sequences of {seq_len}: "
        f"latents.html {len(page.encode()) / 1e6:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser, batches=10, repeats=3)
    parser.add_argument("--d_sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument(
        "--size_only",
        type=int,
        default=0,
        metavar="N_SEQUENCES",
        help="only print the synthetic upper bound of the page size with N_SEQUENCES retained",
    )
    args = parser.parse_args()
    if args.size_only:
        synthetic_page_size(args.d_sae, args.top_k, args.size_only, args.seq_len)
        return
    set_threads(args)
    lm = load_language_model(args.model)
    d = lm.d_model
    g = torch.Generator().manual_seed(0)
    tc = TopKTranscoder(
        torch.randn(d, args.d_sae, generator=g) * 0.05,
        torch.zeros(args.d_sae),
        torch.randn(args.d_sae, d, generator=g) * 0.02,
        torch.zeros(d),
        input_site=f"blocks.{args.layer}.hook_mlp_in",
        output_site=f"blocks.{args.layer}.hook_mlp_out",
        k=args.k,
    )
    batches = builtin_batches(lm, args)
    config = LatentsConfig(latents=True, latents_top_k=args.top_k)
    times: dict[bool, list[float]] = {False: [], True: []}
    inside: list[float] = []
    plan = None
    for _ in range(args.repeats):
        for with_latents in (False, True):
            runs = prepare_runs(lm, {"tc": tc})
            if with_latents:
                plan = plan_latents({"tc": tc}, config)
                runs[0].accumulators["latents"] = timed(plan.collectors["tc"], inside)
            start = time.perf_counter()
            run_pass(lm, runs, batches, show_progress=False)
            times[with_latents].append(time.perf_counter() - start)
    base, extra = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"{args.batches} batches x {args.batch_size} x {args.seq_len} tokens, d_sae {args.d_sae}, k {args.k}, "
        f"top_k {args.top_k}, threads {torch.get_num_threads()}"
    )
    print(
        f"pass without latents: {base:.2f} s (median of {args.repeats}: {', '.join(f'{t:.2f}' for t in times[False])})"
    )
    print(
        f"pass with latents:    {extra:.2f} s (median of {args.repeats}: {', '.join(f'{t:.2f}' for t in times[True])})"
    )
    print(f"overhead: {100 * (extra / base - 1):+.1f}% (difference of wall times; noisy on a shared machine)")
    per_pass = sum(inside) / args.repeats
    print(f"time inside the collector: {per_pass:.2f} s per pass = {100 * per_pass / base:.1f}% of the pass without it")
    assert plan is not None
    start = time.perf_counter()
    records, _ = finish_latents(plan, {"tc": tc}, lm)
    page = render_latents_page(records["tc"])
    print(
        f"after the pass: record + page built in {time.perf_counter() - start:.2f} s; "
        f"latents.html {len(page.encode()) / 1e6:.2f} MB, {len(records['tc']['sequences'])} sequences retained"
    )


if __name__ == "__main__":
    main()
