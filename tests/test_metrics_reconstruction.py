"""Reconstruction metrics against sklearn / plain numpy, streamed, merged, and per prefix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from transcoderbench.metrics import (
    PrefixReconstruction,
    Reconstruction,
    Sparsity,
    TranscoderBatch,
    decoder_redundancy,
    default_accumulators,
    weight_metrics,
)
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder

N, D = 500, 12
BATCH_SIZES = [3, 50, 7, 128, 1, 200, 111]  # uneven, including a one-token batch
EXACT_KEYS = [
    "n_tokens", "fvu", "explained_variance", "mse", "mae", "cosine_similarity", "l2_ratio",
    "relative_reconstruction_bias", "total_variance_per_token", "cosine_zero_norm_tokens",
    "zero_target_norm_tokens",
]  # fmt: skip


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets with a nonzero mean and unequal per-dimension variances, and a noisy estimate."""
    rng = np.random.default_rng(seed)
    mean = 3.0 * rng.standard_normal(D)
    scale = np.exp(rng.standard_normal(D))
    y = mean + scale * rng.standard_normal((N, D))
    y_hat = 0.8 * y + 0.3 * scale * rng.standard_normal((N, D)) + 0.1
    return y, y_hat


def _batch(y: np.ndarray | torch.Tensor, y_hat: np.ndarray | torch.Tensor) -> TranscoderBatch:
    y, y_hat = torch.as_tensor(y), torch.as_tensor(y_hat)
    n = y.shape[0]
    return TranscoderBatch(
        x=y, y=y, f=torch.zeros(n, 4, dtype=y.dtype), y_hat_prefixes=y_hat[None], seq_ids=torch.arange(n)
    )


def _run(y: np.ndarray, y_hat: np.ndarray, sizes: list[int]) -> Reconstruction:
    acc = Reconstruction(D)
    start = 0
    for size in sizes:
        acc.update(_batch(y[start : start + size], y_hat[start : start + size]))
        start += size
    assert start == y.shape[0]
    return acc


def _numpy_legacy(y: np.ndarray, y_hat: np.ndarray, sizes: list[int]) -> tuple[float, int]:
    """SAELens legacy EV: per token, centred on its own batch's mean; zero denominators left out."""
    values, excluded, start = [], 0, 0
    for size in sizes:
        yb, yhb = y[start : start + size], y_hat[start : start + size]
        num = ((yb - yhb) ** 2).sum(axis=1)
        den = ((yb - yb.mean(axis=0)) ** 2).sum(axis=1)
        values.append(1 - num[den > 0] / den[den > 0])
        excluded += int((den == 0).sum())
        start += size
    return float(np.concatenate(values).mean()), excluded


def test_against_sklearn_and_numpy() -> None:
    y, y_hat = _data()
    r = _run(y, y_hat, [N]).result()
    err = y - y_hat
    fvu = (err**2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
    assert r["fvu"] == pytest.approx(1 - r2_score(y, y_hat, multioutput="variance_weighted"), rel=1e-12)
    assert r["fvu"] == pytest.approx(fvu, rel=1e-12)
    # The per-dimension average (what "uniform_average" does) is a different number here.
    assert abs(r["fvu"] - (1 - r2_score(y, y_hat, multioutput="uniform_average"))) > 1e-3
    assert r["explained_variance"] == pytest.approx(1 - fvu, rel=1e-12)
    norm_y, norm_yh = np.linalg.norm(y, axis=1), np.linalg.norm(y_hat, axis=1)
    dot = (y * y_hat).sum(axis=1)
    expected = {
        "n_tokens": N,
        "mse": (err**2).mean(),
        "mae": np.abs(err).mean(),
        "cosine_similarity": (dot / (norm_y * norm_yh)).mean(),
        "l2_ratio": (norm_yh / norm_y).mean(),
        "relative_reconstruction_bias": (norm_yh**2).sum() / dot.sum(),
        "total_variance_per_token": ((y - y.mean(axis=0)) ** 2).sum() / N,
        "explained_variance_legacy": _numpy_legacy(y, y_hat, [N])[0],
    }
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, rel=1e-12), key
    cos_torch = torch.nn.functional.cosine_similarity(torch.as_tensor(y), torch.as_tensor(y_hat), dim=1)
    assert r["cosine_similarity"] == pytest.approx(cos_torch.mean().item(), rel=1e-12)
    assert "batch size" in r["explained_variance_legacy_note"]


def test_float32_batches_are_accumulated_in_float64() -> None:
    y, y_hat = _data(1)
    y32, yh32 = y.astype(np.float32), y_hat.astype(np.float32)
    r = _run(y32, yh32, BATCH_SIZES).result()
    y64, yh64 = y32.astype(np.float64), yh32.astype(np.float64)
    assert r["fvu"] == pytest.approx(1 - r2_score(y64, yh64, multioutput="variance_weighted"), rel=1e-10)


