"""Per-sequence sufficient statistics: a few sums per sequence, never per token.

The convention every accumulator that wants bootstrap intervals follows (duck-typed; see
``PerSequenceAccumulator`` for a base class that implements it):

- ``per_sequence_fields``: names of the columns of ``state["per_sequence"]``, a float64 tensor
  ``[n_sequences, k]`` whose row ``i`` holds the sums over the kept tokens of global sequence
  ``i`` (``TranscoderBatch.seq_ids``). Rows of sequences never read stay zero. Being a sum, it
  merges by addition and all-reduces like every other state.
- ``ratio_metrics``: headline metrics as ratios of column sums, ``name -> Ratio(numerator,
  denominator)`` where each side is a linear combination of columns. A metric of one nested
  (Matryoshka) prefix is named ``NAME@END`` (e.g. ``fvu@256``).
- Optionally ``sequence_statistics(sums, resampled)`` for metrics that are not ratios of
  linear sums (FVU, below); ``sums`` is ``[R, k]`` (resamples) or ``[1, k]`` (full sample).

``SequenceStats`` is this package's own per-sequence accumulator: token count, squared target
norm, squared error, cosine and L0 per sequence (and squared error and L0 per nested prefix).
FVU's denominator is the variance around the mean of the *resample*; it needs the resample's
d-dimensional target sum, which ``SequenceStats`` keeps per resample (``[R, d]``) because the
Poisson bootstrap's weights are known the moment a sequence is read (see ``bootstrap.py``).
So every resampled FVU is exact: total variance = sum_w ||y||^2 - ||sum_w y||^2 / sum_w n.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.bootstrap import BootstrapOptions, poisson_weights
from transcoderbench.metrics.ratios import Ratio, divide, ratio_statistics
from transcoderbench.metrics.shared import latent_counts, prefix_stats, target64, target_stats


def downstream_ratios(prefix_ends: tuple[int, ...] | list[int]) -> dict[str, Ratio]:
    """Ratio metrics of the downstream accumulator's per-sequence columns.

    Expects the columns ``n_tokens``, ``ce_clean``, ``ce_zero_ablation``, ``ce_mean_ablation`` and,
    per nested prefix END, ``ce_prefix_END`` and ``kl_prefix_END`` (the last prefix is the full
    transcoder). Names match the keys of ``metrics["downstream"]``; per-prefix ones get ``@END``.
    """
    ends = [int(e) for e in prefix_ends]
    n = {"n_tokens": 1.0}
    out: dict[str, Ratio] = {"ce_clean": Ratio({"ce_clean": 1.0}, n)}
    for i, e in enumerate(ends):
        ce, kl = f"ce_prefix_{e}", f"kl_prefix_{e}"
        metrics = {
            "ce_spliced": Ratio({ce: 1.0}, n),
            "delta_loss": Ratio({ce: 1.0, "ce_clean": -1.0}, n),
            "kl_div": Ratio({kl: 1.0}, n),
            "loss_recovered_zero": Ratio(
                {"ce_zero_ablation": 1.0, ce: -1.0}, {"ce_zero_ablation": 1.0, "ce_clean": -1.0}
            ),
            "loss_recovered_mean": Ratio(
                {"ce_mean_ablation": 1.0, ce: -1.0}, {"ce_mean_ablation": 1.0, "ce_clean": -1.0}
            ),
        }
        for name, ratio in metrics.items():
            if len(ends) > 1:
                out[f"{name}@{e}"] = ratio
            if i == len(ends) - 1:
                out[name] = ratio
    return out


class PerSequenceAccumulator(Accumulator):
    """Base class implementing the per-sequence convention (see the module docstring)."""

    per_sequence_fields: list[str]
    ratio_metrics: Mapping[str, Ratio] = MappingProxyType({})

    def __init__(self, n_sequences: int, fields: list[str]) -> None:
        super().__init__()
        if n_sequences <= 0:
            raise ValueError(f"n_sequences must be positive, got {n_sequences}")
        self.n_sequences = int(n_sequences)
        self.per_sequence_fields = list(fields)
        self.state["per_sequence"] = torch.zeros(self.n_sequences, len(fields), dtype=torch.float64)

    def add_per_sequence(self, seq_ids: Tensor, values: Tensor) -> None:
        """Add per-token values ``[N, k]`` (columns in ``per_sequence_fields`` order) into their sequences' rows."""
        table = self.state["per_sequence"]
        if values.shape != (seq_ids.shape[0], table.shape[1]):
            raise ValueError(
                f"expected values of shape [{seq_ids.shape[0]}, {table.shape[1]}], got {tuple(values.shape)}"
            )
        if seq_ids.numel() and int(seq_ids.max()) >= self.n_sequences:
            raise ValueError(
                f"sequence index {int(seq_ids.max())} is beyond the {self.n_sequences} sequences "
                "this accumulator was sized for"
            )
        table.index_add_(0, seq_ids.to(table.device), values.to(device=table.device, dtype=torch.float64))

    def sequence_statistics(self, sums: Tensor, resampled: bool) -> dict[str, Tensor]:
        return ratio_statistics(self.per_sequence_fields, self.ratio_metrics, sums)

    def n_sequences_seen(self) -> int:
        return int((self.state["per_sequence"] != 0).any(dim=1).sum())


