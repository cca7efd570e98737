"""Decoder redundancy (blockwise) against a brute-force numpy computation of all pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transcoderbench.metrics import decoder_redundancy


def _planted(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((37, 8))
    W[5] = 3.0 * W[2]  # duplicate direction, different norm
    W[9] = -0.5 * W[2]  # antiparallel: |cos| = 1
    W[11] = W[3] + 0.01 * rng.standard_normal(8)  # near-duplicate
    W[14] = W[7] + 2.0 * rng.standard_normal(8)  # loosely related
    W[20] = 0.0  # zero rows have no direction
    W[30] = 0.0
    return W


def _brute_force(W: np.ndarray, threshold: float) -> dict:
    keep = np.linalg.norm(W, axis=1) > 0
    U = W[keep] / np.linalg.norm(W[keep], axis=1, keepdims=True)
    C = np.abs(U @ U.T)
    n = U.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]  # all pairs, tiny matrix
    above = sum(C[i, j] > threshold for i, j in pairs)
    np.fill_diagonal(C, -np.inf)
    max_abs = np.minimum(C.max(axis=1), 1.0)
    return {
        "n_zero_rows": int((~keep).sum()),
        "n_latents_compared": n,
        "n_pairs": len(pairs),
        "redundant_pairs": int(above),
        "redundant_pair_fraction": above / len(pairs),
        "redundant_latents": int((max_abs > threshold).sum()),
        "redundant_latent_fraction": (max_abs > threshold).sum() / n,
        "max_abs": max_abs,
    }


@pytest.mark.parametrize("block_size", [1, 5, 8, 37, 1024])
@pytest.mark.parametrize("threshold", [0.9, 0.5])
def test_against_brute_force(block_size: int, threshold: float) -> None:
    W = _planted()
    r = decoder_redundancy(torch.as_tensor(W), threshold=threshold, block_size=block_size)
    ref = _brute_force(W, threshold)
    for key in ("n_zero_rows", "n_latents_compared", "n_pairs", "redundant_pairs", "redundant_latents"):
        assert r[key] == ref[key], key
    assert r["n_latents"] == 37 and r["threshold"] == threshold
    for key in ("redundant_pair_fraction", "redundant_latent_fraction"):
        assert r[key] == pytest.approx(ref[key], rel=1e-12), key
    m = r["max_abs_cos"]
    max_abs = ref["max_abs"]
    assert m["mean"] == pytest.approx(max_abs.mean(), rel=1e-12)
    assert m["median"] == pytest.approx(np.median(max_abs), rel=1e-12)
    for q in (0.5, 0.9, 0.99):
        assert m["quantiles"][str(q)] == pytest.approx(np.quantile(max_abs, q), rel=1e-12)
    assert m["histogram"]["counts"] == np.histogram(max_abs, bins=50, range=(0, 1))[0].tolist()


def test_planted_pairs_by_hand() -> None:
    r = decoder_redundancy(torch.as_tensor(_planted()), threshold=0.9, block_size=4)
    # {2, 5, 9} are one direction up to sign (3 pairs), and {3, 11} a near-duplicate (1 pair);
    # no other pair of these random 8-d rows passes 0.9 (seed 0).
    assert r["redundant_pairs"] == 4
    assert r["redundant_latents"] == 5
    assert r["n_zero_rows"] == 2 and r["n_pairs"] == 35 * 34 // 2


def test_float32_close_to_float64() -> None:
    W = np.random.default_rng(1).standard_normal((64, 16))
    r64 = decoder_redundancy(torch.as_tensor(W), threshold=0.6, block_size=10)
    r32 = decoder_redundancy(torch.as_tensor(W, dtype=torch.float32), threshold=0.6, block_size=10)
    assert r32["max_abs_cos"]["mean"] == pytest.approx(r64["max_abs_cos"]["mean"], rel=1e-5)
    assert r32["redundant_pairs"] == _brute_force(W, 0.6)["redundant_pairs"]


def test_degenerate() -> None:
    r = decoder_redundancy(torch.zeros(3, 4))
    assert r["n_zero_rows"] == 3 and r["n_pairs"] == 0 and math.isnan(r["redundant_pair_fraction"])
    r = decoder_redundancy(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert r["n_latents_compared"] == 1 and math.isnan(r["max_abs_cos"]["mean"])
    r = decoder_redundancy(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))
    assert r["redundant_pairs"] == 1 and r["max_abs_cos"]["median"] == 1.0
    with pytest.raises(ValueError):
        decoder_redundancy(torch.zeros(4))
