"""Sparsity metrics on a hand-built JumpReLU case and against numpy on random TopK latents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transcoderbench.metrics import Sparsity, TranscoderBatch
from transcoderbench.transcoders import JumpReLUTranscoder, TopKTranscoder

# Which latents fire on which of 10 tokens (latent -> {token: activation}). Latents 3 and 5 have
# negative thresholds and fire with NEGATIVE values; 2 and 4 never fire.
FIRING = {
    0: {t: 1.0 for t in range(8)},  # 8/10: dense
    1: {0: 2.0},  # 1/10: exactly the dense threshold, so NOT dense (dense is strictly >)
    3: {1: -0.5, 2: 1.5, 3: 0.7},  # 3/10: dense, one negative activation
    5: {4: -2.0},  # 1/10, negative only: a "> 0" rule would call it dead
}
THRESHOLD = [0.5, 0.5, 0.5, -1.0, 0.5, -3.0]
N_TOKENS, D_SAE = 10, 6
# By hand: L0 per token = [2, 2, 2, 2, 2, 1, 1, 1, 0, 0]
L0 = [2, 2, 2, 2, 2, 1, 1, 1, 0, 0]


def _hand_built() -> tuple[JumpReLUTranscoder, torch.Tensor]:
    """An identity-encoder JumpReLU transcoder and inputs whose pre-activations we choose."""
    x = torch.empty(N_TOKENS, D_SAE)
    for latent, thr in enumerate(THRESHOLD):
        # below threshold when the latent should stay silent (0 for the negative thresholds is
        # above them but gives activation 0, which must not count as firing)
        x[:, latent] = 0.0 if thr < 0 else 0.2
        for token, value in FIRING.get(latent, {}).items():
            x[token, latent] = value
    tc = JumpReLUTranscoder(
        torch.eye(D_SAE),
        torch.zeros(D_SAE),
        torch.randn(D_SAE, 3),
        torch.zeros(3),
        input_site="blocks.0.hook_resid_mid",
        output_site="blocks.0.hook_mlp_out",
        threshold=torch.tensor(THRESHOLD),
    )
    return tc, x


def _batch(tc, x: torch.Tensor) -> TranscoderBatch:
    with torch.no_grad():
        f = tc.encode(x)
        y_hat = tc.decode_prefixes(f, x)
    return TranscoderBatch(x=x, y=y_hat[-1], f=f, y_hat_prefixes=y_hat, seq_ids=torch.arange(x.shape[0]))


def test_hand_built_case() -> None:
    tc, x = _hand_built()
    acc = Sparsity(D_SAE)
    acc.update(_batch(tc, x[:3]))  # two uneven batches
    acc.update(_batch(tc, x[3:]))
    f = tc.encode(x).detach()
    assert f[1, 3].item() == -0.5 and f[4, 5].item() == -2.0  # the real encoder gives negatives
    r = acc.result()
    assert acc.firing_counts.tolist() == [8, 1, 0, 3, 0, 1]
    assert acc.dead_indices().tolist() == [2, 4]
    assert acc.dense_indices().tolist() == [0, 3]
    assert r["n_tokens"] == 10
    assert r["dead_latents"] == 2 and r["dead_fraction"] == pytest.approx(2 / 6)
    assert r["dead_percentage"] == pytest.approx(100 * 2 / 6)
    assert r["dense_latents"] == 2 and r["dense_fraction"] == pytest.approx(2 / 6)
    # L0 by hand: sum 13 over 10 tokens; sorted [0,0,1,1,1,2,2,2,2,2] -> median (1+2)/2;
    # E[L0^2] = (5*4 + 3*1)/10 = 2.3, so the population variance is 2.3 - 1.3^2 = 0.61.
    assert r["l0_mean"] == pytest.approx(1.3)
    assert r["l0_median"] == 1.5
    assert r["l0_std"] == pytest.approx(math.sqrt(0.61))
    assert r["l0_histogram"] == {"bin_edges": [0, 1, 2, 3], "counts": [2, 3, 5]}
    # densities 0.8, 0.1, 0.3, 0.1 -> log10 -0.097, -1, -0.52, -1 in bins of 0.2 over [-1, 0]
    dens = r["feature_density_log10_histogram"]
    assert dens["bin_edges"] == pytest.approx([-1.0, -0.8, -0.6, -0.4, -0.2, 0.0])
    assert dens["counts"] == [2, 0, 1, 0, 1]
    assert dens["dead_latents"] == 2
    assert "firing_counts" not in r


def test_against_numpy_random_topk_streamed_and_merged() -> None:
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 8, 40
    tc = TopKTranscoder(
        torch.randn(d_in, d_sae, generator=g),
        torch.randn(d_sae, generator=g) - 4.0,  # many tokens have fewer than k positive latents
        torch.randn(d_sae, 5, generator=g),
        torch.zeros(5),
        input_site="blocks.1.hook_resid_mid",
        output_site="blocks.1.hook_mlp_out",
        k=6,
    )
    x = torch.randn(301, d_in, generator=g)
    sizes = [1, 99, 17, 184]
    whole, first, second = Sparsity(d_sae), Sparsity(d_sae), Sparsity(d_sae)
    start = 0
    for i, size in enumerate(sizes):
        batch = _batch(tc, x[start : start + size])
        whole.update(batch)
        (first if i < 2 else second).update(batch)
        start += size
    first.merge(second)

    f = tc.encode(x).detach().numpy()
    l0 = (f != 0).sum(axis=1)
    counts = (f != 0).sum(axis=0)
    assert len(set(l0.tolist())) > 2  # a real distribution, not constant k
    for acc in (whole, first):
        r = acc.result()
        assert r["l0_mean"] == pytest.approx(l0.mean(), rel=1e-12)
        assert r["l0_median"] == np.median(l0)
        assert r["l0_std"] == pytest.approx(l0.std(), rel=1e-12)
        assert acc.firing_counts.numpy().tolist() == counts.tolist()
        assert acc.dead_indices().tolist() == np.flatnonzero(counts == 0).tolist()
        assert acc.dense_indices().tolist() == np.flatnonzero(counts / 301 > 0.1).tolist()
        hist = r["l0_histogram"]
        assert hist["counts"] == np.histogram(l0, bins=hist["bin_edges"])[0].tolist()
        dens = r["feature_density_log10_histogram"]
        expected = np.histogram(np.log10(counts[counts > 0] / 301), bins=dens["bin_edges"])[0]
        assert dens["counts"] == expected.tolist()


def test_l0_histogram_wide_range_and_even_median() -> None:
    rng = np.random.default_rng(0)
    d_sae, n = 300, 1000
    l0 = rng.integers(3, 260, size=n)
    f = np.zeros((n, d_sae))
    for value in np.unique(l0):  # vectorised per distinct L0 value, not per token
        f[l0 == value, :value] = 1.0
    acc = Sparsity(d_sae)
    acc.update_from(torch.as_tensor(f))
    r = acc.result()
    hist = r["l0_histogram"]
    edges = hist["bin_edges"]
    assert edges[0] == l0.min() and edges[-1] == l0.max() + 1
    assert len(hist["counts"]) <= 50 and all(b > a for a, b in zip(edges, edges[1:]))
    assert sum(hist["counts"]) == n
    assert hist["counts"] == np.histogram(l0, bins=edges)[0].tolist()
    assert r["l0_median"] == np.median(l0)  # even n: mean of the two middle values


def test_state_size_is_fixed_and_mismatch_raises() -> None:
    acc = Sparsity(7)
    before = {k: (v.shape, v.dtype) for k, v in acc.state.items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        acc.update_from(torch.relu(torch.randn(5, 7, generator=g)))
    assert {k: (v.shape, v.dtype) for k, v in acc.state.items()} == before
    assert acc.result()["n_tokens"] == 500
    with pytest.raises(ValueError):
        acc.update_from(torch.zeros(3, 8))
    with pytest.raises(TypeError, match="shape"):
        acc.merge(Sparsity(8))


def test_empty() -> None:
    r = Sparsity(4).result()
    assert r["n_tokens"] == 0 and math.isnan(r["l0_mean"]) and r["dead_latents"] == 4
    assert r["l0_histogram"] == {"bin_edges": [], "counts": []}
