"""Verdicts from paired bootstrap differences, on real tiny models through the real engine.

Done-when checks: an identical copy yields no winner in any category; a copy with a zeroed
decoder loses on FVU; the full-sample bootstrap statistics equal the pooled metrics; intervals
shrink as more sequences are read.
"""

from __future__ import annotations

import copy
import functools
from datetime import datetime, timezone
from typing import Any

import pytest
import torch

from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.evaluate import package_versions, prepare_runs, run_pass, transcoder_metrics
from transcoderbench.lm import capture, resolve_site
from transcoderbench.metrics import BootstrapOptions, default_accumulators
from transcoderbench.metrics.bootstrap import attach_uncertainty
from transcoderbench.report.comparison import (
    NO_DIFFERENCE,
    comparison_record,
    comparison_summary,
)
from transcoderbench.transcoders import MatryoshkaTranscoder, TopKTranscoder

SEQ_LEN, BATCH = 24, 4
OPTS = BootstrapOptions(bootstrap_resamples=400, bootstrap_seed=3)


def token_list(lm, n_batches: int) -> list:
    return list(
        token_batches(resolve_text_source(None), lm.tokenizer, seq_len=SEQ_LEN, batch_size=BATCH, n_batches=n_batches)
    )


def fitted_transcoders(lm, layer: int = 1, d_sae: int = 48, seed: int = 0) -> dict[str, Any]:
    """A TopK and a Matryoshka transcoder whose decoders are least-squares fits on real activations.

    Random encoders, decoders fitted on the tokens the tests evaluate (the first 6 batches): cheap,
    and they reconstruct clearly better than the mean (FVU well below 1), which a zeroed copy
    must then visibly lose to. (A tiny random model's MLP is hard to predict from random
    features out of sample; in-sample is enough to have a good and a bad transcoder.)
    """
    site_in, site_out = f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out"
    sites = [resolve_site(lm, site_in), resolve_site(lm, site_out)]
    xs, ys = [], []
    for tb in token_list(lm, 6):
        got = capture(lm, tb.input_ids, tb.attention_mask, sites)
        keep = tb.keep.reshape(-1)
        xs.append(got[sites[0].name].reshape(-1, lm.d_model)[keep])
        ys.append(got[sites[1].name].reshape(-1, lm.d_model)[keep])
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    g = torch.Generator().manual_seed(seed)
    d = lm.d_model
    W_enc = torch.randn(d, d_sae, generator=g, dtype=torch.float64) / d**0.5
    b_enc = torch.zeros(d_sae, dtype=torch.float64)
    out = {}
    for kind in ("topk", "matryoshka"):
        kwargs = {"input_site": site_in, "output_site": site_out}
        if kind == "topk":
            tc = TopKTranscoder(W_enc, b_enc, torch.zeros(d_sae, d), torch.zeros(d), k=12, **kwargs)
        else:
            tc = MatryoshkaTranscoder(
                W_enc, b_enc, torch.zeros(d_sae, d), torch.zeros(d), prefix_ends=[8, 24, d_sae], threshold=0.0, **kwargs
            )
        f = tc.double().encode(x)
        design = torch.cat([f, torch.ones(f.shape[0], 1, dtype=torch.float64)], dim=1)
        sol = torch.linalg.lstsq(design, y, driver="gelsd").solution
        with torch.no_grad():
            tc.W_dec.copy_(sol[:-1])
            tc.b_dec.copy_(sol[-1])
        out[kind] = tc.float()
    return out


def evaluate_pass(
    lm, transcoders: dict[str, Any], n_batches: int = 6, options: BootstrapOptions = OPTS, downstream: bool = False
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list]:
    """One real pass -> (meta, metrics by name, runs), metrics built as evaluate_transcoders builds them.

    With ``downstream`` the reconstructions are also spliced into the model (the engine's splice plan).
    """
    make = functools.partial(default_accumulators, bootstrap=options)
    runs = prepare_runs(lm, transcoders, make, n_sequences=n_batches * BATCH)
    tbs = token_list(lm, n_batches)
    plan = None
    if downstream:
        from transcoderbench.evaluate import plan_downstream
        from transcoderbench.metrics.per_sequence import downstream_ratios

        plan = plan_downstream(lm, runs, tbs[:2], n_sequences=n_batches * BATCH)
        for acc in plan.downstream.values():
            if not getattr(acc, "ratio_metrics", None):  # until the Downstream accumulator declares them itself
                acc.ratio_metrics = downstream_ratios(acc.prefix_ends)
    stats = run_pass(lm, runs, tbs, show_progress=False, splice=plan)
    metrics = {}
    for run in runs:
        sites = {
            side: {"name": s.name, "module": s.module_path, "direction": s.direction, "normalize": s.normalize}
            for side, s in (("input", run.input_site), ("output", run.output_site))
        }
        metrics[run.name] = transcoder_metrics(run.name, run.transcoder, run.results(), sites)
    attach_uncertainty({run.name: run.accumulators for run in runs}, metrics, options)
    meta = {
        "created": datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat(),
        "model": lm.describe(),
        "dataset": {"name": "built-in corpus"},
        "tokens": {"seq_len": SEQ_LEN, "batch_size": BATCH, **stats.as_dict()},
        "versions": package_versions(),
    }
    return meta, metrics, runs


def zeroed_decoder(tc):
    broken = copy.deepcopy(tc)
    with torch.no_grad():
        broken.W_dec.zero_()
    return broken


