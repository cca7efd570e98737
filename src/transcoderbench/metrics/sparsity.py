"""Sparsity: per-token L0 (exact distribution) and per-latent firing counts (dead / dense).

The L0 distribution is kept as an int64 bincount of length ``d_sae + 1``, so mean, median and
standard deviation are exact over any number of tokens with memory bounded by the width.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.shared import latent_counts, latents

L0_HISTOGRAM_BINS = 50
DENSITY_BIN_WIDTH = 0.2  # in log10 units


def _value_at(cum: np.ndarray, position: int) -> int:
    """The value at 0-based ``position`` of the sorted sample whose bincount's cumsum is ``cum``."""
    return int(np.searchsorted(cum, position, side="right"))


def _l0_histogram(counts: np.ndarray) -> dict[str, Any]:
    """Compact histogram of integer L0 values over the observed range.

    Bins are half-open ``[bin_edges[i], bin_edges[i+1])`` over integers; one bin per value when
    the observed range has at most ``L0_HISTOGRAM_BINS`` values, otherwise about that many bins
    of (near-)equal integer width. Counts sum to the number of tokens.
    """
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0:
        return {"bin_edges": [], "counts": []}
    lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
    if hi - lo <= L0_HISTOGRAM_BINS:
        edges = np.arange(lo, hi + 1)
    else:
        edges = np.unique(np.round(np.linspace(lo, hi, L0_HISTOGRAM_BINS + 1)).astype(np.int64))
    cum = np.concatenate([[0], np.cumsum(counts)])
    return {"bin_edges": edges.tolist(), "counts": (cum[edges[1:]] - cum[edges[:-1]]).tolist()}


class Sparsity(Accumulator):
    """Per-token L0 and per-latent firing over all evaluated tokens.

    A latent *fires* on a token when its activation is ``!= 0`` (not ``> 0``: a JumpReLU latent
    with a negative threshold can be active with a negative value).

    Result keys: ``l0_mean``, ``l0_median`` (exact; the mean of the two middle values when the
    token count is even, as numpy does), ``l0_std`` (population), ``l0_histogram`` (see
    ``_l0_histogram``), ``dead_latents`` / ``dense_latents`` (COUNTS of latents that fired on no
    token / on more than ``dense_threshold`` of the tokens; the indices are ``dead_indices()`` /
    ``dense_indices()``), their fractions, ``n_tokens`` (what dead/dense were measured over) and
    ``feature_density_log10_histogram`` (log10 of firing frequency over latents that fired, bins
    of width 0.2 from floor(log10(1/N)) to 0, last bin closed; dead latents are counted apart).
    The per-latent counts are ``firing_counts`` (not in the result: ``d_sae`` numbers).
    """

    name = "sparsity"

    def __init__(self, d_sae: int, dense_threshold: float = 0.1) -> None:
        super().__init__()
        self.d_sae = int(d_sae)
        self.dense_threshold = float(dense_threshold)
        self.state["n_tokens"] = torch.zeros((), dtype=torch.int64)
        self.state["l0_counts"] = torch.zeros(self.d_sae + 1, dtype=torch.int64)
        self.state["firing_counts"] = torch.zeros(self.d_sae, dtype=torch.int64)

    def update(self, batch: TranscoderBatch) -> None:
        f = batch.f
        if f.ndim != 2 or f.shape[1] != self.d_sae:
            raise ValueError(f"expected latent activations of shape [N, {self.d_sae}], got {tuple(f.shape)}")
        # From the active latents (shared with the decode and the per-sequence sums): no [N, d_sae] pass.
        st = self.state
        l0 = latent_counts(batch, (self.d_sae,))[:, -1]
        st["n_tokens"] += f.shape[0]
        st["l0_counts"] += torch.bincount(l0, minlength=self.d_sae + 1).to(st["l0_counts"].device)
        cols = latents(batch).cols
        st["firing_counts"] += torch.bincount(cols, minlength=self.d_sae).to(st["firing_counts"].device)

    def update_from(self, f: Tensor) -> None:
        """Add one batch of latent activations ``f [N, d_sae]``."""
        if f.ndim != 2 or f.shape[1] != self.d_sae:
            raise ValueError(f"expected latent activations of shape [N, {self.d_sae}], got {tuple(f.shape)}")
        # Reduce where the data lives (GPU or CPU); only the [d_sae]-sized counts move.
        st = self.state
        fired = f.detach() != 0
        st["n_tokens"] += f.shape[0]
        st["l0_counts"] += torch.bincount(fired.sum(dim=1), minlength=self.d_sae + 1).to(st["l0_counts"].device)
        st["firing_counts"] += fired.sum(dim=0).to(st["firing_counts"].device)

    # ------------------------------------------------------------ per latent
    @property
    def firing_counts(self) -> Tensor:
        """How many evaluated tokens each latent fired on, int64 ``[d_sae]`` (a copy)."""
        return self.state["firing_counts"].detach().cpu().clone()

    def dead_indices(self) -> Tensor:
        """Latents that fired on none of the evaluated tokens."""
        return torch.nonzero(self.firing_counts == 0).flatten()

    def dense_indices(self) -> Tensor:
        """Latents that fired on more than ``dense_threshold`` of the evaluated tokens."""
        n = int(self.state["n_tokens"])
        if n == 0:
            return torch.zeros(0, dtype=torch.int64)
        return torch.nonzero(self.firing_counts.double() / n > self.dense_threshold).flatten()

    # ---------------------------------------------------------------- result
    def result(self) -> dict[str, Any]:
        n = int(self.state["n_tokens"])
        counts = self.state["l0_counts"].cpu().numpy()
        values = np.arange(counts.size, dtype=np.float64)
        if n:
            mean = float((values * counts).sum() / n)
            std = math.sqrt(float((counts * (values - mean) ** 2).sum() / n))
            cum = np.cumsum(counts)
            median = 0.5 * (_value_at(cum, (n - 1) // 2) + _value_at(cum, n // 2))
        else:
            mean = std = median = float("nan")
        n_dead = int(self.dead_indices().numel())
        n_dense = int(self.dense_indices().numel())
        return {
            "n_tokens": n,
            "l0_mean": mean,
            "l0_median": float(median),
            "l0_std": std,
            "l0_histogram": _l0_histogram(counts),
            "dead_latents": n_dead,
            "dead_fraction": n_dead / self.d_sae,
            "dead_percentage": 100.0 * n_dead / self.d_sae,
            "dense_latents": n_dense,
            "dense_fraction": n_dense / self.d_sae,
            "dense_threshold": self.dense_threshold,
            "feature_density_log10_histogram": self._density_histogram(n, n_dead),
        }

    def _density_histogram(self, n: int, n_dead: int) -> dict[str, Any]:
        fc = self.firing_counts.numpy()
        if n == 0:
            return {"bin_edges": [], "counts": [], "dead_latents": n_dead}
        lo = min(math.floor(-math.log10(n)), -1)
        # clip: log10(1/n) may round a hair below an integer edge
        log_density = np.clip(np.log10(fc[fc > 0] / n), lo, 0.0)
        n_bins = round(-lo / DENSITY_BIN_WIDTH)
        edges = np.linspace(lo, 0.0, n_bins + 1)
        hist, _ = np.histogram(log_density, bins=edges)
        return {"bin_edges": edges.tolist(), "counts": hist.tolist(), "dead_latents": n_dead}
