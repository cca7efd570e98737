"""Per-batch quantities that several accumulators need, computed once per batch and cached on it.

The reconstruction, prefix and per-sequence accumulators all need the targets in float64, each
prefix's per-token squared error, dot product and norms, and the latent counts. Computing them
once per batch (instead of once per accumulator and prefix) removes most of the memory-bound
float64 passes over ``[N, d]`` tensors; the arithmetic, and so every number, is the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.metrics.base import TranscoderBatch
from transcoderbench.transcoders import ActiveLatents, active_latents


def _cached(batch: TranscoderBatch, key: Any, make: Any) -> Any:
    if key not in batch.cache:
        batch.cache[key] = make()
    return batch.cache[key]


def target64(batch: TranscoderBatch) -> Tensor:
    """``y`` in float64, ``[N, d_out]``."""
    return _cached(batch, "y64", lambda: batch.y.detach().to(torch.float64))


def target_stats(batch: TranscoderBatch) -> dict[str, Tensor]:
    """Per-token ``y_sq`` (||y||^2) and ``y_norm``, and per-dimension ``sum_y`` / ``sum_y2``."""

    def make() -> dict[str, Tensor]:
        y = target64(batch)
        sq = y.square()
        y_sq = sq.sum(dim=1)
        return {"y_sq": y_sq, "y_norm": y_sq.sqrt(), "sum_y": y.sum(dim=0), "sum_y2": sq.sum(dim=0)}

    return _cached(batch, "target", make)


def centred_target_sq(batch: TranscoderBatch) -> Tensor:
    """Per-token ``||y - mean_batch(y)||^2`` (the legacy explained variance's denominator)."""

    def make() -> Tensor:
        y = target64(batch)
        return (y - y.mean(dim=0)).square().sum(dim=1)

    return _cached(batch, "centred_sq", make)


def prefix_stats(batch: TranscoderBatch, prefix: int) -> dict[str, Tensor]:
    """Per-token ``err_sq``, ``dot`` (<y, y_hat>), ``yh_norm``, and the batch's ``sae`` (sum |err|) for one prefix."""
    p = prefix % batch.y_hat_prefixes.shape[0]

    def make() -> dict[str, Tensor]:
        y = target64(batch)
        y_hat = batch.y_hat_prefixes[p].detach().to(device=y.device, dtype=torch.float64)
        err = y - y_hat
        out = {"sae": err.abs().sum(), "dot": (y * y_hat).sum(dim=1), "yh_norm": y_hat.norm(dim=1)}
        out["err_sq"] = err.square_().sum(dim=1)
        return out

    return _cached(batch, ("prefix", p), make)


def latents(batch: TranscoderBatch) -> ActiveLatents:
    """The active latents (``batch.active``, or found once from ``f``)."""
    if batch.active is not None:
        return batch.active
    return _cached(batch, "active", lambda: active_latents(batch.f.detach()))


def latent_counts(batch: TranscoderBatch, prefix_ends: tuple[int, ...]) -> Tensor:
    """Active latents per token among the first END of each prefix end, int64 ``[N, P]`` (cumulative)."""

    def make() -> Tensor:
        act = latents(batch)
        n, P = batch.f.shape[0], len(prefix_ends)
        bags = act.rows
        if P > 1:
            ends = torch.tensor(prefix_ends, device=act.cols.device)
            bags = act.rows * P + torch.searchsorted(ends, act.cols, right=True)
        return torch.bincount(bags, minlength=n * P).reshape(n, P).cumsum(dim=1)

    return _cached(batch, ("l0", tuple(prefix_ends)), make)