@pytest.fixture(scope="module")
def llama(tiny_lm):
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def fitted(llama):
    return fitted_transcoders(llama)


def test_identical_copy_has_no_winner_in_any_category(llama, fitted):
    tc = fitted["matryoshka"]
    meta, metrics, _ = evaluate_pass(llama, {"ours": tc, "copy": copy.deepcopy(tc)})
    record = comparison_record(meta, metrics)
    assert record["categories"], "no category was decided"
    for cat in record["categories"]:
        assert cat["winner"] is None, cat
        assert cat["verdict"] in (NO_DIFFERENCE, "no difference (identical values)", "not tested (no interval exists)")
    # the paired differences are exactly 0 in every resample, so every interval is [0, 0]
    diffs = record["differences"]["ours - copy"]
    for key in ("fvu", "mse", "cosine_similarity", "l0_mean"):
        assert diffs[key]["low"] == diffs[key]["high"] == diffs[key]["value"] == 0.0
        assert diffs[key]["significant"] is False
    assert all(p["fvu"]["low"] == p["fvu"]["high"] == 0.0 for p in diffs["per_prefix"])
    summary = comparison_summary(meta, metrics)
    assert "no significant difference" in summary
    for field in ("fvu", "mean_l0", "dead_percentage", "absorption"):  # the seed's names, as its users grep them
        assert f"{field} (seed field)" in summary


def test_zeroed_decoder_loses_on_fvu(llama, fitted):
    tc = fitted["topk"]
    meta, metrics, _ = evaluate_pass(llama, {"intact": tc, "zeroed": zeroed_decoder(tc)})
    assert metrics["intact"]["fvu"] < 0.9
    assert metrics["zeroed"]["fvu"] >= 1.0  # a constant prediction (b_dec) explains nothing
    record = comparison_record(meta, metrics)
    cats = {c["name"]: c for c in record["categories"]}
    assert cats["reconstruction"]["winner"] == "intact"
    assert cats["direction"]["winner"] == "intact"
    # Sparsity is identical (same encoder): the decoder does not change which latents fire.
    assert cats["sparsity"]["winner"] is None and cats["sparsity"]["verdict"] == NO_DIFFERENCE
    diff = record["differences"]["intact - zeroed"]["fvu"]
    assert diff["high"] < 0 and diff["significant"]
    assert diff["value"] == pytest.approx(metrics["intact"]["fvu"] - metrics["zeroed"]["fvu"], rel=1e-12)
    # the mirror record holds the same interval, negated
    mirror = metrics["zeroed"]["uncertainty"]["differences"]["intact"]["fvu"]
    assert mirror["low"] == pytest.approx(-diff["high"], rel=1e-12)


def test_full_sample_statistics_equal_pooled_metrics(llama, fitted):
    _, metrics, _ = evaluate_pass(llama, {"mat": fitted["matryoshka"]})
    m = metrics["mat"]
    iv = m["uncertainty"]["intervals"]
    for key in ("fvu", "explained_variance", "mse", "cosine_similarity"):
        assert iv[key]["value"] == pytest.approx(m["reconstruction"][key], rel=1e-10, abs=1e-14), key
        assert iv[key]["low"] <= iv[key]["value"] <= iv[key]["high"], key
    assert iv["l0_mean"]["value"] == pytest.approx(m["sparsity"]["l0_mean"], rel=1e-12)
    pooled = m["prefixes"]["per_prefix"]
    for p, q in zip(m["uncertainty"]["per_prefix"], pooled):
        assert p["prefix_end"] == q["prefix_end"]
        assert p["fvu"]["value"] == pytest.approx(q["fvu"], rel=1e-10)
    assert m["uncertainty"]["n_sequences"] == 6 * BATCH
    # per-prefix L0 counts active latents among the first N: increasing, ending at the full L0
    l0s = [p["l0_mean"] for p in m["sequences"]["per_prefix"]]
    assert l0s == sorted(l0s) and l0s[-1] == pytest.approx(m["sparsity"]["l0_mean"], rel=1e-12)


def test_intervals_shrink_with_more_sequences(llama, fitted):
    """10x the sequences: narrower intervals (the 1/sqrt(n) rate is checked in simulation in test_bootstrap)."""
    tc = fitted["matryoshka"]  # its L0 varies per token (a TopK transcoder's would not)
    widths = []
    for n_batches in (4, 40):
        _, metrics, _ = evaluate_pass(llama, {"t": copy.deepcopy(tc)}, n_batches=n_batches)
        iv = metrics["t"]["uncertainty"]["intervals"]
        widths.append({k: iv[k]["high"] - iv[k]["low"] for k in ("fvu", "l0_mean", "cosine_similarity")})
    for key in widths[0]:
        assert 0 < widths[1][key] < 0.85 * widths[0][key], (key, widths)


def test_intervals_are_off_with_zero_resamples(llama, fitted):
    _, metrics, _ = evaluate_pass(
        llama, {"t": fitted["topk"]}, n_batches=2, options=BootstrapOptions(bootstrap_resamples=0)
    )
    unc = metrics["t"]["uncertainty"]
    assert unc["intervals"] == {} and "turned off" in unc["note"]
    record = comparison_record({}, {"a": metrics["t"], "b": copy.deepcopy(metrics["t"])})
    rec = {c["name"]: c for c in record["categories"]}["reconstruction"]
    assert rec["winner"] is None and rec["verdict"].startswith("not tested")
