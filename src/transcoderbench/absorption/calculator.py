"""The per-word absorption formula (SAEBench's ``FeatureAbsorptionCalculator``), as tensor math.

For one letter with unit probe direction ``p`` and main latents ``M``, and a word whose input
``x`` the probe calls positive, each latent ``i`` gets a *probe projection*
``proj_i = a_i * scale_i``, where ``a_i`` is its activation and ``scale_i`` is what one unit
of activation contributes along ``p``:

* SAE mode (input site == output site), exactly SAEBench: ``scale_i = cos(W_dec[i], p)``;
* transcoder mode: ``scale_i = <D_in[i], p>`` with ``D_in`` the input decoder fitted by least
  squares (:mod:`input_decoder`): latent ``i``'s contribution to ``x . p`` per unit of activation,
  i.e. SAEBench's formula after rescaling each latent to a unit input-decoder row (see
  docs/absorption.md). The gates use ``cos_i = cos(D_in[i], p)``.

With ``P = x . p`` (the word's projection on the letter direction), ``main = sum_{i in M} proj_i``
and ``A`` the sum of the (at most ``max_absorbers``) largest positive ``proj_i`` among latents
outside ``M`` whose ``cos_i >= cos_threshold``:

* absorption fraction = 0 if ``main >= P`` or ``A / P < proportion_threshold``; else 1 if
  ``main <= 0``; else ``a / (a + main)`` with ``a = min(A, P - main)``, clipped to [0, 1];
* full absorption: no main latent fires (``|a_i| < 1e-8``), the latent with the largest
  ``proj_i`` has ``cos_i >= full_cos_threshold``, ``P > 0`` and its ``proj_i / P >=
  proportion_threshold``.

``P <= 0`` gives fraction 0 and no full absorption: SAEBench reaches the same result for
``P < 0`` through its gates and divides by zero at ``P == 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: A main latent with |activation| below this counts as not firing (SAEBench's EPS).
FIRING_EPS = 1e-8


@dataclass(frozen=True)
class Thresholds:
    cos_threshold: float = 0.1
    full_cos_threshold: float = 0.025
    proportion_threshold: float = 0.4
    max_absorbers: int = 3


@dataclass
class WordAbsorption:
    """Per-word results for ``N`` words (tensors of length ``N``, CPU, float64 / bool / int64)."""

    absorption_fraction: Tensor
    full_absorption: Tensor
    probe_projection: Tensor
    """``P``: each word's projection on the unit probe direction."""
    main_projection: Tensor
    """``main``: the summed probe projection of the main latents."""
    absorber_projection: Tensor
    """``A``: the summed projection of the top absorbing candidates."""
    top_latent: Tensor
    """The latent with the largest probe projection (full absorption's candidate)."""
    top_projection: Tensor
    total_projection: Tensor
    """The summed probe projection of all latents (``P`` minus it is the part no latent carries)."""
    absorbers: list[list[int]]
    """Per word, the latents counted in ``A``, largest first."""


def word_absorption(
    acts: Tensor,
    scale: Tensor,
    cos: Tensor,
    probe_projection: Tensor,
    main_latents: list[int],
    thresholds: Thresholds = Thresholds(),
) -> WordAbsorption:
    """Absorption of ``N`` words of one letter.

    ``acts [N, d_sae]`` latent activations; ``scale [d_sae]`` each latent's projection per unit
    of activation; ``cos [d_sae]`` each latent's row cosine with the probe (the gates);
    ``probe_projection [N]`` = ``P``; ``main_latents`` the letter's main latents.
    """
    acts = acts.double().cpu()
    scale = scale.double().cpu()
    cos = cos.double().cpu()
    P = probe_projection.double().cpu()
    d_sae = acts.shape[1]
    proj = acts * scale
    main = torch.tensor(sorted(set(main_latents)), dtype=torch.long)
    is_main = torch.zeros(d_sae, dtype=torch.bool)
    is_main[main] = True

    main_proj = proj[:, main].sum(dim=1)
    candidate = (~is_main & (cos >= thresholds.cos_threshold))[None, :] & (proj > 0)
    masked = torch.where(candidate, proj, torch.full_like(proj, float("-inf")))
    k = min(thresholds.max_absorbers, d_sae)
    top_values, top_ids = masked.topk(k, dim=1)
    counted = torch.isfinite(top_values)
    absorber_proj = torch.where(counted, top_values, torch.zeros_like(top_values)).sum(dim=1)
    absorbers = [[int(i) for i, ok in zip(ids, oks) if ok] for ids, oks in zip(top_ids, counted)]

    positive = P > 0
    safe_P = torch.where(positive, P, torch.ones_like(P))
    gated_out = ~positive | (main_proj >= P) | (absorber_proj / safe_P < thresholds.proportion_threshold)
    absorbed = torch.minimum(absorber_proj, P - main_proj)
    partial = (absorbed / (absorbed + main_proj)).clamp(0.0, 1.0)
    fraction = torch.where(gated_out, torch.zeros_like(P), torch.where(main_proj <= 0, torch.ones_like(P), partial))
    fraction = torch.nan_to_num(fraction, nan=0.0)  # 0/0 only arises where gated_out already holds

    top_latent = proj.argmax(dim=1)
    top_proj = proj.gather(1, top_latent[:, None]).squeeze(1)
    mains_silent = (acts[:, main].abs() < FIRING_EPS).all(dim=1)
    full = (
        mains_silent
        & (cos[top_latent] >= thresholds.full_cos_threshold)
        & positive
        & (top_proj / safe_P >= thresholds.proportion_threshold)
    )
    return WordAbsorption(
        absorption_fraction=fraction,
        full_absorption=full,
        probe_projection=P,
        main_projection=main_proj,
        absorber_projection=absorber_proj,
        top_latent=top_latent,
        top_projection=top_proj,
        total_projection=proj.sum(dim=1),
        absorbers=absorbers,
    )
