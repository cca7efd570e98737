"""The bootstrap over sequences: weights, exactness of every resample, merging, coverage, shrinkage.

No language model here: synthetic per-token data with a known generating process goes through
the real accumulators, so the truth is known and the intervals can be scored against it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from transcoderbench.errors import UserError
from transcoderbench.metrics import (
    BootstrapOptions,
    Reconstruction,
    SequenceStats,
    Sparsity,
    TranscoderBatch,
)
from transcoderbench.metrics.bootstrap import (
    POISSON1_CDF,
    attach_uncertainty,
    bootstrap_statistics,
    excludes_zero,
    interval,
    poisson_weights,
)
from transcoderbench.metrics.downstream import CleanNextToken, Downstream, prefix_column
from transcoderbench.metrics.per_sequence import (
    PerSequenceAccumulator,
    Ratio,
    downstream_ratios,
)
from transcoderbench.metrics.reconstruction import PrefixReconstruction


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread avoids OpenMP hand-offs (tens of times faster on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ weights
def test_poisson_weights_are_poisson_one():
    w = poisson_weights(7, np.arange(2000), 500)
    assert w.shape == (500, 2000) and np.array_equal(w, np.round(w)) and w.min() >= 0
    assert abs(w.mean() - 1) < 0.005 and abs(w.var() - 1) < 0.01
    pmf = [math.exp(-1) / math.factorial(k) for k in range(5)]
    for k, p in enumerate(pmf):
        assert abs((w == k).mean() - p) < 0.003, k
    # independent across sequences and resamples: correlations near 0
    assert abs(np.corrcoef(w[:, 0:1000].ravel(), w[:, 1000:2000].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(w[:250].ravel(), w[250:].ravel())[0, 1]) < 0.01
    assert POISSON1_CDF[-1] == pytest.approx(1.0, abs=1e-15)


def test_poisson_weights_depend_only_on_seed_resample_and_sequence():
    ids = np.array([3, 17, 2**40 + 5, 0])
    w = poisson_weights(1, ids, 50)
    assert np.array_equal(w[:, ::-1], poisson_weights(1, ids[::-1], 50))
    assert np.array_equal(w[:, 1:2], poisson_weights(1, torch.tensor([17]), 50))
    assert np.array_equal(w[:20], poisson_weights(1, ids, 20))
    assert not np.array_equal(w, poisson_weights(2, ids, 50))


# ------------------------------------------------------ synthetic sequences
def simulate(
    rng: np.random.Generator, n_seq: int, d: int = 3, d_sae: int = 20, noise: float = 0.5, seq_noise: float = 0.4
) -> dict[str, np.ndarray]:
    """Tokens grouped in sequences with shared per-sequence effects (tokens within a sequence correlate).

    y = mu + a_s + e_t, y_hat = y + b_s + eta_t, L0 ~ Binomial(d_sae, p_s). Truth (token-weighted,
    lengths independent of content): FVU = (seq_noise^2 + noise^2) / (0.6^2 + 1), mean L0 = 0.3 d_sae.
    """
    lengths = rng.integers(5, 31, n_seq)
    seq = np.repeat(np.arange(n_seq), lengths)
    n = seq.size
    y = 2.0 + rng.normal(0, 0.6, (n_seq, d))[seq] + rng.normal(0, 1.0, (n, d))
    y_hat = y + rng.normal(0, seq_noise, (n_seq, d))[seq] + rng.normal(0, noise, (n, d))
    p = rng.uniform(0.1, 0.5, n_seq)[seq]
    l0 = rng.binomial(d_sae, p)
    f = (np.arange(d_sae)[None, :] < l0[:, None]).astype(np.float64)
    return {"seq": seq, "y": y, "y_hat": y_hat, "f": f}


TRUE_FVU = (0.4**2 + 0.5**2) / (0.6**2 + 1.0)
TRUE_L0 = 0.3 * 20


def batch_of(
    data: dict[str, np.ndarray], rows=slice(None), y_hat: np.ndarray | None = None, prefix: np.ndarray | None = None
) -> TranscoderBatch:
    y = torch.from_numpy(data["y"][rows])
    yh = torch.from_numpy((data["y_hat"] if y_hat is None else y_hat)[rows])
    prefixes = torch.stack([torch.from_numpy(prefix[rows]), yh]) if prefix is not None else yh[None]
    return TranscoderBatch(
        x=y,
        y=y,
        f=torch.from_numpy(data["f"][rows]),
        y_hat_prefixes=prefixes,
        seq_ids=torch.from_numpy(data["seq"][rows]),
    )


def stats_for(data, options, n_seq=None, prefix_ends=(), **kw) -> SequenceStats:
    acc = SequenceStats(
        data["y"].shape[1], data["f"].shape[1], n_seq or int(data["seq"].max()) + 1, prefix_ends, options
    )
    acc.update(batch_of(data, **kw))
    return acc


def test_full_sample_equals_pooled_metrics_and_every_resample_is_exact():
    rng = np.random.default_rng(0)
    data = simulate(rng, 40)
    prefix = data["y_hat"] * 0.3
    opts = BootstrapOptions(bootstrap_resamples=100, bootstrap_seed=5)
    acc = SequenceStats(3, 20, 40, (5, 20), opts)
    rec, sp, pre = Reconstruction(3), Sparsity(20), PrefixReconstruction(3, (5, 20))
    for rows in np.array_split(np.arange(data["seq"].size), 7):  # several batches
        b = batch_of(data, rows, prefix=prefix)
        for a in (acc, rec, sp, pre):
            a.update(b)
    full, boot, n_seq = bootstrap_statistics({"sequences": acc}, opts)
    assert n_seq == 40
    r = rec.result()
    for key in ("fvu", "explained_variance", "mse", "cosine_similarity"):
        assert full[key] == pytest.approx(r[key], rel=1e-12), key
    assert full["l0_mean"] == pytest.approx(sp.result()["l0_mean"], rel=1e-14)
    assert full["fvu@5"] == pytest.approx(pre.result()["per_prefix"][0]["fvu"], rel=1e-12)
    # Resample r = the tokens of sequence s counted w[r, s] times: sklearn's weighted R^2 is the reference.
    w = poisson_weights(5, np.arange(40), 100)
    y, yh, seq = data["y"], data["y_hat"], data["seq"]
    for i in range(5):
        tw = w[i][seq]
        assert boot["fvu"][i] == pytest.approx(
            1 - r2_score(y, yh, sample_weight=tw, multioutput="variance_weighted"), rel=1e-10
        )
        assert boot["fvu@5"][i] == pytest.approx(
            1 - r2_score(y, prefix, sample_weight=tw, multioutput="variance_weighted"), rel=1e-10
        )
        assert boot["l0_mean"][i] == pytest.approx(np.average(data["f"].sum(1), weights=tw), rel=1e-12)
        cos = (y * yh).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(yh, axis=1)
        assert boot["cosine_similarity"][i] == pytest.approx(np.average(cos, weights=tw), rel=1e-12)
        assert boot["mse"][i] == pytest.approx(np.average(((y - yh) ** 2).mean(1), weights=tw), rel=1e-12)


def test_two_ranks_merged_equal_one_process():
    """Data parallel: each rank reads other sequences; after merging, intervals are identical."""
    rng = np.random.default_rng(1)
    data = simulate(rng, 30)
    opts = BootstrapOptions(bootstrap_resamples=200)
    one = stats_for(data, opts)
    even = data["seq"] % 2 == 0
    rank0, rank1 = stats_for(data, opts, n_seq=30, rows=even), stats_for(data, opts, n_seq=30, rows=~even)
    rank0.merge(rank1)
    a, b = {"t": {}}, {"t": {}}
    attach_uncertainty({"t": {"sequences": one}}, a)
    attach_uncertainty({"t": {"sequences": rank0}}, b)
    for key, iv in a["t"]["uncertainty"]["intervals"].items():
        for field in ("value", "low", "high"):
            assert b["t"]["uncertainty"]["intervals"][key][field] == pytest.approx(iv[field], rel=1e-12), key


def test_unseen_sequences_change_nothing():
    rng = np.random.default_rng(2)
    data = simulate(rng, 20)
    opts = BootstrapOptions(bootstrap_resamples=150)
    small, big = stats_for(data, opts, n_seq=20), stats_for(data, opts, n_seq=500)
    a, b = {"t": {}}, {"t": {}}
    attach_uncertainty({"t": {"sequences": small}}, a)
    attach_uncertainty({"t": {"sequences": big}}, b)
    assert a == b and a["t"]["uncertainty"]["n_sequences"] == 20


def test_coverage_is_near_nominal():
    """200 simulated evaluations of 100 sequences: the 95% interval covers the truth ~95% of the time.

    Binomial sampling error of the observed rate over 200 evaluations is about 0.015.
    """
    rng = np.random.default_rng(3)
    opts = BootstrapOptions(bootstrap_resamples=200)
    hits = {"fvu": 0, "l0_mean": 0, "fvu_diff": 0}
    reps = 200
    true_diff = TRUE_FVU - (0.2**2 + 0.5**2) / (0.6**2 + 1.0)
    for rep in range(reps):
        opts.bootstrap_seed = rep
        data = simulate(rng, 100)
        seq = data["seq"]
        better = data["y"] + rng.normal(0, 0.2, (100, 3))[seq] + rng.normal(0, 0.5, data["y"].shape)
        m = {"a": {}, "b": {}}
        attach_uncertainty(
            {"a": {"sequences": stats_for(data, opts)}, "b": {"sequences": stats_for(data, opts, y_hat=better)}}, m
        )
        iv = m["a"]["uncertainty"]["intervals"]
        hits["fvu"] += iv["fvu"]["low"] <= TRUE_FVU <= iv["fvu"]["high"]
        hits["l0_mean"] += iv["l0_mean"]["low"] <= TRUE_L0 <= iv["l0_mean"]["high"]
        d = m["a"]["uncertainty"]["differences"]["b"]["fvu"]
        hits["fvu_diff"] += d["low"] <= true_diff <= d["high"]
    for key, h in hits.items():
        assert 0.90 <= h / reps <= 0.985, (key, h / reps)


def test_intervals_shrink_like_one_over_sqrt_n():
    rng = np.random.default_rng(4)
    opts = BootstrapOptions(bootstrap_resamples=400)
    widths: dict[int, list[float]] = {100: [], 400: []}
    for n_seq in widths:
        for _ in range(8):
            m = {"t": {}}
            attach_uncertainty({"t": {"sequences": stats_for(simulate(rng, n_seq), opts)}}, m)
            iv = m["t"]["uncertainty"]["intervals"]["fvu"]
            widths[n_seq].append(iv["high"] - iv["low"])
    ratio = np.mean(widths[400]) / np.mean(widths[100])
    assert 0.38 < ratio < 0.65, ratio  # 1/sqrt(4) = 0.5


# ------------------------------------------------------- the convention
class Counts(PerSequenceAccumulator):
    """A minimal user of the per-sequence convention: a ratio metric over two columns."""

    ratio_metrics = {
        "rate": Ratio({"hits": 1.0}, {"n_tokens": 1.0}),
        "odds": Ratio({"hits": 1.0}, {"n_tokens": 1.0, "hits": -1.0}),
    }

    def __init__(self, n: int) -> None:
        super().__init__(n, ["n_tokens", "hits"])

    def update(self, batch: TranscoderBatch) -> None:
        hit = (batch.y[:, 0] > 0).double()
        self.add_per_sequence(batch.seq_ids, torch.stack([torch.ones_like(hit), hit], dim=1))


def test_ratio_metrics_of_a_custom_accumulator():
    rng = np.random.default_rng(5)
    data = simulate(rng, 25)
    acc = Counts(25)
    acc.update(batch_of(data))
    full, boot, _ = bootstrap_statistics({"counts": acc}, BootstrapOptions(bootstrap_resamples=100))
    hits = data["y"][:, 0] > 0
    assert full["rate"] == pytest.approx(hits.mean(), rel=1e-14)
    assert full["odds"] == pytest.approx(hits.sum() / (~hits).sum(), rel=1e-14)
    w = poisson_weights(0, np.arange(25), 100)[3][data["seq"]]
    assert boot["rate"][3] == pytest.approx(np.average(hits, weights=w), rel=1e-12)
    with pytest.raises(ValueError, match="beyond"):
        acc.add_per_sequence(torch.tensor([25]), torch.ones(1, 2))


def test_downstream_accumulator_follows_the_convention():
    """The downstream accumulator's per-sequence columns give the same CE/KL/loss recovered as its result."""
    ends = (4, 8)
    acc = Downstream(ends, n_sequences=6)
    acc.ratio_metrics = downstream_ratios(ends)
    g = torch.Generator().manual_seed(0)
    seq_ids = torch.tensor([0, 0, 1, 2, 2, 2, 4, 5, 5])
    labels = torch.randint(0, 7, (9,), generator=g)
    clean = CleanNextToken(torch.randn(9, 7, generator=g), labels)
    acc.update_column("clean", clean.ce, clean.kl, seq_ids)
    for col in ("zero_ablation", "mean_ablation") + tuple(prefix_column(e) for e in ends):
        acc.update_column(col, *clean.versus(torch.randn(9, 7, generator=g)), seq_ids)
    res = acc.result()
    full, boot, n_seq = bootstrap_statistics({"downstream": acc}, BootstrapOptions(bootstrap_resamples=100))
    assert n_seq == 5
    for key in ("ce_clean", "ce_spliced", "delta_loss", "kl_div", "loss_recovered_zero", "loss_recovered_mean"):
        assert full[key] == pytest.approx(res[key], rel=1e-12), key
    for p in res["per_prefix"]:
        assert full[f"delta_loss@{p['prefix_end']}"] == pytest.approx(p["delta_loss"], rel=1e-12)
        assert full[f"kl_div@{p['prefix_end']}"] == pytest.approx(p["kl_div"], rel=1e-12)
    # 5 sequences: a resample may weight them all 0 (probability e^-5); such resamples are undefined
    assert np.isfinite(boot["delta_loss"]).mean() > 0.95


# ------------------------------------------------------------- helpers
def test_interval_and_significance():
    iv = interval(0.5, np.linspace(0, 1, 1001), 0.9)
    assert iv["low"] == pytest.approx(0.05) and iv["high"] == pytest.approx(0.95)
    assert not excludes_zero(interval(0.0, np.zeros(10), 0.95))
    assert excludes_zero({"low": 0.1, "high": 0.3}) and excludes_zero({"low": -0.3, "high": -0.1})
    assert interval(float("nan"), np.zeros(5), 0.95)["low"] is None


@pytest.mark.parametrize(
    "kw", [{"bootstrap_resamples": -1}, {"bootstrap_resamples": 20}, {"confidence": 1.0}, {"confidence": 0.0}]
)
def test_bad_options_are_user_errors(kw):
    with pytest.raises(UserError):
        BootstrapOptions(**kw).check()
