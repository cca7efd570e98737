"""SequenceStats through the real engine on other model families, and its conventions."""

from __future__ import annotations

import functools

import pytest
import torch

from test_engine import batches, random_transcoders, reference_activations
from transcoderbench.evaluate import prepare_runs, run_pass
from transcoderbench.metrics import (
    BootstrapOptions,
    Reconstruction,
    SequenceStats,
    TranscoderBatch,
    default_accumulators,
)
from transcoderbench.metrics.bootstrap import bootstrap_statistics


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_sequence_sums_match_pooled_metrics_and_hand_prefix_l0(tiny_lm, family):
    lm = tiny_lm(family)
    layer = 1 if family == "gemma2" else 0
    tcs = random_transcoders(lm.d_model, layer)
    if family == "gpt2":
        tcs.pop("jump")  # GPT-2 has no RMS-normalised site; the Matryoshka one reads resid_mid
    opts = BootstrapOptions(bootstrap_resamples=100)
    tbs = batches(lm)
    runs = prepare_runs(
        lm,
        tcs,
        functools.partial(default_accumulators, bootstrap=opts),
        n_sequences=len(tbs) * tbs[0].input_ids.shape[0],
    )
    run_pass(lm, runs, tbs, show_progress=False)
    for run in runs:
        res = run.results()
        full, boot, n_seq = bootstrap_statistics(run.accumulators, opts)
        assert n_seq == res["sequences"]["n_sequences"] == len(tbs) * tbs[0].input_ids.shape[0]
        assert res["sequences"]["n_tokens"] == res["reconstruction"]["n_tokens"]
        for key in ("fvu", "mse", "cosine_similarity"):
            assert full[key] == pytest.approx(res["reconstruction"][key], rel=1e-10), (run.name, key)
        assert full["l0_mean"] == pytest.approx(res["sparsity"]["l0_mean"], rel=1e-12)
        assert boot["fvu"].shape == (100,)
    if family == "gemma2":  # per-prefix L0 by hand, from activations captured with plain hooks
        mat = next(run for run in runs if run.name == "mat")
        x, _, keep = reference_activations(lm, tbs, layer)
        f = tcs["mat"].double().encode(x[keep])
        want = [(f[:, :end] != 0).sum(1).double().mean().item() for end in (8, 24, 48)]
        got = [p["l0_mean"] for p in mat.results()["sequences"]["per_prefix"]]
        assert got == pytest.approx(want, rel=1e-12)


def test_cosine_of_zero_vectors_follows_reconstruction():
    y = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    y_hat = torch.tensor([[1.0, 1.0], [0.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    batch = TranscoderBatch(x=y, y=y, f=torch.ones(3, 4), y_hat_prefixes=y_hat[None], seq_ids=torch.tensor([0, 0, 1]))
    acc, rec = SequenceStats(2, 4, 2, (), BootstrapOptions(bootstrap_resamples=100)), Reconstruction(2)
    acc.update(batch)
    rec.update(batch)
    full, _, _ = bootstrap_statistics({"s": acc}, acc.bootstrap_options)
    assert full["cosine_similarity"] == pytest.approx(rec.result()["cosine_similarity"], rel=1e-14)
    assert full["cosine_similarity"] == pytest.approx((0 + 0 + 8 / 10) / 3, rel=1e-14)


def test_default_accumulators_keep_sequences_only_with_a_bound():
    tc = random_transcoders(8, 0)["mat"]
    assert "sequences" not in default_accumulators(tc)
    accs = default_accumulators(tc, 12, BootstrapOptions(bootstrap_resamples=150))
    seq = accs["sequences"]
    assert seq.state["per_sequence"].shape == (12, 5 + 2 * 3)
    assert seq.state["resampled_sum_y"].shape == (150, 8)
    assert seq.per_sequence_fields[:5] == ["n_tokens", "sum_y_sq", "sse", "sum_cos", "l0"]
