"""sparsify's TopK SAE recipe on the activations ``quality_sweep.py`` cached: the same training and
held-out tokens and the same held-out FVU formula as our variants, without the language model.

Run with the sparsify venv's python (it imports sparsify, not transcoderbench):

    peer-venvs/sparsify/bin/python benchmarks/peers/sparsify_cached.py --batch 1024

What it copies from ``sparsify.Trainer`` (1.3.3) for an SAE: ``SparseCoder`` (encoder = nn.Linear
init, decoder = its rows unit-normalised, encoder reads ``x - b_dec``, per-token ReLU + TopK),
``b_dec`` = the first batch's mean, schedule-free SignSGD at 5e-3 / sqrt(n / 2^14) with momentum
0.95, the decoder gradient projected off its rows and the rows re-normalised every step, no AuxK
(``auxk_alpha = 0``), and ``opt.eval()`` (the averaged weights) before evaluating.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from schedulefree import ScheduleFreeWrapper
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD


@torch.no_grad()
def held_out(sae: SparseCoder, x: torch.Tensor) -> dict[str, float]:
    """Pooled FVU, latents that never fire, and L0 on the held-out tokens (as quality_sweep.py)."""
    acts, idx, _ = sae.encode(x)
    y_hat = sae.decode(acts, idx)
    fvu = float((x - y_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    live = acts > 0
    fired = torch.zeros(sae.num_latents, dtype=torch.bool)
    fired[idx[live]] = True
    return {"fvu": fvu, "dead": int((~fired).sum()), "l0": float(live.sum(1).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/transcoderbench-quality"))
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--test_tokens", type=int, default=4_096)
    ap.add_argument("--budget", type=int, default=93_184)
    ap.add_argument("--batch", type=int, default=1024, help="tokens a step (sparsify: 8 sequences of 128)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.load(args.cache / f"sae-builtin_stdlib-docstrings-{args.tokens}.pt", weights_only=True)["x"]
    test = torch.load(args.cache / f"sae-builtin_pydoc_data.topics-{args.test_tokens}.pt", weights_only=True)["x"]
    torch.manual_seed(args.seed)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=2304, k=32))
    lr = args.lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    g = torch.Generator().manual_seed(args.seed)
    order, pos = torch.randperm(x.shape[0], generator=g), 0
    steps = math.ceil(args.budget / args.batch)
    start = time.perf_counter()
    for step in range(steps):
        if pos + args.batch > order.numel():
            order, pos = torch.randperm(x.shape[0], generator=g), 0
        xb = x[order[pos : pos + args.batch]]
        pos += args.batch
        if step == 0:
            sae.b_dec.data = xb.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(xb)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    opt.eval()
    result = {"tool": "sparsify", "batch": args.batch, "lr": lr, "steps": steps, **held_out(sae, test)}
    print(json.dumps({**result, "train_s": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
