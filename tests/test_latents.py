"""Per-latent evidence: planted latents, exact top-K against an independent reference, merging, matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transcoderbench.config import LatentsConfig
from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.errors import UserError
from transcoderbench.evaluate import prepare_runs, run_pass
from transcoderbench.latents import LatentCollector, finish_latents, parse_subset, plan_latents
from transcoderbench.transcoders import JumpReLUTranscoder

SEQ_LEN, BATCH, N_BATCHES = 24, 3, 4
SITE_IN, SITE_OUT = "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out"


def batches(lm):
    return list(
        token_batches(resolve_text_source(None), lm.tokenizer, seq_len=SEQ_LEN, batch_size=BATCH, n_batches=N_BATCHES)
    )


def kept_tokens(tbs):
    """(token id, global sequence, position) of every kept token, straight from the token batches."""
    ids = torch.cat([tb.input_ids.reshape(-1) for tb in tbs])
    seq = torch.cat([tb.seq_index.repeat_interleave(tb.input_ids.shape[1]) for tb in tbs])
    pos = torch.cat([torch.arange(tb.input_ids.shape[1]).repeat(tb.input_ids.shape[0]) for tb in tbs])
    keep = torch.cat([tb.keep.reshape(-1) for tb in tbs])
    return ids[keep], seq[keep], pos[keep]


def planted(lm, tbs, d_sae: int = 6, seed: int = 0):
    """Latent 0 fires exactly on token ``t`` (its encoder reads the embedding at resid_pre 0); its decoder row is
    the unembedding row of token ``u`` divided by the final norm's weight. Other latents are random."""
    E = lm.model.get_input_embeddings().weight.detach().float()
    W_U = lm.model.get_output_embeddings().weight.detach().float()
    norm_w = lm.model.model.norm.weight.detach().float()
    present = torch.unique(kept_tokens(tbs)[0]).tolist()
    t = next(t for t in present if int((E @ E[t]).argmax()) == t)
    scores = E @ E[t]
    second = scores[torch.arange(len(E)) != t].max()
    g = torch.Generator().manual_seed(seed)
    d = E.shape[1]
    W_enc = torch.randn(d, d_sae, generator=g) * 0.3
    W_enc[:, 0] = E[t]
    threshold = torch.full((d_sae,), 0.05)
    threshold[0] = float((scores[t] + second) / 2)
    u = int(W_U.norm(dim=1).argmax())
    W_dec = torch.randn(d_sae, d, generator=g) * 0.2
    W_dec[0] = W_U[u] / norm_w
    tc = JumpReLUTranscoder(
        W_enc, torch.zeros(d_sae), W_dec, torch.zeros(d), input_site=SITE_IN, output_site=SITE_OUT, threshold=threshold
    )
    return tc, t, u


def collect(lm, tcs, tbs, config: LatentsConfig):
    plan = plan_latents(tcs, config)
    runs = prepare_runs(lm, tcs)
    for run in runs:
        run.accumulators["latents"] = plan.collectors[run.name]
    run_pass(lm, runs, tbs, show_progress=False)
    return plan


def test_planted_token_latent_and_logit_effect(tiny_lm):
    lm = tiny_lm("llama")
    tbs = batches(lm)
    tc, t, u = planted(lm, tbs)
    plan = collect(lm, {"p": tc}, tbs, LatentsConfig(latents=True, latents_top_k=4, latents_samples=3))
    records, _ = finish_latents(plan, {"p": tc}, lm)
    rec = records["p"]
    lat = rec["latents"][0]
    ids, _, _ = kept_tokens(tbs)
    assert lat["count"] == int((ids == t).sum()) > 0
    examples = lat["top"] + lat["samples"]
    assert len(lat["top"]) == min(4, lat["count"])
    for _, s, p in examples:
        assert rec["sequences"][str(s)][p] == t
    assert lat["inputs"][0][0] == t and len(lat["inputs"]) == 1
    assert lat["up"][0][0] == u
    assert rec["logit_lens"] == "logit lens (direct effect)"
    assert str(t) in rec["vocab"] and str(u) in rec["vocab"]


