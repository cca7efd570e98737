"""Decoder redundancy: how many latents write (almost) the same direction.

This is what the seed code called "absorption"; it is not. Absorption (SAEBench's first-letter
method) is measured elsewhere, with a probe. Here we only compare decoder rows with each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

HISTOGRAM_BINS = 50
QUANTILES = (0.5, 0.9, 0.99)


def decoder_redundancy(W_dec: Tensor, *, threshold: float = 0.9, block_size: int = 1024) -> dict[str, Any]:
    """Pairwise |cosine| between unit decoder rows of ``W_dec [d_sae, d_out]``.

    Returns the number and fraction of unordered pairs ``i < j`` with ``|cos| > threshold``
    (``redundant_pairs`` / ``redundant_pair_fraction``; antiparallel rows count: they are the
    same direction up to sign), the latents with at least one such partner
    (``redundant_latents`` / ``redundant_latent_fraction``, over the compared latents), and the
    distribution of each latent's largest ``|cos|`` to any *other* latent (``max_abs_cos``).
    Rows with zero norm have no direction: they are left out of every statistic and counted in
    ``n_zero_rows``.

    Works ``block_size`` rows at a time against the rows from there on, so at most
    ``[block_size, d_sae]`` similarities exist at once (never ``d_sae x d_sae``). Computes in
    float64 when ``W_dec`` is float64, otherwise in float32 (cosines good to ~1e-6; pairs within
    that of the threshold may fall either side).
    """
    if W_dec.ndim != 2:
        raise ValueError(f"W_dec must be [d_sae, d_out], got shape {tuple(W_dec.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    dtype = torch.float64 if W_dec.dtype == torch.float64 else torch.float32
    W = W_dec.detach().to(dtype)
    norms = W.norm(dim=1)
    valid = norms > 0
    unit = W[valid] / norms[valid, None]
    n = unit.shape[0]

    # Each block of rows is compared with itself and every later row only (the upper block
    # triangle): each unordered pair is computed once, and the row and column maxima of that
    # rectangle give every latent's nearest other latent. Half the work of full rows.
    max_abs = torch.full((n,), float("-inf"), dtype=dtype, device=W.device)
    n_above = 0
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = (unit[start:stop] @ unit[start:].T).abs_()  # [B, n - start]
        local = torch.arange(stop - start, device=W.device)
        sims[local, local] = float("-inf")  # a latent is not its own neighbour
        n_above += int((sims > threshold).triu_(diagonal=1).sum())  # pairs i < j once each
        max_abs[start:stop] = torch.maximum(max_abs[start:stop], sims.max(dim=1).values)
        max_abs[start:] = torch.maximum(max_abs[start:], sims.max(dim=0).values)
    max_cos = max_abs.clamp_(max=1.0).cpu().double().numpy()  # rounding can give 1 + 1e-7

    n_pairs = n * (n - 1) // 2
    n_redundant = int((max_cos > threshold).sum())  # latents with a partner above the threshold
    has_other = n > 1
    hist, edges = np.histogram(max_cos if has_other else [], bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    nan = float("nan")
    return {
        "threshold": float(threshold),
        "n_latents": int(W.shape[0]),
        "n_zero_rows": int((~valid).sum()),
        "n_latents_compared": n,
        "n_pairs": n_pairs,
        "redundant_pairs": n_above,
        "redundant_pair_fraction": n_above / n_pairs if n_pairs else nan,
        "redundant_latents": n_redundant,
        "redundant_latent_fraction": n_redundant / n if n else nan,
        "max_abs_cos": {
            "mean": float(max_cos.mean()) if has_other else nan,
            "median": float(np.median(max_cos)) if has_other else nan,
            "quantiles": {str(q): (float(np.quantile(max_cos, q)) if has_other else nan) for q in QUANTILES},
            "histogram": {"bin_edges": edges.tolist(), "counts": hist.tolist()},
        },
    }
