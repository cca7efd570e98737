"""The sparse (gathered decoder rows) decode equals the dense decode for every architecture."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from transcoderbench.transcoders import (
    BatchTopKTranscoder,
    JumpReLUTranscoder,
    MatryoshkaTranscoder,
    TopKTranscoder,
    Transcoder,
    active_latents,
)
from transcoderbench.transcoders.base import SPARSE_DECODE_MAX_DENSITY, sparse_prefix_decode

D_IN, D_SAE, D_OUT = 24, 96, 20
SITES = {"input_site": "blocks.0.hook_mlp_in", "output_site": "blocks.0.hook_mlp_out"}


def _weights(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        torch.randn(D_SAE, generator=g) * 0.1,
        torch.randn(D_SAE, D_OUT, generator=g),
        torch.randn(D_OUT, generator=g),
    )


def _make(kind: str) -> Transcoder:
    w = _weights(KINDS.index(kind))
    skip = torch.randn(D_IN, D_OUT, generator=torch.Generator().manual_seed(5)) * 0.1
    if kind == "batchtopk":
        return BatchTopKTranscoder(*w, **SITES, threshold=3.5)
    if kind == "matryoshka":
        return MatryoshkaTranscoder(*w, **SITES, prefix_ends=[6, 12, 30, 60, D_SAE], threshold=3.5)
    if kind == "matryoshka_unit_norm":
        return MatryoshkaTranscoder(*w, **SITES, prefix_ends=[10, 50, D_SAE], threshold=1.8, input_unit_norm=True)
    if kind == "jumprelu_skip":
        return JumpReLUTranscoder(*w, **SITES, threshold=torch.full((D_SAE,), 3.5), W_skip=skip)
    if kind == "jumprelu_negative_threshold":
        thr = torch.linspace(-2.5, 2.5, D_SAE).abs() + 3.5
        thr[::24] = -0.5  # some latents pass negative pre-activations
        return JumpReLUTranscoder(*w, **SITES, threshold=thr)
    if kind == "jumprelu_constant_norm":
        return JumpReLUTranscoder(
            *w, **SITES, threshold=torch.full((D_SAE,), 1.5), constant_norm_rescale=True, W_skip=skip
        )
    if kind == "topk":
        return TopKTranscoder(*w, **SITES, k=4, prefix_ends=[32, D_SAE])
    raise ValueError(kind)


KINDS = [
    "batchtopk",
    "matryoshka",
    "matryoshka_unit_norm",
    "jumprelu_skip",
    "jumprelu_negative_threshold",
    "jumprelu_constant_norm",
    "topk",
]


def _dense_reference(tc: Transcoder, f: Tensor, x: Tensor) -> Tensor:
    """Every prefix decoded densely in float64: ``f[:, :end] @ W_dec[:end]``, then un-standardised and skipped."""
    out = []
    x64 = x.double()
    for end in tc.prefix_ends:
        y = f[:, :end].double() @ tc.W_dec[:end].double() + tc.b_dec.double()
        _, stats = tc.standardize(x64)
        if stats is not None:
            y = y * stats[1] + stats[0]
        if tc.W_skip is not None:
            y = y + x64 @ tc.W_skip.double()
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_sparse_decode_equals_dense(kind: str) -> None:
    tc = _make(kind)
    x = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(1)) * 2.0
    x[3] = 0.5  # a token of constant value (input_unit_norm divides by std + eps)
    f = tc.encode(x)
    density = float((f != 0).float().mean())
    assert 0 < density <= SPARSE_DECODE_MAX_DENSITY, density  # the sparse path is the one under test
    assert bool(((f != 0).sum(dim=1) == 0).any()) or kind == "topk"  # tokens with no active latent
    want = _dense_reference(tc, f, x)
    got = tc.decode_prefixes(f, x)
    got_given = tc.decode_prefixes(f, x, active=active_latents(f))
    assert got.shape == (len(tc.prefix_ends), 200, D_OUT)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(got_given, got, rtol=0, atol=0)
    # The full prefix is the plain decode as well.
    torch.testing.assert_close(got[-1], tc.decode(f, x), rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("kind", ["matryoshka", "jumprelu_skip"])
def test_dense_fallback_when_many_latents_fire(kind: str) -> None:
    tc = _make(kind)
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(2))
    f = torch.randn(50, D_SAE, generator=torch.Generator().manual_seed(3))  # dense: every latent active
    torch.testing.assert_close(tc.decode_prefixes(f, x).double(), _dense_reference(tc, f, x), rtol=1e-5, atol=1e-4)


def test_sparse_prefix_decode_groups_and_empty_rows() -> None:
    W = torch.arange(12.0).reshape(4, 3)
    f = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    got = sparse_prefix_decode(active_latents(f), W, (1, 2, 4), 3)
    want = torch.stack([f[:, :e] @ W[:e] for e in (1, 2, 4)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_empty_batch_decodes_to_empty() -> None:
    tc = _make("matryoshka")
    x = torch.zeros(0, D_IN)
    assert tc.decode_prefixes(tc.encode(x), x).shape == (5, 0, D_OUT)
