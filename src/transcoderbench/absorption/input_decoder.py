"""An input-space decoder for a transcoder's own latents, fitted by least squares on held-in text.

SAEBench's share of a latent is its contribution ``a_i <d_i, p>`` to the *input's* projection on the
letter direction, read off the decoder ``d_i``. A transcoder's decoder writes the output, so this
module fits the input-space decoder its latents imply, with an intercept ``b`` (what an SAE's
``b_dec`` is):

    D_in, b = argmin  sum_t |x_t - a_t D_in - b|^2  +  ridge * sum_i G_ii |D_in[i]|^2

over encoder inputs ``x_t`` and latent activations ``a_t`` (``G = A^T A``). Each latent is penalised
in proportion to its own ``G_ii``, so the ridge is invariant to rescaling a latent (``a_i -> c a_i``
gives exactly ``D_in[i] -> D_in[i] / c``); the intercept is not penalised.

*Which* rows the fit sees decides whether the shares mean anything. Fitted on the scored words
themselves, ``D_in`` has about as many free rows as there are words and memorises them (on the demo
checkpoints it reconstructed held-out words with FVU 2.4 while scoring absorption 0.82). So the
caller fits on text tokens and the training words, and scores only the held-out test words;
:func:`fvu` on those words says how well the fitted decoder generalises (see docs/absorption.md).

The fit streams: :class:`NormalEquations` accumulates ``G``, ``A^T X``, ``A^T 1`` and ``X^T 1``
chunk by chunk as sparse products (cost ~ rows x active-per-row^2; ``G`` is ``[d_sae, d_sae]``
float64). Nested prefixes reuse the same sums: a prefix's system is a sub-block.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

#: Default relative ridge (fraction of each latent's own sum of squared activations).
RIDGE = 1e-4
#: Rows per sparse product.
ROWS = 4096


@dataclass
class InputDecoder:
    """``x ~ a @ rows + bias``: one row per latent (zero for latents that never fired or lie outside the prefix)."""

    rows: Tensor
    """``[d_sae, d_in]`` float64 on CPU."""
    bias: Tensor
    """``[d_in]`` float64 on CPU."""


class NormalEquations:
    """Streamed sums of the least-squares problem with an intercept, over every row passed to :meth:`update`."""

    def __init__(self, d_sae: int, d_in: int, device: torch.device | str = "cpu") -> None:
        self.gram = torch.zeros(d_sae, d_sae, dtype=torch.float64, device=device)
        """``A^T A``."""
        self.cross = torch.zeros(d_sae, d_in, dtype=torch.float64, device=device)
        """``A^T X``."""
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        """``A^T 1``."""
        self.input_sum = torch.zeros(d_in, dtype=torch.float64, device=device)
        """``X^T 1``."""
        self.n_rows = 0

    @torch.no_grad()
    def update(self, acts: Tensor, x: Tensor) -> None:
        """Add rows: latent activations ``[n, d_sae]`` and the inputs the encoder saw ``[n, d_in]``."""
        device = self.gram.device
        d_sae = self.gram.shape[0]
        for s in range(0, acts.shape[0], ROWS):
            chunk = acts[s : s + ROWS].to(device)
            xs = x[s : s + ROWS].to(device=device, dtype=torch.float64)
            a = chunk.to_sparse().to(torch.float64)  # never a dense float64 copy of the chunk
            at = a.t()
            with warnings.catch_warnings():  # torch's "sparse CSR support is in beta", raised internally
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                product = torch.sparse.mm(at, a).coalesce()
            i, j = product.indices()
            self.gram.view(-1).index_add_(0, i * d_sae + j, product.values())
            self.cross += torch.sparse.mm(at, xs)
            self.act_sum += chunk.sum(dim=0, dtype=torch.float64)
            self.input_sum += xs.sum(dim=0)
            self.n_rows += xs.shape[0]

    @property
    def active(self) -> Tensor:
        """Latents that fired on at least one row."""
        return torch.nonzero(self.gram.diagonal() > 0).flatten()


def solve_input_decoder(eq: NormalEquations, *, ridge: float = RIDGE, prefix_end: int | None = None) -> InputDecoder:
    """The fitted decoder on the latents below ``prefix_end`` (all if None) that fired, and the intercept."""
    active = eq.active
    if prefix_end is not None:
        active = active[active < prefix_end]
    m = active.numel()
    d_sae, d_in = eq.cross.shape
    system = torch.empty(m + 1, m + 1, dtype=torch.float64, device=eq.gram.device)
    system[:m, :m] = eq.gram[active][:, active]
    diag = torch.arange(m, device=system.device)
    system[diag, diag] *= 1.0 + ridge
    system[:m, m] = system[m, :m] = eq.act_sum[active]
    system[m, m] = eq.n_rows
    rhs = torch.cat([eq.cross[active], eq.input_sum[None]])
    solution = _spd_solve(system, rhs).cpu()
    rows = torch.zeros(d_sae, d_in, dtype=torch.float64)
    rows[active.cpu()] = solution[:m]
    return InputDecoder(rows, solution[m])


def fvu(decoder: InputDecoder, acts: Tensor, x: Tensor) -> float | None:
    """Fraction of the variance of ``x`` that ``acts @ rows + bias`` leaves unexplained (None without variance).

    ``acts`` may hold only a prefix's columns.
    """
    x = x.double().cpu()
    acts = acts.double().cpu()
    error = x - acts @ decoder.rows[: acts.shape[1]] - decoder.bias
    total = (x - x.mean(dim=0)).pow(2).sum()
    return float(error.pow(2).sum() / total) if total > 0 else None


def _spd_solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """Cholesky solve; least squares if the system is singular (e.g. ridge 0 and latents that always co-fire)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(matrix.cpu(), rhs.cpu(), driver="gelsd").solution.to(matrix.device)
