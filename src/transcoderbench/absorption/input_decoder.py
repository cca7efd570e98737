"""An input-space decoder for a transcoder's own latents, fitted by least squares on the absorption words.

SAEBench's share of a latent is its contribution ``a_i <d_i, p>`` to the *input's* projection on the
letter direction, read off the decoder ``d_i``. A transcoder's decoder writes the output, so this
module fits the input-space decoder its latents imply:

    D_in = argmin  sum_t |x_t - a_t D_in|^2  +  ridge * sum_i G_ii |D_in[i]|^2

over the words' encoder inputs ``x_t`` and latent activations ``a_t`` (``G = A^T A``). Each latent
is penalised in proportion to its own ``G_ii``, so the ridge is invariant to rescaling a latent
(``a_i -> c a_i`` gives exactly ``D_in[i] -> D_in[i] / c``) and is a fixed fraction of each latent's
own signal, whatever the units of the data. There is no intercept: a free, unpenalised offset is
nearly collinear with latents that fire on most words, and the ridge then pushes their share of
the input into it (seen on a planted model), so what the latents do not reconstruct stays in the
residual ``x - a D_in``, as an SAE's error does.

The fit streams: the normal equations ``G``, ``A^T X`` are accumulated ``ROWS`` words at a time
(a dense ``[ROWS, m]`` block while that is cheap, else by scattering each word's few active
latents; never a dense ``[words, d_sae]`` matrix), over the latents that fire on at least one word (``m`` of them; ``G`` is ``[m, m]`` float64). Nested prefixes
reuse the same sums: a prefix's system is a sub-block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Default relative ridge (fraction of each latent's own sum of squared activations).
RIDGE = 1e-4
#: Words per accumulation step.
ROWS = 512
#: Up to this many active latents, each step multiplies a dense ``[ROWS, m]`` block (BLAS); above
#: it, each word's active latents are scattered (cost ~ words x active-per-word^2, not x m^2).
DENSE_ACTIVE = 4096
#: Bound on the scattered ``[rows, k, d]`` block of ``A^T X`` per step (elements).
SCATTER_ELEMENTS = 1 << 24


@dataclass
class NormalEquations:
    """``G = A^T A`` and ``B = A^T X`` over the active latents."""

    active: Tensor
    """``[m]`` int64: latent indices that fired on at least one word, increasing."""
    gram: Tensor
    """``[m, m]`` float64."""
    cross: Tensor
    """``[m, d_in]`` float64."""
    n_words: int


def _nonzeros(acts: Tensor) -> tuple[Tensor, Tensor]:
    """``(values [n, k], indices [n, k])`` of each row's nonzeros, padded with zeros (k = most per row)."""
    k = int((acts != 0).sum(dim=1).max()) if acts.numel() else 0
    k = max(k, 1)
    _, idx = acts.abs().topk(k, dim=1)
    return acts.gather(1, idx), idx


def normal_equations(latent_chunks: list[Tensor], input_chunks: list[Tensor]) -> NormalEquations:
    """Accumulate the normal equations over matching chunks of latents ``[n, d_sae]`` and inputs ``[n, d_in]``."""
    device = latent_chunks[0].device
    fired = torch.zeros(latent_chunks[0].shape[1], dtype=torch.bool, device=device)
    for acts in latent_chunks:
        for s in range(0, acts.shape[0], ROWS):
            fired |= (acts[s : s + ROWS] != 0).any(dim=0)
    active = torch.nonzero(fired).flatten()
    m = active.numel()
    position = torch.full((fired.numel(),), m, dtype=torch.long, device=device)  # inactive -> a dump slot
    position[active] = torch.arange(m, device=device)
    d_in = input_chunks[0].shape[1]
    gram = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=device)  # slot m: padding
    cross = torch.zeros(m + 1, d_in, dtype=torch.float64, device=device)
    n_words = 0
    for acts, xs in zip(latent_chunks, input_chunks):
        for s in range(0, acts.shape[0], ROWS):
            x = xs[s : s + ROWS].to(device).double()
            if m <= DENSE_ACTIVE:  # a [rows, m] block: BLAS beats scattering
                block = acts[s : s + ROWS, active].double()
                gram[:m, :m] += block.T @ block
                cross[:m] += block.T @ x
                n_words += block.shape[0]
                continue
            values, idx = _nonzeros(acts[s : s + ROWS].double())
            pos = position[idx]
            n, k = values.shape
            outer = values[:, :, None] * values[:, None, :]
            gram.index_put_((pos[:, :, None].expand(n, k, k), pos[:, None, :].expand(n, k, k)), outer, accumulate=True)
            step = max(1, SCATTER_ELEMENTS // max(1, k * d_in))
            for r in range(0, n, step):
                block = values[r : r + step, :, None] * x[r : r + step, None, :]
                cross.index_add_(0, pos[r : r + step].flatten(), block.reshape(-1, d_in))
            n_words += n
    return NormalEquations(active, gram[:m, :m], cross[:m], n_words)


def solve_input_decoder(
    eq: NormalEquations, d_sae: int, *, ridge: float = RIDGE, prefix_end: int | None = None
) -> Tensor:
    """``D_in [d_sae, d_in]`` float64 on CPU, fitted on the latents below ``prefix_end`` only.

    Latents that never fired (or lie outside the prefix) get zero rows.
    """
    m = eq.active.numel()
    inside = torch.arange(m, device=eq.active.device)
    if prefix_end is not None:
        inside = inside[eq.active < prefix_end]
    gram = eq.gram[inside][:, inside].clone()
    diag = torch.arange(inside.numel(), device=gram.device)
    gram[diag, diag] *= 1.0 + ridge
    rows = torch.zeros(d_sae, eq.cross.shape[1], dtype=torch.float64)
    if inside.numel():
        rows[eq.active[inside].cpu()] = _spd_solve(gram, eq.cross[inside]).cpu()
    return rows


def _spd_solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """Cholesky solve; least squares if the system is singular (e.g. ridge 0 and latents that always co-fire)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(matrix.cpu(), rhs.cpu(), driver="gelsd").solution.to(matrix.device)