class SequenceStats(PerSequenceAccumulator):
    """Per-sequence sums behind the bootstrap intervals of FVU, explained variance, MSE, cosine and L0.

    Columns: ``n_tokens``, ``sum_y_sq`` (sum ||y||^2), ``sse`` (sum ||y - y_hat||^2), ``sum_cos``
    (per-token cosine; 0 where a norm is 0, as ``Reconstruction``), ``l0`` (active latents), and
    for Matryoshka transcoders ``sse@END`` and ``l0@END`` per nested prefix (``l0@END`` counts
    active latents among the first END: the sparsity that prefix's reconstruction uses).
    Besides the table it keeps the exact target sum ``sum_y [d]`` and, per bootstrap resample,
    the Poisson-weighted target sum ``resampled_sum_y [R, d]``.

    The result reports the per-prefix mean L0 (the x axis of the Matryoshka frontier) and how
    many sequences were read; the intervals come from ``bootstrap.attach_uncertainty``.
    """

    name = "sequences"

    def __init__(
        self,
        d_out: int,
        d_sae: int,
        n_sequences: int,
        prefix_ends: tuple[int, ...] = (),
        options: BootstrapOptions | None = None,
    ) -> None:
        self.prefix_ends = tuple(int(e) for e in prefix_ends) if len(prefix_ends) > 1 else ()
        fields = ["n_tokens", "sum_y_sq", "sse", "sum_cos", "l0"]
        fields += [f"{key}@{e}" for e in self.prefix_ends for key in ("sse", "l0")]
        super().__init__(n_sequences, fields)
        self.d_out, self.d_sae = int(d_out), int(d_sae)
        self.bootstrap_options = options or BootstrapOptions()
        self.state["sum_y"] = torch.zeros(self.d_out, dtype=torch.float64)
        self.state["resampled_sum_y"] = torch.zeros(
            self.bootstrap_options.bootstrap_resamples, self.d_out, dtype=torch.float64
        )

    def update(self, batch: TranscoderBatch) -> None:
        if batch.n_tokens == 0:
            return
        y = target64(batch)
        full = prefix_stats(batch, -1)
        y_norm = target_stats(batch)["y_norm"]
        prod = y_norm * full["yh_norm"]
        ok = prod > 0
        cos = torch.where(ok, full["dot"] / torch.where(ok, prod, torch.ones_like(prod)), torch.zeros_like(prod))
        ends = self.prefix_ends or (self.d_sae,)
        l0 = latent_counts(batch, ends).to(torch.float64)
        columns = [torch.ones_like(y[:, 0]), target_stats(batch)["y_sq"], full["err_sq"], cos, l0[:, -1]]
        for i in range(len(self.prefix_ends)):
            columns += [prefix_stats(batch, i)["err_sq"], l0[:, i]]
        self.add_per_sequence(batch.seq_ids, torch.stack(columns, dim=1))
        self._add_target_sums(batch.seq_ids, y)

    def _add_target_sums(self, seq_ids: Tensor, y: Tensor) -> None:
        st = self.state
        st["sum_y"] += y.sum(dim=0).to(st["sum_y"].device)
        n_resamples = st["resampled_sum_y"].shape[0]
        if n_resamples == 0:
            return
        unique, inverse = torch.unique(seq_ids, return_inverse=True)
        per_seq = torch.zeros(unique.numel(), y.shape[1], dtype=torch.float64, device=y.device)
        per_seq.index_add_(0, inverse, y)
        weights = poisson_weights(self.bootstrap_options.bootstrap_seed, unique, n_resamples)
        st["resampled_sum_y"] += (torch.from_numpy(weights).to(per_seq.device) @ per_seq).to(
            st["resampled_sum_y"].device
        )

    def sequence_statistics(self, sums: Tensor, resampled: bool) -> dict[str, Tensor]:
        col = {f: sums[:, i].to(torch.float64).cpu() for i, f in enumerate(self.per_sequence_fields)}
        sum_y = self.state["resampled_sum_y"] if resampled else self.state["sum_y"][None]
        sum_y = sum_y.detach().cpu().to(torch.float64)
        if sum_y.shape[0] != sums.shape[0]:
            raise ValueError(
                f"{sums.shape[0]} resamples asked for, but the target sums were kept for "
                f"{sum_y.shape[0]}: use the bootstrap options the accumulator was built with"
            )
        n = col["n_tokens"]
        total_var = col["sum_y_sq"] - divide(sum_y.square().sum(dim=1), n)
        fvu = divide(col["sse"], total_var)
        out = {
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "mse": divide(col["sse"], n * self.d_out),
            "cosine_similarity": divide(col["sum_cos"], n),
            "l0_mean": divide(col["l0"], n),
        }
        for e in self.prefix_ends:
            out[f"fvu@{e}"] = divide(col[f"sse@{e}"], total_var)
            out[f"l0_mean@{e}"] = divide(col[f"l0@{e}"], n)
        return out

    def result(self) -> dict[str, Any]:
        full = self.sequence_statistics(self.state["per_sequence"].detach().cpu().sum(dim=0, keepdim=True), False)
        out: dict[str, Any] = {
            "n_sequences": self.n_sequences_seen(),
            "n_tokens": int(self.state["per_sequence"][:, 0].sum()),
            "note": "per-sequence sums kept for bootstrap intervals (see 'uncertainty')",
        }
        if self.prefix_ends:
            out["per_prefix"] = [{"prefix_end": e, "l0_mean": float(full[f"l0_mean@{e}"][0])} for e in self.prefix_ends]
        return out
