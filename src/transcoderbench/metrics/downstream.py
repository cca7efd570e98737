"""Downstream faithfulness: next-token loss and KL when a reconstruction replaces the output site.

For each transcoder the engine produces, per batch, next-token log-probabilities of the clean
model and of several spliced variants (every nested prefix, and zero/mean ablation of the output
site). This accumulator turns them into sums of cross-entropy and KL(p_clean || p_variant), per
column and per sequence, and at the end into CE, delta loss, KL and loss recovered.

Predictions counted (``TOKEN_RULE``): position t's prediction of token t+1 counts when t is a spliced
position (kept: not BOS, PAD or EOS) and token t+1 is a real token (attention mask 1). BOS predicting
the first token is not counted: BOS is never spliced and attention is causal, so no splice can change
it. CE_clean, every spliced and ablated CE, delta loss, KL and loss recovered all use these same
predictions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.per_sequence import downstream_ratios

CLEAN, ZERO, MEAN = "clean", "zero_ablation", "mean_ablation"


TOKEN_RULE = (
    "a prediction counts when it is made at a spliced position (not BOS, PAD or EOS) and its target is a real "
    "token (attention mask 1); BOS predicting the first token is not counted"
)


def counted_predictions(keep: Tensor, attention_mask: Tensor) -> Tensor:
    """``[B, T-1]`` bool: True where position t's prediction of token t+1 counts (``TOKEN_RULE``)."""
    return keep[:, :-1] & (attention_mask[:, 1:] != 0)


def prefix_column(end: int) -> str:
    return f"prefix_{end}"


def logsumexp_(x: Tensor, scratch: Tensor | None = None) -> Tensor:
    """``torch.logsumexp(x, -1)`` by the same operations, its ``[N, V]`` temporary written into ``scratch``.

    Without ``scratch``, ``x`` itself is overwritten. A fresh ``[N, V]`` temporary per call is what
    costs on CPU (new pages are faulted in on every call: more than the exp itself).
    """
    m = x.amax(-1, keepdim=True)
    m.masked_fill_(m.abs() == math.inf, 0)
    tmp = x.sub_(m) if scratch is None else torch.sub(x, m, out=scratch)
    return tmp.exp_().sum(-1).log_().add_(m.squeeze(-1))


class CleanNextToken:
    """The clean model's next-token distribution over a chunk of rows, prepared once for all variants.

    With ``lse(l) = log sum exp(l)``, log-probabilities are ``l - lse(l)``, so for a variant's logits
    ``l``: CE = ``lse(l) - l[label]`` and KL(p_clean || p) = ``sum p_clean * (lp_clean - lp)`` =
    ``(p_clean . l_clean - lse(l_clean)) - (p_clean . l - lse(l))``. Everything stays in log space
    (finite where a variant gives a token vanishing probability), and each variant costs one
    logsumexp and one dot product with ``p_clean`` instead of a full log-softmax and KL pass. Both
    terms are computed by the same operations, so identical logits give a KL of exactly 0.

    ``probs`` (optional, shaped like ``logits``) receives ``p_clean``, so a caller scoring many
    chunks can reuse one buffer; ``logits`` is left unchanged.
    """

    def __init__(self, logits: Tensor, labels: Tensor, probs: Tensor | None = None) -> None:
        self.labels = labels
        self.probs = torch.empty_like(logits) if probs is None else probs
        lse = logsumexp_(logits, scratch=self.probs)
        torch.sub(logits, lse[:, None], out=self.probs).exp_()
        # The same operations as versus() on the same logits: identical logits give a KL of exactly 0.
        self.ce = lse - self._label_logits(logits)
        self._cross = self._dot(logits) - lse
        self.kl = torch.zeros_like(self.ce)

    def _label_logits(self, logits: Tensor) -> Tensor:
        return logits.gather(-1, self.labels[:, None]).squeeze(-1)

    def _dot(self, logits: Tensor) -> Tensor:
        # einsum runs the row-wise dot product as one BLAS call (faster than multiply-then-sum on CPU).
        return torch.einsum("rv,rv->r", self.probs, logits)

    def versus(self, logits: Tensor, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        """Per-row CE of the labels under ``logits`` and KL(p_clean || p_logits).

        ``overwrite=True`` lets the logsumexp work in ``logits`` (its values are lost), saving an ``[N, V]`` copy.
        """
        label, dot = self._label_logits(logits), self._dot(logits)
        lse = logsumexp_(logits if overwrite else logits.clone())
        return lse - label, self._cross - (dot - lse)


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
        self.per_sequence_fields = (
            ["n_tokens"] + [f"ce_{col}" for col in self.columns] + [f"kl_{col}" for col in self.columns]
        )
        if n_sequences:
            self.state["per_sequence"] = torch.zeros(n_sequences, len(self.per_sequence_fields), dtype=torch.float64)
        # Headline metrics as ratios of the per-sequence columns, for bootstrap intervals.
        self.ratio_metrics = downstream_ratios(self.prefix_ends)
        self.path: str = "resumed"
        self.notes: list[str] = []

    def update(self, batch: TranscoderBatch) -> None:
        """Reconstruction batches carry no logits: this accumulator is fed by ``update_column``."""

    def update_column(self, column: str, ce: Tensor, kl: Tensor, seq_ids: Tensor) -> None:
        """Add one chunk of per-row CE and KL (from ``CleanNextToken``) to ``column``.

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
            return {"n_tokens": 0, "token_rule": TOKEN_RULE, "note": "no tokens were evaluated downstream"}
        if len(set(counts)) != 1:
            raise RuntimeError(f"downstream columns saw different token counts {counts}")
        means = self.column_means()
        ce_clean = means[CLEAN][0]
        ce_zero, ce_mean = means[ZERO][0], means[MEAN][0]
        per_prefix = []
        for end in self.prefix_ends:
            ce, kl = means[prefix_column(end)]
            per_prefix.append(
                {
                    "prefix_end": end,
                    "ce_spliced": ce,
                    "delta_loss": ce - ce_clean,
                    "kl_div": kl,
                    "loss_recovered_zero": loss_recovered(ce_zero, ce, ce_clean),
                    "loss_recovered_mean": loss_recovered(ce_mean, ce, ce_clean),
                }
            )
        full = per_prefix[-1]
        return {
            "n_tokens": counts[0],
            "token_rule": TOKEN_RULE,
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