def test_top_k_samples_and_histogram_match_reference(tiny_lm):
    """resid_pre 0 is the token embedding, so f is recomputed from the ids alone."""
    lm = tiny_lm("llama")
    tbs = batches(lm)
    tc, _, _ = planted(lm, tbs, d_sae=8, seed=1)
    k = 5
    plan = collect(lm, {"p": tc}, tbs, LatentsConfig(latents=True, latents_top_k=k, latents_samples=3))
    coll = plan.collectors["p"]
    ids, seq, pos = kept_tokens(tbs)
    E = lm.model.get_input_embeddings().weight.detach().float()
    f = tc.encode(E[ids]).detach()
    st = coll.state
    for j in range(f.shape[1]):
        col = f[:, j]
        want = torch.sort(col[col > 0], descending=True).values[:k]
        got = st["top_act"][j][st["top_seq"][j] >= 0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert int(st["count"][j]) == int((col > 0).sum())
        assert float(st["act_sum"][j]) == pytest.approx(float(col.double().sum()), rel=1e-5)
        active = col > 0
        expected = (
            torch.histogram(col[active].log10(), bins=32, range=(-4.0, 4.0)).hist.long() if active.any() else None
        )
        if expected is not None and float(col[active].max()) < 1e4 and float(col[active].min()) >= 1e-4:
            assert torch.equal(st["hist"].reshape(-1, 32)[j], expected)
        # sampled firings are firings, with their true activation
        for a, s, p in zip(st["smp_act"][j], st["smp_seq"][j], st["smp_pos"][j]):
            if s >= 0:
                row = ((seq == s) & (pos == p)).nonzero()[0, 0]
                assert float(col[row]) == pytest.approx(float(a), rel=1e-6) and col[row] > 0


def test_merge_of_halves_equals_one_pass(tiny_lm):
    lm = tiny_lm("llama")
    tbs = batches(lm)
    cfg = LatentsConfig(latents=True, latents_top_k=3, latents_samples=2)

    def run(parts):
        # At the MLP input every token's activation depends on its context, so no two firings tie (a tie at the
        # K-th place may keep either firing: the kept activations agree, their places may not).
        g = torch.Generator().manual_seed(2)
        d = lm.d_model
        tc = JumpReLUTranscoder(
            torch.randn(d, 8, generator=g),
            torch.zeros(8),
            torch.randn(8, d, generator=g),
            torch.zeros(d),
            input_site="blocks.0.hook_mlp_in",
            output_site=SITE_OUT,
            threshold=torch.full((8,), 0.1),
        )
        return collect(lm, {"p": tc}, parts, cfg).collectors["p"]

    whole, first, second = run(tbs), run(tbs[:2]), run(tbs[2:])
    assert (whole.state["count"] > 3).sum() >= 4 and (second.state["top_seq"] >= 0).all()
    first.merge(second)
    for key, value in whole.state.items():
        assert torch.equal(value, first.state[key]), key
    ev_whole, ev_merged = whole.evidence(), first.evidence()
    assert ev_whole["sequences"].keys() == ev_merged["sequences"].keys()
    for s in ev_whole["sequences"]:
        assert torch.equal(ev_whole["sequences"][s], ev_merged["sequences"][s])
    with pytest.raises(TypeError):
        first.merge(LatentCollector(8, top_k=4, samples=2))


def test_matching_recovers_a_permutation_and_correlation_matches_numpy(tiny_lm):
    lm = tiny_lm("llama")
    tbs = batches(lm)
    a, _, _ = planted(lm, tbs, d_sae=8, seed=3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    b = JumpReLUTranscoder(
        a.W_enc[:, perm],
        a.b_enc[perm],
        a.W_dec[perm],
        a.b_dec,
        input_site=SITE_IN,
        output_site=SITE_OUT,
        threshold=a.threshold[perm],
    )
    plan = collect(lm, {"a": a, "b": b}, tbs, LatentsConfig(latents=True, latents_candidates=3))
    (m,) = [p.matches() for p in plan.pairs]
    inverse = torch.argsort(perm).tolist()
    assert m["best_cos_id"] == inverse
    assert min(m["best_cos"]) == pytest.approx(1.0, abs=1e-5)
    ids, _, _ = kept_tokens(tbs)
    E = lm.model.get_input_embeddings().weight.detach().float()
    fa = a.encode(E[ids]).detach().double().numpy()
    corr = plan.pairs[0].correlation()
    cand = plan.pairs[0].candidates.cpu()
    fb = b.encode(E[ids]).detach().double().numpy()
    for i in range(8):
        for c in range(3):
            x, y = fa[:, i], fb[:, int(cand[i, c])]
            want = np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else 0.0
            assert float(corr[i, c]) == pytest.approx(want, abs=1e-5)
    assert m["unmatched_a"] == [] and m["unmatched_b"] == []


def test_subset_parsing(tmp_path):
    assert parse_subset("2:5", 8).tolist() == [2, 3, 4]
    f = tmp_path / "ids.txt"
    f.write_text("7, 1 3\n")
    assert parse_subset(str(f), 8).tolist() == [1, 3, 7]
    for bad in ("x:y", "9", str(tmp_path / "missing.txt")):
        with pytest.raises(UserError):
            parse_subset(bad, 8)
    f.write_text("1 99")
    with pytest.raises(UserError):
        parse_subset(str(f), 8)
