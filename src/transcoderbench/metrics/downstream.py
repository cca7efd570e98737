"""Downstream faithfulness: next-token loss and KL when a reconstruction replaces the output site.

For each transcoder the engine produces, per batch, next-token log-probabilities of the clean
model and of several spliced variants (every nested prefix, and zero/mean ablation of the output
site). This accumulator turns them into sums of cross-entropy and KL(p_clean || p_variant), per
column and per sequence, and at the end into CE, delta loss, KL and loss recovered.

Tokens counted: every position whose *next* token is kept (not BOS, PAD or EOS), i.e. exactly the
positions a model's own ``labels=`` loss counts when those labels are set to -100.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.per_sequence import downstream_ratios

CLEAN, ZERO, MEAN = "clean", "zero_ablation", "mean_ablation"


def prefix_column(end: int) -> str:
    return f"prefix_{end}"


def next_token_ce(logp: Tensor, labels: Tensor) -> Tensor:
    """Per row: cross-entropy of ``labels`` under the log-probabilities ``logp``."""
    return -logp.gather(-1, labels[:, None]).squeeze(-1)


def next_token_losses(clean_logp: Tensor, logp: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: cross-entropy of ``labels`` under ``logp`` and KL(p_clean || p), both from log-probs.

    KL is computed in log space (``exp(lp_clean) * (lp_clean - lp)``), which stays finite where
    the variant gives a token vanishing probability.
    """
    ce = next_token_ce(logp, labels)
    kl = torch.nn.functional.kl_div(logp, clean_logp, log_target=True, reduction="none").sum(-1)
    return ce, kl


def loss_recovered(ce_ablated: float, ce_spliced: float, ce_clean: float) -> float | None:
    """(CE_ablate - CE_spliced) / (CE_ablate - CE_clean): 1 = as good as the model, 0 = as bad as ablation."""
    gap = ce_ablated - ce_clean
    return None if gap == 0 else (ce_ablated - ce_spliced) / gap


class Downstream(Accumulator):
    """Sums of CE and KL per column (clean, ablations, each nested prefix), and per sequence."""

    name = "downstream"

    def __init__(self, prefix_ends: tuple[int, ...], n_sequences: int | None = None) -> None:
        super().__init__()
        self.prefix_ends = tuple(prefix_ends)
        self.columns = [CLEAN, ZERO, MEAN] + [prefix_column(e) for e in self.prefix_ends]
        c = len(self.columns)
        self.state["ce_sum"] = torch.zeros(c, dtype=torch.float64)
        self.state["kl_sum"] = torch.zeros(c, dtype=torch.float64)
        self.state["n"] = torch.zeros(c, dtype=torch.int64)
        # Per-sequence sums: token count, then CE and KL of every column (columns named below).
        self.per_sequence_fields = ["n_tokens"] + [f"ce_{col}" for col in self.columns] + [f"kl_{col}" for col in self.columns]
        if n_sequences:
            self.state["per_sequence"] = torch.zeros(n_sequences, len(self.per_sequence_fields), dtype=torch.float64)
        # Headline metrics as ratios of the per-sequence columns, for bootstrap intervals.
        self.ratio_metrics = downstream_ratios(self.prefix_ends)
        self.path: str = "resumed"
        self.notes: list[str] = []

    def update(self, batch: TranscoderBatch) -> None:
        """Reconstruction batches carry no logits: this accumulator is fed by ``update_column``."""

    def update_column(self, column: str, ce: Tensor, kl: Tensor, seq_ids: Tensor) -> None:
        """Add one chunk of per-row CE and KL (from ``next_token_losses``) to ``column``.

        The engine computes them once per spliced variant and feeds every transcoder that
        shares the variant (e.g. the ablations of a common output site).
        """
        i = self.columns.index(column)
        ce, kl = ce.double(), kl.double()
        dev = self.state["ce_sum"].device
        self.state["ce_sum"][i] += ce.sum().to(dev)
        self.state["kl_sum"][i] += kl.sum().to(dev)
        self.state["n"][i] += ce.numel()
        if "per_sequence" in self.state:
            table = self.state["per_sequence"]
            ids = seq_ids.to(table.device)
            c = len(self.columns)
            if i == 0:
                table[:, 0].index_add_(0, ids, torch.ones_like(ce, device=table.device))
            table[:, 1 + i].index_add_(0, ids, ce.to(table.device))
            table[:, 1 + c + i].index_add_(0, ids, kl.to(table.device))

    def column_means(self) -> dict[str, tuple[float, float]]:
        n = self.state["n"].double().clamp(min=1)
        ce = (self.state["ce_sum"] / n).tolist()
        kl = (self.state["kl_sum"] / n).tolist()
        return {col: (ce[i], kl[i]) for i, col in enumerate(self.columns)}

    def result(self) -> dict[str, Any]:
        counts = self.state["n"].tolist()
        if counts[0] == 0:
            return {"n_tokens": 0, "note": "no tokens were evaluated downstream"}
        if len(set(counts)) != 1:
            raise RuntimeError(f"downstream columns saw different token counts {counts}")
        means = self.column_means()
        ce_clean = means[CLEAN][0]
        ce_zero, ce_mean = means[ZERO][0], means[MEAN][0]
        per_prefix = []
        for end in self.prefix_ends:
            ce, kl = means[prefix_column(end)]
            per_prefix.append({
                "prefix_end": end,
                "ce_spliced": ce,
                "delta_loss": ce - ce_clean,
                "kl_div": kl,
                "loss_recovered_zero": loss_recovered(ce_zero, ce, ce_clean),
                "loss_recovered_mean": loss_recovered(ce_mean, ce, ce_clean),
            })
        full = per_prefix[-1]
        return {
            "n_tokens": counts[0],
            "ce_clean": ce_clean,
            "ce_spliced": full["ce_spliced"],
            "delta_loss": full["delta_loss"],
            "kl_div": full["kl_div"],
            "ce_zero_ablation": ce_zero,
            "ce_mean_ablation": ce_mean,
            "kl_div_zero_ablation": means[ZERO][1],
            "kl_div_mean_ablation": means[MEAN][1],
            "loss_recovered_zero": full["loss_recovered_zero"],
            "loss_recovered_mean": full["loss_recovered_mean"],
            "per_prefix": per_prefix,
            "path": self.path,
            "notes": list(self.notes),
        }
