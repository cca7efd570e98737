"""The math of one training step: which latents fire, sparse decoding, and the losses.

Latents are kept sparse during training, as (token, latent, value) triples sorted by token,
and decoded by gathering decoder rows (``embedding_bag``): with k = 32 of a few thousand
latents that is an order of magnitude less work than a dense ``f @ W_dec``, forward and
backward, and it is what makes training practical on a CPU.

Loss normalisation: every reconstruction term is a fraction of variance unexplained of the
batch, ``sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` (as in EleutherAI's sparsify), so the
loss means the same thing at every site and model whatever the scale of the activations, and
the auxiliary penalty is a fraction of that same unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: BatchTopK first takes each token's top ``CANDIDATES_PER_K * k`` activations, then the global
#: top ``k * N`` among those. Exact unless a token fills all its candidate slots (checked; the
#: full search runs then), and several times faster than a top-k over all ``N * d_sae`` values.
CANDIDATES_PER_K = 4


@dataclass
class Selection:
    """Active latents of a batch as sparse triples, sorted by token."""

    tokens: Tensor
    """``[M]`` int64: the token (row) of each active entry, ascending."""
    latents: Tensor
    """``[M]`` int64: the latent (column) of each active entry."""
    values: Tensor
    """``[M]`` the activations (after :func:`with_encoder_grad` they carry gradients to the encoder)."""
    n_tokens: int
    """Rows in the batch (tokens may have no active latent)."""


def _from_flat(pre: Tensor, flat: Tensor) -> Selection:
    """Triples for the flat indices ``flat`` of ``pre``; entries that are not positive are dropped."""
    n, s = pre.shape
    flat = flat.sort().values
    values = pre.reshape(-1)[flat]
    positive = values > 0
    flat, values = flat[positive], values[positive]
    return Selection(tokens=flat // s, latents=flat % s, values=values, n_tokens=n)


@torch.no_grad()
def select_batch_topk(pre: Tensor, k: int, guess: float | None = None) -> Selection:
    """BatchTopK (Bussmann et al.): the ``k * N`` largest of ``relu(pre) [N, d_sae]`` over the whole
    batch. A token may keep more or fewer than ``k`` latents; the batch keeps ``k`` per token on average.

    ``guess`` (e.g. a little below the previous batch's smallest kept value) only makes the search
    faster: when at least ``k * N`` values exceed it, the search looks at those alone. The result is
    the same exact top ``k * N`` either way.
    """
    n, s = pre.shape
    m = min(k * n, n * s)
    flat_pre = pre.reshape(-1)
    if guess is not None and guess > 0:
        above = (flat_pre > guess).nonzero().squeeze(1)
        if above.numel() >= m:
            return _from_flat(pre, above[flat_pre[above].topk(m, sorted=False).indices])
    cand = min(s, CANDIDATES_PER_K * k)
    row_vals, row_idx = pre.topk(cand, dim=-1, sorted=False)
    vals, pos = row_vals.reshape(-1).topk(m, sorted=False)
    flat = torch.div(pos, cand, rounding_mode="floor") * s + row_idx.reshape(-1)[pos]
    if cand < s and bool((row_vals.min(dim=-1).values >= vals.min()).any()):
        flat = flat_pre.topk(m, sorted=False).indices  # a token filled its slots: search them all
    return _from_flat(pre, flat)


@torch.no_grad()
def select_topk(pre: Tensor, k: int) -> Selection:
    """TopK: each token's own ``k`` largest activations ``relu(pre)``."""
    n, s = pre.shape
    idx = pre.topk(min(k, s), dim=-1, sorted=False).indices
    flat = (torch.arange(n, device=pre.device)[:, None] * s + idx).reshape(-1)
    return _from_flat(pre, flat)


class _EncoderEntries(torch.autograd.Function):
    """``(x @ W_enc + b_enc)[tokens, latents]`` for given entries, whose values were already
    computed; the backward pass touches only those entries instead of forming a dense ``[N,
    d_sae]`` gradient: column ``s`` of ``grad W_enc`` is ``sum_j grad_j x[tokens_j]`` over the
    entries of latent ``s``, one ``embedding_bag`` over ``x`` with a bag per latent."""

    @staticmethod
    def forward(
        ctx: Any, W_enc: Tensor, b_enc: Tensor, x: Tensor, tokens: Tensor, latents: Tensor, values: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x, tokens, latents)
        ctx.d_sae = W_enc.shape[1]
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, tokens, latents = ctx.saved_tensors
        order = torch.argsort(latents, stable=True)
        counts = torch.bincount(latents, minlength=ctx.d_sae)
        offsets = counts.cumsum(0) - counts
        grad_W = F.embedding_bag(tokens[order], x, offsets, mode="sum", per_sample_weights=grad[order]).t()
        grad_b = torch.zeros(ctx.d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, latents, grad)
        return grad_W, grad_b, None, None, None, None


def with_encoder_grad(sel: Selection, x: Tensor, W_enc: Tensor, b_enc: Tensor) -> Selection:
    """``sel`` whose values carry gradients to ``W_enc`` and ``b_enc`` (the pre-activations were
    computed without autograd; ReLU's gradient is 1 on the kept, positive entries)."""
    values = _EncoderEntries.apply(W_enc, b_enc, x, sel.tokens, sel.latents, sel.values)
    return Selection(sel.tokens, sel.latents, values, sel.n_tokens)


def sparse_decode(sel: Selection, W_dec: Tensor, bags: Tensor | None = None, n_bags: int | None = None) -> Tensor:
    """``sum_j values_j * W_dec[latents_j]`` per token, ``[N, d_out]``, without a bias.

    ``bags`` (ascending, one per entry) and ``n_bags`` sum into other rows instead of tokens
    (one Matryoshka group of one token per row, below).
    """
    bags = sel.tokens if bags is None else bags
    counts = torch.bincount(bags, minlength=sel.n_tokens if n_bags is None else n_bags)
    offsets = counts.cumsum(0) - counts
    return F.embedding_bag(sel.latents, W_dec, offsets, mode="sum", per_sample_weights=sel.values)


def total_variance(y: Tensor) -> Tensor:
    """``sum ||y - mean(y)||^2`` over the batch: the denominator of every loss term."""
    return (y - y.mean(dim=0)).pow(2).sum().clamp_min(torch.finfo(y.dtype).tiny)


def prefix_losses(
    sel: Selection, y: Tensor, W_dec: Tensor, b_dec: Tensor, prefix_ends: tuple[int, ...], denominator: Tensor
) -> tuple[list[Tensor], Tensor]:
    """FVU of each nested prefix's reconstruction, and the final residual ``y - y_hat`` (all latents).

    Prefix ``p`` decodes only latents ``< prefix_ends[p]``. One decode computes every group's
    part (each (token, group) pair is its own bag; entries sorted by token and latent are
    already sorted by bag), and the prefixes are cumulative sums of the parts.
    """
    n_groups = len(prefix_ends)
    if n_groups > 1:
        ends = torch.tensor(prefix_ends, device=sel.latents.device)
        group = torch.bucketize(sel.latents, ends, right=True)
        parts = sparse_decode(sel, W_dec, sel.tokens * n_groups + group, sel.n_tokens * n_groups)
        parts = parts.view(sel.n_tokens, n_groups, -1)
    residual = y - b_dec
    losses = []
    for g in range(n_groups):
        residual = residual - (parts[:, g] if n_groups > 1 else sparse_decode(sel, W_dec))
        losses.append(residual.pow(2).sum() / denominator)
    return losses, residual


def aux_loss(
    pre: Tensor,
    dead: Tensor,
    residual: Tensor,
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    top_k_aux: int,
    denominator: Tensor,
) -> Tensor | None:
    """The auxiliary loss on dead latents (Gao et al. 2024, App. B.1), or None when none is dead.

    Each token's ``top_k_aux`` largest pre-activations among dead latents reconstruct the residual
    ``y - y_hat`` of the live latents (as in sparsify). The loss is scaled down by
    ``n_dead / top_k_aux`` when fewer latents are dead than ``top_k_aux`` (sparsify's heuristic)
    and normalised like the main loss.

    Pre-activations are used as they are, not ReLU'd. A latent usually dies by having its
    pre-activation pushed below zero on every token; after a ReLU it would get no gradient at
    all and stay dead for good. Unclipped, the dead latents' values are pulled towards the
    small coefficients that fit the residual, that is up towards zero and past it, where they
    compete for the top k again. (On SmolLM2 layer 10 with the demo's settings: 2% of latents
    dead after training instead of 75% with ReLU'd values.)
    """
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return None
    k_aux = min(top_k_aux, n_dead)
    scale = min(n_dead / top_k_aux, 1.0)
    n = pre.shape[0]
    with torch.no_grad():
        values, idx = pre[:, dead_idx].topk(k_aux, dim=-1, sorted=False)
    sel = Selection(
        tokens=torch.arange(n, device=pre.device).repeat_interleave(k_aux),
        latents=dead_idx[idx].reshape(-1),
        values=values.reshape(-1),
        n_tokens=n,
    )
    e_hat = sparse_decode(with_encoder_grad(sel, x, W_enc, b_enc), W_dec)
    return scale * (e_hat - residual.detach()).pow(2).sum() / denominator
