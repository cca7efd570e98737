"""Short training runs on cached activations: held-out FVU and dead latents per recipe (issue 15, part 2).

Activations of the built-in SmolLM2-135M are captured once (training text: the standard library's
docstrings; held-out: the pydoc topics, as in the demo) and cached in ``--cache``; each variant then
trains :class:`TranscoderTrainer` on the same shuffled batches, so only the recipe differs.

    PYTHONPATH=src python benchmarks/peers/quality_sweep.py --kind sae --variants adam,signum
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.lm import capture, load_language_model
from transcoderbench.lm.sites import resolve_site
from transcoderbench.train.config import FLAT_KEYS, TrainConfig
from transcoderbench.train.schedule import lr_at
from transcoderbench.train.trainer import TranscoderTrainer

LAYER = 10
SITES = {
    "sae": (f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.hook_resid_post"),
    "transcoder": (f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"),
}


def activations(kind: str, dataset: str, n_tokens: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept-token (x, y) of ``dataset``, about ``n_tokens`` of them, cached."""
    path = cache / f"{kind}-{dataset.replace(':', '_')}-{n_tokens}.pt"
    if path.exists():
        got = torch.load(path, weights_only=True)
        return got["x"], got["y"]
    lm = load_language_model("smollm2-135m", device="cpu")
    sites = [resolve_site(lm, name) for name in dict.fromkeys(SITES[kind])]
    xs, ys, count = [], [], 0
    for tb in token_batches(resolve_text_source(dataset), lm.tokenizer, seq_len=128, batch_size=8):
        got = capture(lm, tb.input_ids, tb.attention_mask, sites)
        keep = tb.keep.reshape(-1)
        x = got[SITES[kind][0]]
        y = got[SITES[kind][1]]
        xs.append(x.reshape(-1, x.shape[-1])[keep].float())
        ys.append(y.reshape(-1, y.shape[-1])[keep].float())
        count += int(keep.sum())
        print(f"captured {count} tokens of {dataset}", flush=True)
        if count >= n_tokens:
            break
    x, y = torch.cat(xs)[:n_tokens], torch.cat(ys)[:n_tokens]
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "y": y}, path)
    return x, y


@torch.no_grad()
def held_out(tc, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Pooled FVU and latents that never fire on the held-out tokens."""
    y_hat, f = tc(x)
    fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    fired = (f != 0).any(0) if f.is_floating_point() else None
    return {
        "fvu": fvu,
        "dead": int((~fired).sum()) if fired is not None else -1,
        "l0": float((f != 0).sum(1).float().mean()),
    }


def run(config: TrainConfig, train: tuple, test: tuple) -> dict[str, float]:
    x, y = train
    t = TranscoderTrainer(
        config, d_in=x.shape[1], d_out=y.shape[1], input_site=SITES["sae"][0], output_site=SITES["sae"][1]
    )
    t.init_from_data(x[:65536], y[:65536])
    total = math.ceil(config.token_budget / config.batch_size)
    g = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(x.shape[0], generator=g)
    start, pos = time.perf_counter(), 0
    for step in range(total):
        if pos + config.batch_size > order.numel():
            order, pos = torch.randperm(x.shape[0], generator=g), 0
        idx = order[pos : pos + config.batch_size]
        pos += config.batch_size
        lr = lr_at(
            step,
            lr=config.lr,
            min_lr=config.min_lr,
            warmup_steps=config.warmup_steps,
            total_steps=total,
            decay=config.decay,
        )
        t.step(x[idx], y[idx], lr)
    seconds = time.perf_counter() - start
    tc = t.final_transcoder({}, recent_x=x[-8192:])
    return {**held_out(tc, *test), "train_s": round(seconds, 1), "steps": total}


BASE = dict(
    dict_size=2304,
    top_k=32,
    top_k_aux=256,
    aux_penalty=1 / 32,
    dead_window=20_000,
    lr=3e-3,
    warmup_steps=20,
    min_lr=3e-4,
    decay="cosine",
    batch_size=512,
    token_budget=93_184,
    seed=0,
    device="cpu",
    progress=False,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=sorted(SITES), default="sae")
    ap.add_argument("--tokens", type=int, default=93_184)
    ap.add_argument("--budget", type=int, default=93_184, help="training tokens (the cached ones repeat in epochs)")
    ap.add_argument("--test_tokens", type=int, default=16_384)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/transcoderbench-quality"))
    ap.add_argument("--variant", action="append", default=[], help="JSON of TrainConfig overrides; repeatable")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: leaves the other core to others)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = activations(args.kind, "builtin:stdlib-docstrings", args.tokens, args.cache)
    test = activations(args.kind, "builtin:pydoc_data.topics", args.test_tokens, args.cache)
    for spec in args.variant or ["{}"]:
        overrides = json.loads(spec)
        assert set(overrides) <= set(FLAT_KEYS), set(overrides) - set(FLAT_KEYS)
        config = TrainConfig.from_flat(**{**BASE, "token_budget": args.budget, **overrides})
        print(json.dumps({"variant": overrides, **run(config, train, test)}), flush=True)


if __name__ == "__main__":
    main()
