"""Evaluation overhead against its floor: forward + each transcoder's encode + a sparse decode.

Two transcoders with 8 x d_model latents (Matryoshka BatchTopK with 5 nested groups, and
JumpReLU) on SmolLM2 layer 10, random weights with thresholds set so about ``--l0`` latents
fire per token. Default bootstrap (per-sequence sums and resampled target sums).

- reconstruction-only: ours = ``run_pass`` with the default accumulators (stopping the forward
  after the layer the sites need); floor = the same truncated forward (``capture``), the dense
  encode, and a decode that gathers the decoder rows of the active latents (``embedding_bag``),
  written here independently of the library.
- spliced: ours = ``run_pass`` with a splice plan (CE/KL of every prefix and of zero/mean
  ablation); floor = the clean forward to the logits, the same encode and sparse decode, and for
  every variant the blocks after the splice layer plus the head.

All modes run in one process on the same batches, alternating, ``--repeats`` times; medians are
printed. ``--split`` adds a per-stage split of one instrumented reconstruction-only pass.
``--rss`` instead runs a reconstruction-only pass in fresh subprocesses over 100 and 1000 small
batches and prints each one's peak RSS (memory must not grow beyond the per-sequence tables).

    python benchmarks/eval_overhead.py --batches 10 --repeats 5
    python benchmarks/eval_overhead.py --rss
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import torch
from torch import Tensor

from transcoderbench.data import TokenBatch, resolve_text_source, token_batches
from transcoderbench.evaluate import plan_downstream, prepare_runs, run_pass
from transcoderbench.lm import LanguageModel, capture, load_language_model, resolve_site
from transcoderbench.lm.capture import output_tensor
from transcoderbench.lm.splice import clean_forward, find_head
from transcoderbench.metrics.base import TranscoderBatch
from transcoderbench.metrics.bootstrap import attach_uncertainty
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder, Transcoder

clock = time.perf_counter  # --cpu_time: time.process_time (steadier when other jobs load the machine)


def make_transcoders(lm: LanguageModel, layer: int, calib: TokenBatch, l0: int) -> dict[str, Transcoder]:
    """Matryoshka (5 groups) and JumpReLU, 8 x d_model latents, thresholds giving about ``l0`` active latents."""
    d, width = lm.d_model, 8 * lm.d_model
    g = torch.Generator().manual_seed(0)
    sites = {"input_site": f"blocks.{layer}.hook_mlp_in", "output_site": f"blocks.{layer}.hook_mlp_out"}
    site = resolve_site(lm, sites["input_site"])
    x = capture(lm, calib.input_ids, calib.attention_mask, [site])[site.name].reshape(-1, d)[calib.keep.reshape(-1)]
    x = x.float()

    def weights() -> tuple[Tensor, Tensor, Tensor, Tensor]:
        W_enc = torch.randn(d, width, generator=g) / x.norm(dim=1).mean()
        return W_enc, torch.zeros(width), torch.randn(width, d, generator=g) * 0.02, torch.zeros(d)

    mat_w = weights()
    pre = x @ mat_w[0]
    mat = MatryoshkaTranscoder(
        *mat_w,
        **sites,
        prefix_ends=[width // 16, width // 8, width // 4, width // 2, width],
        threshold=float(pre.flatten().quantile(1 - l0 / width)),
    )
    jr_w = weights()
    pre = x @ jr_w[0]
    jr = JumpReLUTranscoder(*jr_w, **sites, threshold=pre.quantile(1 - l0 / width, dim=0).clamp(min=0))
    return {"matryoshka": mat, "jumprelu": jr}


def sparse_decode_floor(tc: Transcoder, f: Tensor) -> Tensor:
    """Every prefix's reconstruction from the active latents' decoder rows only (the floor's decode)."""
    rows, cols = f.nonzero(as_tuple=True)
    ends = torch.tensor(tc.prefix_ends, device=f.device)
    P = len(tc.prefix_ends)
    bags = rows * P + torch.searchsorted(ends, cols, right=True)
    offsets = torch.searchsorted(bags, torch.arange(f.shape[0] * P, device=f.device))
    parts = torch.nn.functional.embedding_bag(
        cols, tc.W_dec, offsets, mode="sum", per_sample_weights=f[rows, cols]
    ).reshape(f.shape[0], P, -1)
    return parts.cumsum(dim=1) + tc.b_dec


def timed_floor_recon(lm, tcs, batches) -> tuple[float, dict[str, float]]:
    split: dict[str, float] = defaultdict(float)
    start = clock()
    with torch.no_grad():
        sites = [
            resolve_site(lm, s)
            for s in dict.fromkeys(s for tc in tcs.values() for s in (tc.input_site, tc.output_site))
        ]
        for tb in batches:
            t0 = clock()
            got = capture(lm, tb.input_ids, tb.attention_mask, sites, stop_early=True)
            keep = tb.keep.reshape(-1)
            flat = {k: v.reshape(-1, v.shape[-1])[keep].float() for k, v in got.items()}
            t1 = clock()
            split["forward"] += t1 - t0
            for tc in tcs.values():
                f = tc.encode(flat[resolve_site(lm, tc.input_site).name])
                t2 = clock()
                sparse_decode_floor(tc, f)
                t3 = clock()
                split["encode"] += t2 - t1
                split["decode"] += t3 - t2
                t1 = t3
    return clock() - start, split


def timed_floor_spliced(lm, tcs, batches, layer: int) -> float:
    """Clean forward with logits, encode + sparse decode, and each variant's later blocks + head."""
    head = find_head(lm)
    n_variants = 2 + sum(len(tc.prefix_ends) for tc in tcs.values())
    in_site = resolve_site(lm, next(iter(tcs.values())).input_site)
    total = 0.0
    with torch.no_grad():
        for tb in batches:
            ids, mask = tb.input_ids, tb.attention_mask
            clean = clean_forward(lm, ids, mask, [in_site], {layer}, head)  # untimed: the later blocks' arguments
            x = clean.sites[in_site.name].reshape(-1, lm.d_model)[tb.keep.reshape(-1)].float()
            t0 = clock()
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
            for tc in tcs.values():
                sparse_decode_floor(tc, tc.encode(x))
            for _ in range(n_variants):
                h = clean.block_outputs[layer]
                for later in range(layer + 1, lm.n_layers):
                    args, kwargs = clean.block_calls[later]
                    h = output_tensor(lm.layers[later](h, *args, **kwargs))
                head(h)
            total += clock() - t0
    return total


def timed_ours(lm, tcs, batches, spliced: bool) -> float:
    n_seq = len(batches) * batches[0].input_ids.shape[0]
    runs = prepare_runs(lm, tcs, n_sequences=n_seq)
    plan = plan_downstream(lm, runs, batches[:1], n_sequences=n_seq) if spliced else None
    start = clock()
    run_pass(lm, runs, batches, splice=plan, show_progress=False)
    attach_uncertainty({r.name: r.accumulators for r in runs}, {r.name: r.results() for r in runs})
    return clock() - start


def timed_split(lm, tcs, batches) -> dict[str, float]:
    """One reconstruction-only pass of ours with every stage timed (the engine's steps, inlined)."""
    from transcoderbench.evaluate.runs import unique_sites

    n_seq = len(batches) * batches[0].input_ids.shape[0]
    runs = prepare_runs(lm, tcs, n_sequences=n_seq)
    sites = unique_sites(runs)
    split: dict[str, float] = defaultdict(float)
    with torch.no_grad():
        for tb in batches:
            t0 = clock()
            got = capture(lm, tb.input_ids, tb.attention_mask, sites, stop_early=True)
            keep = tb.keep.reshape(-1)
            seq_ids = tb.seq_index.repeat_interleave(tb.input_ids.shape[1])[keep]
            flat = {k: v.reshape(-1, v.shape[-1])[keep] for k, v in got.items()}
            t1 = clock()
            split["forward"] += t1 - t0
            for run in runs:
                tc = run.transcoder
                x = flat[run.input_site.name]
                f = tc.encode(x)
                t2 = clock()
                batch = TranscoderBatch(
                    x=x, y=flat[run.output_site.name], f=f, y_hat_prefixes=tc.decode_prefixes(f, x), seq_ids=seq_ids
                )
                t3 = clock()
                split["encode"] += t2 - t1
                split["decode"] += t3 - t2
                for key, acc in run.accumulators.items():
                    t4 = clock()
                    acc.update(batch)
                    split[f"acc:{key}"] += clock() - t4
                t1 = clock()
    t0 = clock()
    attach_uncertainty({r.name: r.accumulators for r in runs}, {r.name: r.results() for r in runs})
    split["results+bootstrap"] = clock() - t0
    return split


def rss_child(args: argparse.Namespace) -> None:
    lm = load_language_model(args.model)
    calib = next(
        token_batches(resolve_text_source(None), lm.tokenizer, seq_len=args.seq_len, batch_size=args.batch_size)
    )
    tcs = make_transcoders(lm, args.layer, calib, args.l0)
    runs = prepare_runs(lm, tcs, n_sequences=args.batches * args.batch_size)
    batches = token_batches(
        resolve_text_source(None),
        lm.tokenizer,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        n_batches=args.batches,
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = run_pass(lm, runs, batches, show_progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    table = sum(
        acc.state["per_sequence"].numel() * 8 for r in runs for k, acc in r.accumulators.items() if k == "sequences"
    )
    print(f"{stats.n_batches} {before / 1024:.1f} {after / 1024:.1f} {table / 2**20:.3f}")


def run_rss(args: argparse.Namespace) -> None:
    print(
        f"peak RSS of a reconstruction-only pass ({args.model}, layer {args.layer}, batch {args.batch_size} x "
        f"{args.seq_len} tokens, 2 transcoders, default bootstrap), each in a fresh process:"
    )
    print(f"{'batches':>8} {'RSS before pass MiB':>20} {'peak RSS MiB':>13} {'per-sequence tables MiB':>24}")
    for n in (100, 1000):
        cmd = [sys.executable, __file__, "--rss_child", "--batches", str(n), "--batch_size", str(args.batch_size)]
        cmd += ["--seq_len", str(args.seq_len), "--model", args.model, "--layer", str(args.layer), "--l0", str(args.l0)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
        print(f"{out[0]:>8} {out[1]:>20} {out[2]:>13} {out[3]:>24}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--l0", type=int, default=64, help="about this many latents fire per token")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a loaded machine)")
    parser.add_argument("--cpu_time", action="store_true", help="time this process's CPU time, not wall time")
    parser.add_argument("--no_spliced", action="store_true", help="skip the spliced comparison (slow on CPU)")
    parser.add_argument("--split", action="store_true", help="also time every stage of one pass")
    parser.add_argument("--rss", action="store_true", help="peak RSS at 100 vs 1000 batches instead")
    parser.add_argument("--rss_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global clock
        clock = time.process_time
    if args.rss_child:
        return rss_child(args)
    if args.rss:
        if "--batch_size" not in sys.argv:
            args.batch_size = 2
        if "--seq_len" not in sys.argv:
            args.seq_len = 32
        return run_rss(args)
    lm = load_language_model(args.model)
    batches = list(
        token_batches(
            resolve_text_source(None),
            lm.tokenizer,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            n_batches=args.batches,
        )
    )
    tcs = make_transcoders(lm, args.layer, batches[0], args.l0)
    for tc in tcs.values():
        tc.eval().requires_grad_(False)
    tokens = int(sum(int(tb.keep.sum()) for tb in batches))
    modes = {
        "floor recon": lambda: timed_floor_recon(lm, tcs, batches)[0],
        "ours recon": lambda: timed_ours(lm, tcs, batches, False),
    }
    if not args.no_spliced:
        modes["floor spliced"] = lambda: timed_floor_spliced(lm, tcs, batches, args.layer)
        modes["ours spliced"] = lambda: timed_ours(lm, tcs, batches, True)
    times: dict[str, list[float]] = defaultdict(list)
    splits: list[dict[str, float]] = []
    for _ in range(args.repeats):
        for name, fn in modes.items():
            times[name].append(fn())
        if args.split:
            splits.append(timed_split(lm, tcs, batches))
    print(
        f"model {args.model}, layer {args.layer}, {len(batches)} batches x {args.batch_size} x {args.seq_len} "
        f"({tokens:,} kept tokens), d_sae {8 * lm.d_model}, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats} alternating repeats, {'CPU' if args.cpu_time else 'wall'} time"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, value in med.items():
        print(f"  {name:<14} {value:8.3f} s   (all: {', '.join(f'{t:.2f}' for t in times[name])})")
    for kind in ("recon", "spliced") if not args.no_spliced else ("recon",):
        pairs = [o / f for o, f in zip(times[f"ours {kind}"], times[f"floor {kind}"])]
        print(
            f"ratio {kind:<8} {med[f'ours {kind}'] / med[f'floor {kind}']:.3f}x (medians); per repeat "
            f"{', '.join(f'{r:.3f}' for r in pairs)} (median {statistics.median(pairs):.3f}x)"
        )
    floor_split = timed_floor_recon(lm, tcs, batches)[1]
    print("floor split (one pass): " + ", ".join(f"{k} {v:.3f} s" for k, v in floor_split.items()))
    if splits:
        keys = list(splits[0])
        med_split = {k: statistics.median(s[k] for s in splits) for k in keys}
        total = sum(med_split.values())
        print(f"ours per-stage split (median of {len(splits)} instrumented passes, total {total:.3f} s):")
        for k, v in med_split.items():
            print(f"  {k:<22} {v:8.3f} s  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