def test_streaming_equals_one_batch_except_legacy() -> None:
    y, y_hat = _data(2)
    one = _run(y, y_hat, [N]).result()
    many = _run(y, y_hat, BATCH_SIZES).result()
    for key in EXACT_KEYS:
        assert many[key] == pytest.approx(one[key], rel=1e-10), key
    # Legacy EV is exact per batch, but each token is centred on its own batch's mean, so it
    # changes with the batching (here the small batches have small centred norms).
    legacy, excluded = _numpy_legacy(y, y_hat, BATCH_SIZES)
    assert many["explained_variance_legacy"] == pytest.approx(legacy, rel=1e-12)
    assert many["explained_variance_legacy_excluded_tokens"] == excluded == 1  # the one-token batch
    assert abs(many["explained_variance_legacy"] - one["explained_variance_legacy"]) > 1e-3


def test_merge_halves_equals_all() -> None:
    y, y_hat = _data(3)
    whole = _run(y, y_hat, BATCH_SIZES)
    split = sum(BATCH_SIZES[:4])  # same batches, so even the legacy EV must agree
    first = _run(y[:split], y_hat[:split], BATCH_SIZES[:4])
    second = _run(y[split:], y_hat[split:], BATCH_SIZES[4:])
    first.merge(second)
    assert set(first.result()) == set(whole.result())
    merged = first.result()
    for key, value in whole.result().items():
        assert merged[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-10)), key


def test_merge_mismatch_raises() -> None:
    with pytest.raises(TypeError):
        Reconstruction(D).merge(Sparsity(D))
    with pytest.raises(TypeError, match="shape"):
        Reconstruction(D).merge(Reconstruction(D + 1))
    with pytest.raises(TypeError):
        PrefixReconstruction(D, (2, 4)).merge(PrefixReconstruction(D, (4,)))


def test_state_size_is_fixed() -> None:
    acc = Reconstruction(D)
    before = {k: (v.shape, v.dtype) for k, v in acc.state.items()}
    y, y_hat = _data(4)
    for i in range(100):
        acc.update(_batch(y[i : i + 5], y_hat[i : i + 5]))
    assert {k: (v.shape, v.dtype) for k, v in acc.state.items()} == before
    assert all(v.dtype in (torch.float64, torch.int64) for v in acc.state.values())
    assert acc.result()["n_tokens"] == 500


def test_zero_norms_and_empty() -> None:
    y = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    y_hat = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, -1.0]])
    acc = Reconstruction(2)
    acc.update(_batch(y, y_hat))
    acc.update(_batch(y[2:], y_hat[2:]))  # one token: its centred norm is 0 -> legacy skips it
    r = acc.result()
    cos_last = (6.0 + 1.0) / (np.sqrt(10.0) * np.sqrt(5.0))
    assert r["cosine_similarity"] == pytest.approx((0 + 0 + 2 * cos_last) / 4)  # zero norms count 0
    # torch's eps clamp gives the same 0 for zero vectors
    torch_cos = torch.nn.functional.cosine_similarity(torch.tensor(y), torch.tensor(y_hat), dim=1)
    assert torch_cos[:2].tolist() == [0.0, 0.0]
    assert r["cosine_zero_norm_tokens"] == 2
    assert r["zero_target_norm_tokens"] == 1
    assert r["l2_ratio"] == pytest.approx((0 + 2 * np.sqrt(5.0) / np.sqrt(10.0)) / 3)
    assert r["explained_variance_legacy_excluded_tokens"] == 1
    assert r["explained_variance_legacy"] == pytest.approx(_numpy_legacy(y, y_hat, [3])[0])

    empty = Reconstruction(2)
    empty.update(_batch(np.zeros((0, 2)), np.zeros((0, 2))))
    r = empty.result()
    assert r["n_tokens"] == 0 and np.isnan(r["fvu"]) and np.isnan(r["mse"])


def test_shape_mismatch_raises() -> None:
    y, y_hat = _data()
    with pytest.raises(ValueError):
        Reconstruction(D + 1).update(_batch(y, y_hat))


# ------------------------------------------------------------------ real transcoders


def _matryoshka(seed: int = 0) -> MatryoshkaTranscoder:
    g = torch.Generator().manual_seed(seed)
    d_in, d_sae, d_out = 10, 16, 8
    return MatryoshkaTranscoder(
        torch.randn(d_in, d_sae, generator=g) / 3,
        torch.randn(d_sae, generator=g) * 0.1,
        torch.randn(d_sae, d_out, generator=g) / 4,
        torch.randn(d_out, generator=g),
        input_site="blocks.0.ln2.hook_normalized",
        output_site="blocks.0.hook_mlp_out",
        prefix_ends=(4, 8, 16),
        threshold=0.05,
        k=4,
    )


def _transcoder_batch(tc, n: int, seed: int) -> TranscoderBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tc.d_in, generator=g)
    y = torch.randn(n, tc.d_out, generator=g) + 2.0
    with torch.no_grad():
        f = tc.encode(x)
        return TranscoderBatch(x=x, y=y, f=f, y_hat_prefixes=tc.decode_prefixes(f, x), seq_ids=torch.arange(n))


