"""Match the latents of transcoder A to those of B (same sites): decoder cosine and activation correlation.

Decoder cosine is computed blockwise (``block`` rows of A against all of B at a time), so the
``d_A x d_B`` matrix never exists at once; each latent keeps its ``M`` best candidates in B. The
activation correlation of a candidate pair is streamed in the pass: :class:`PairCorrelation` sums
``f_a``, ``f_a^2`` over A's latents, ``f_b``, ``f_b^2`` over B's, and ``f_a f_b`` over the ``d_A x M``
candidate pairs only (from A's non-zero activations, so it costs about ``N * L0 * M`` per batch). A
latent whose best partner in B is not among its ``M`` decoder-cosine candidates is not found by
correlation: that is the price of bounded memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: A latent is "matched" when its best counterpart reaches this decoder cosine or activation correlation.
MATCH_THRESHOLD = 0.7


@torch.no_grad()
def cosine_candidates(W_a: Tensor, W_b: Tensor, m: int = 8, block: int = 1024) -> tuple[Tensor, Tensor]:
    """For each row of ``W_a``, the ``m`` rows of ``W_b`` with the highest cosine: ``(ids [d_a, m], cos [d_a, m])``."""
    a = torch.nn.functional.normalize(W_a.float(), dim=1)
    b = torch.nn.functional.normalize(W_b.float(), dim=1)
    m = min(m, b.shape[0])
    ids, vals = [], []
    for start in range(0, a.shape[0], block):
        v, i = (a[start : start + block] @ b.T).topk(m, dim=1)
        ids.append(i)
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


class PairCorrelation:
    """Streamed activation correlation of each latent of A with its candidate latents in B.

    The engine evaluates the runs of a batch in order; A's collector hands its activations over
    (:meth:`feed`), and B's, fed next on the same tokens, completes the sums.
    """

    def __init__(self, name_a: str, name_b: str, candidates: Tensor, cos: Tensor, d_b: int) -> None:
        self.name_a, self.name_b = name_a, name_b
        self.candidates, self.cos = candidates, cos
        d_a, m = candidates.shape
        self.sum_a = torch.zeros(d_a, dtype=torch.float64)
        self.sq_a = torch.zeros(d_a, dtype=torch.float64)
        self.sum_b = torch.zeros(d_b, dtype=torch.float64)
        self.sq_b = torch.zeros(d_b, dtype=torch.float64)
        self.sum_ab = torch.zeros(d_a, m, dtype=torch.float64)
        self.n = 0
        self._f_a: Tensor | None = None

    def feed(self, name: str, f: Tensor) -> None:
        if name == self.name_a:
            self._f_a = f
        elif name == self.name_b and self._f_a is not None:
            self._add(self._f_a, f)
            self._f_a = None

    def _add(self, f_a: Tensor, f_b: Tensor) -> None:
        dev = f_a.device
        if self.sum_a.device != dev:
            for key in ("sum_a", "sq_a", "sum_b", "sq_b", "sum_ab", "candidates"):
                setattr(self, key, getattr(self, key).to(dev))
        self.sum_a += f_a.sum(0, dtype=torch.float64)
        self.sq_a += f_a.double().square().sum(0)
        self.sum_b += f_b.sum(0, dtype=torch.float64)
        self.sq_b += f_b.double().square().sum(0)
        rows, cols = f_a.nonzero(as_tuple=True)
        prod = f_a[rows, cols, None].double() * f_b[rows[:, None], self.candidates[cols]].double()
        self.sum_ab.index_add_(0, cols, prod)
        self.n += f_a.shape[0]

    def correlation(self) -> Tensor:
        """Pearson correlation over the evaluated tokens, ``[d_a, M]`` (0 where a latent never varied)."""
        n = max(self.n, 1)
        c = self.candidates.to(self.sum_b.device)
        cov = self.sum_ab - self.sum_a[:, None] * self.sum_b[c] / n
        var_a = (self.sq_a - self.sum_a.square() / n).clamp_min(0)
        var_b = (self.sq_b - self.sum_b.square() / n).clamp_min(0)
        den = (var_a[:, None] * var_b[c]).sqrt()
        return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov)).float().cpu()

    def matches(self, threshold: float = MATCH_THRESHOLD) -> dict[str, Any]:
        """Best counterpart per latent of A by each measure, and the unmatched latents of both sides."""
        corr = self.correlation()
        cand, cos = self.candidates.cpu(), self.cos.cpu()
        best_corr_val, j = corr.max(dim=1)
        best_corr = cand.gather(1, j[:, None])[:, 0]
        matched = (cos[:, 0] >= threshold) | (best_corr_val >= threshold)
        partners = set(cand[matched, 0].tolist()) | set(best_corr[matched].tolist())
        d_b = self.sum_b.shape[0]
        return {
            "a": self.name_a,
            "b": self.name_b,
            "threshold": threshold,
            "candidates_per_latent": cand.shape[1],
            "n_tokens": self.n,
            "best_cos_id": cand[:, 0].tolist(),
            "best_cos": [round(float(v), 4) for v in cos[:, 0]],
            "best_corr_id": best_corr.tolist(),
            "best_corr": [round(float(v), 4) for v in best_corr_val],
            "unmatched_a": torch.nonzero(~matched)[:, 0].tolist(),
            "unmatched_b": [i for i in range(d_b) if i not in partners],
        }
