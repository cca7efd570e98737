"""Reconstruction quality: FVU / explained variance, MSE, MAE, cosine, L2 ratio, shrinkage.

Every statistic is a fixed-size fp64 sum, so the numbers are the same whether the tokens come
in one batch or many (except the legacy explained variance, which is defined per batch), and
data-parallel ranks combine by summing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.shared import centred_target_sq, prefix_stats, target_stats

LEGACY_EV_NOTE = (
    "explained_variance_legacy is the mean over tokens of 1 - ||y_t - y_hat_t||^2 / "
    "||y_t - mean_batch(y)||^2 with mean_batch the mean over the kept tokens of the token's own "
    "batch (SAELens's legacy form); it depends on the batch size, so compare it only between runs "
    "with the same batches. Use explained_variance (pooled, = sklearn r2_score variance_weighted)."
)

_SUM_KEYS = ("sse", "sae", "sum_cos", "sum_l2_ratio", "sum_yhat_sq", "sum_dot", "sum_legacy_ev")
_COUNT_KEYS = ("n_tokens", "n_zero_target_norm", "n_cos_zero_norm", "n_legacy_excluded")


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def _where_ok(ok: Tensor, num: Tensor, den: Tensor) -> Tensor:
    """Sum of ``num / den`` over ``ok`` (without boolean indexing, which syncs a GPU)."""
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num)).sum()


def _batch_sums(batch: TranscoderBatch, prefix: int) -> dict[str, Tensor]:
    """This batch's contribution to every state entry, in float64 on the data's device.

    The per-token quantities come from ``metrics.shared`` (computed once per batch for every
    accumulator and prefix that needs them).
    """
    t = target_stats(batch)
    s = prefix_stats(batch, prefix)
    y_norm, yh_norm, dot, err_sq = t["y_norm"], s["yh_norm"], s["dot"], s["err_sq"]
    norm_prod = y_norm * yh_norm
    cos_ok = norm_prod > 0
    y_ok = y_norm > 0
    centred_sq = centred_target_sq(batch)  # SAELens legacy: this batch's own mean
    legacy_ok = centred_sq > 0
    return {
        "n_tokens": torch.tensor(batch.n_tokens, dtype=torch.int64),
        "sum_y": t["sum_y"],
        "sum_y2": t["sum_y2"],
        "sse": err_sq.sum(),
        "sae": s["sae"],
        "sum_dot": dot.sum(),
        "sum_yhat_sq": yh_norm.square().sum(),
        "sum_cos": _where_ok(cos_ok, dot, norm_prod),
        "n_cos_zero_norm": (~cos_ok).sum(),
        "sum_l2_ratio": _where_ok(y_ok, yh_norm, y_norm),
        "n_zero_target_norm": (~y_ok).sum(),
        "sum_legacy_ev": legacy_ok.sum() - _where_ok(legacy_ok, err_sq, centred_sq),  # sum of (1 - ratio)
        "n_legacy_excluded": (~legacy_ok).sum(),
    }


class Reconstruction(Accumulator):
    """Reconstruction quality of one nested prefix (default ``-1``: the full reconstruction).

    Definitions (y target, y_hat reconstruction, N kept tokens, d = d_out):

    - ``fvu`` = sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean(y)||^2, where mean(y) is the
      per-dimension mean over all N tokens; equals ``1 - r2_score(y, y_hat,
      multioutput="variance_weighted")``. ``explained_variance`` = 1 - fvu. The denominator is
      streamed as sum(sum_y2 - sum_y^2 / N) over dimensions, in fp64.
    - ``explained_variance_legacy``: see ``LEGACY_EV_NOTE``; it depends on the batch size. Tokens
      whose centred norm is 0 (e.g. a one-token batch) would divide by zero, so they are left out
      of that mean and counted in ``explained_variance_legacy_excluded_tokens``.
    - ``mse`` / ``mae``: per element (divided by N * d).
    - ``cosine_similarity``: mean over tokens of <y, y_hat> / (||y|| ||y_hat||); a token where
      either norm is exactly 0 counts as 0 (the limit torch's ``cosine_similarity`` eps clamp
      gives) and is counted in ``cosine_zero_norm_tokens``.
    - ``l2_ratio``: mean over tokens of ||y_hat|| / ||y||, over tokens with ||y|| > 0 (the others
      are counted in ``zero_target_norm_tokens``).
    - ``relative_reconstruction_bias`` = sum ||y_hat||^2 / sum <y, y_hat> (1 means no shrinkage).
    """

    name = "reconstruction"

    def __init__(self, d_out: int, prefix: int = -1) -> None:
        super().__init__()
        self.d_out = int(d_out)
        self.prefix = int(prefix)
        f64 = torch.float64
        self.state["sum_y"] = torch.zeros(self.d_out, dtype=f64)
        self.state["sum_y2"] = torch.zeros(self.d_out, dtype=f64)
        for key in _SUM_KEYS:
            self.state[key] = torch.zeros((), dtype=f64)
        for key in _COUNT_KEYS:
            self.state[key] = torch.zeros((), dtype=torch.int64)

    def update(self, batch: TranscoderBatch) -> None:
        self._add(batch, self.prefix)

    def _add(self, batch: TranscoderBatch, prefix: int) -> None:
        y, y_hat = batch.y, batch.y_hat_prefixes[prefix]
        if y.ndim != 2 or y.shape[1] != self.d_out or y_hat.shape != y.shape:
            raise ValueError(
                f"expected y and y_hat of shape [N, {self.d_out}], got {tuple(y.shape)} and {tuple(y_hat.shape)}"
            )
        if y.shape[0] == 0:
            return
        # Reduce where the data lives (GPU or CPU); only the small sums move to the state.
        for key, value in _batch_sums(batch, prefix).items():
            self.state[key] += value.to(self.state[key].device)

    def update_from(self, y: Tensor, y_hat: Tensor) -> None:
        """Add one batch of targets ``y [N, d_out]`` and reconstructions ``y_hat [N, d_out]``."""
        empty = y.new_zeros(y.shape[0], 0)
        self._add(TranscoderBatch(x=empty, y=y, f=empty, y_hat_prefixes=y_hat[None], seq_ids=empty.long()), 0)

    def result(self) -> dict[str, Any]:
        st = {k: v.item() for k, v in self.state.items() if v.ndim == 0}
        n = int(st["n_tokens"])
        sum_y = self.state["sum_y"]
        total_var = float((self.state["sum_y2"] - sum_y.square() / n).sum()) if n else float("nan")
        fvu = _ratio(st["sse"], total_var)
        n_l2 = n - int(st["n_zero_target_norm"])
        n_legacy = n - int(st["n_legacy_excluded"])
        return {
            "n_tokens": n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "explained_variance_legacy": _ratio(st["sum_legacy_ev"], n_legacy),
            "explained_variance_legacy_excluded_tokens": int(st["n_legacy_excluded"]),
            "explained_variance_legacy_note": LEGACY_EV_NOTE,
            "mse": _ratio(st["sse"], n * self.d_out),
            "mae": _ratio(st["sae"], n * self.d_out),
            "cosine_similarity": _ratio(st["sum_cos"], n),
            "cosine_zero_norm_tokens": int(st["n_cos_zero_norm"]),
            "l2_ratio": _ratio(st["sum_l2_ratio"], n_l2),
            "zero_target_norm_tokens": int(st["n_zero_target_norm"]),
            "relative_reconstruction_bias": _ratio(st["sum_yhat_sq"], st["sum_dot"]),
            "total_variance_per_token": _ratio(total_var, n),
        }


class PrefixReconstruction(Accumulator):
    """One ``Reconstruction`` per nested (Matryoshka) prefix, all fed from the same batch.

    ``self.state`` holds every child's entries under ``"<i>.<key>"`` and the children read and
    write those very tensors, so the inherited ``merge``/``all_reduce`` (and anyone who moves
    the state to another device) see one flat dict of sums.
    """

    name = "prefixes"

    def __init__(self, d_out: int, prefix_ends: tuple[int, ...]) -> None:
        super().__init__()
        self.prefix_ends = tuple(int(e) for e in prefix_ends)
        if not self.prefix_ends:
            raise ValueError("prefix_ends must name at least one prefix")
        self._children = [Reconstruction(d_out, prefix=i) for i in range(len(self.prefix_ends))]
        for i, child in enumerate(self._children):
            for key, value in child.state.items():
                self.state[f"{i}.{key}"] = value

    def children(self) -> list[Reconstruction]:
        """The per-prefix accumulators, pointed at this accumulator's current state tensors."""
        for i, child in enumerate(self._children):
            child.state = {key: self.state[f"{i}.{key}"] for key in child.state}
        return self._children

    def update(self, batch: TranscoderBatch) -> None:
        if batch.y_hat_prefixes.shape[0] != len(self.prefix_ends):
            raise ValueError(
                f"batch has {batch.y_hat_prefixes.shape[0]} prefix reconstructions, "
                f"expected {len(self.prefix_ends)} for prefix ends {list(self.prefix_ends)}"
            )
        for child in self.children():
            child.update(batch)

    def result(self) -> dict[str, Any]:
        return {
            "prefix_ends": list(self.prefix_ends),
            "per_prefix": [{"prefix_end": e, **c.result()} for e, c in zip(self.prefix_ends, self.children())],
        }