def test_prefix_reconstruction_matches_standalone() -> None:
    tc = _matryoshka()
    accs = default_accumulators(tc)
    assert set(accs) == {"reconstruction", "sparsity", "prefixes"}
    standalone = [Reconstruction(tc.d_out) for _ in tc.prefix_ends]
    for seed, n in enumerate([40, 13, 77]):
        batch = _transcoder_batch(tc, n, seed)
        for acc in accs.values():
            acc.update(batch)
        with torch.no_grad():
            for end, acc in zip(tc.prefix_ends, standalone):  # decode each prefix by hand
                acc.update_from(batch.y, batch.f[:, :end] @ tc.W_dec[:end] + tc.b_dec)
    per_prefix = accs["prefixes"].result()
    assert per_prefix["prefix_ends"] == [4, 8, 16]
    for entry, end, acc in zip(per_prefix["per_prefix"], tc.prefix_ends, standalone):
        assert entry["prefix_end"] == end
        expected = acc.result()
        for key in EXACT_KEYS + ["explained_variance_legacy"]:
            assert entry[key] == pytest.approx(expected[key], rel=1e-6), (end, key)
    full = accs["reconstruction"].result()
    for key in EXACT_KEYS + ["explained_variance_legacy"]:
        assert per_prefix["per_prefix"][-1][key] == full[key], key
    # The prefixes really are different reconstructions (not the full one repeated).
    assert per_prefix["per_prefix"][0]["fvu"] != full["fvu"]


def test_prefix_merge_and_wrong_prefix_count() -> None:
    tc = _matryoshka(1)
    batches = [_transcoder_batch(tc, n, s) for s, n in enumerate([20, 31])]
    whole, a, b = (PrefixReconstruction(tc.d_out, tc.prefix_ends) for _ in range(3))
    for batch in batches:
        whole.update(batch)
    a.update(batches[0])
    b.update(batches[1])
    a.merge(b)
    for got, want in zip(a.result()["per_prefix"], whole.result()["per_prefix"]):
        assert got["fvu"] == pytest.approx(want["fvu"], rel=1e-10)
        assert got["n_tokens"] == want["n_tokens"] == 51
    with pytest.raises(ValueError):
        PrefixReconstruction(tc.d_out, (8, 16)).update(batches[0])


def test_default_accumulators_and_weight_metrics_non_matryoshka() -> None:
    g = torch.Generator().manual_seed(0)
    tc = JumpReLUTranscoder(
        torch.randn(6, 9, generator=g),
        torch.zeros(9),
        torch.randn(9, 5, generator=g),
        torch.zeros(5),
        input_site="blocks.0.hook_resid_mid",
        output_site="blocks.0.hook_mlp_out",
        threshold=torch.full((9,), 0.1),
    )
    accs = default_accumulators(tc)
    assert set(accs) == {"reconstruction", "sparsity"}
    assert accs["reconstruction"].d_out == 5 and accs["sparsity"].d_sae == 9
    assert weight_metrics(tc) == {"decoder_redundancy": decoder_redundancy(tc.W_dec)}


def test_prefix_state_replaced_keeps_working() -> None:
    """Whoever moves the state (e.g. to a GPU for an all-reduce) replaces the tensors."""
    tc = _matryoshka(2)
    batches = [_transcoder_batch(tc, n, s) for s, n in enumerate([9, 30])]
    reference, moved = (PrefixReconstruction(tc.d_out, tc.prefix_ends) for _ in range(2))
    for batch in batches:
        reference.update(batch)
    moved.update(batches[0])
    moved.state = {k: v.clone() for k, v in moved.state.items()}  # new tensor objects
    moved.update(batches[1])
    for got, want in zip(moved.result()["per_prefix"], reference.result()["per_prefix"]):
        assert got["n_tokens"] == want["n_tokens"] == 39
        assert got["fvu"] == pytest.approx(want["fvu"], rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu() -> None:
    tc = _matryoshka(3)
    cpu_batch = _transcoder_batch(tc, 64, 0)
    fields = ("x", "y", "f", "y_hat_prefixes", "seq_ids")
    cuda_batch = TranscoderBatch(**{k: getattr(cpu_batch, k).cuda() for k in fields})
    on_cpu, on_cuda = default_accumulators(tc), default_accumulators(tc)
    for acc in on_cpu.values():
        acc.update(cpu_batch)
    for acc in on_cuda.values():
        acc.update(cuda_batch)
    assert all(v.device.type == "cpu" for acc in on_cuda.values() for v in acc.state.values())
    got, want = on_cuda["reconstruction"].result(), on_cpu["reconstruction"].result()
    for key in EXACT_KEYS + ["explained_variance_legacy"]:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    assert on_cuda["sparsity"].result() == on_cpu["sparsity"].result()
    W = tc.W_dec.detach().double()
    assert decoder_redundancy(W.cuda(), block_size=5)["max_abs_cos"]["mean"] == pytest.approx(
        decoder_redundancy(W, block_size=5)["max_abs_cos"]["mean"], rel=1e-12
    )
