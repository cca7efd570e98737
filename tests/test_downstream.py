"""Spliced evaluation against the model's own loss and a plain-hook full forward written in the test."""

from __future__ import annotations

import pytest
import torch

from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.evaluate import plan_downstream, prepare_runs, run_pass
from transcoderbench.metrics.downstream import CleanNextToken
from transcoderbench.transcoders import BatchTopKTranscoder, JumpReLUTranscoder, MatryoshkaTranscoder

SEQ_LEN, BATCH, N_BATCHES = 20, 3, 3
FAMILIES = ["gemma2", "gemma3", "llama", "gpt2"]


def batches(lm, n=N_BATCHES):
    return list(token_batches(resolve_text_source(None), lm.tokenizer, seq_len=SEQ_LEN, batch_size=BATCH, n_batches=n))


def matryoshka(d: int, layer: int, seed: int = 0, cls=MatryoshkaTranscoder, prefix_ends=(8, 20, 40)):
    g = torch.Generator().manual_seed(seed)
    return cls(
        torch.randn(d, 40, generator=g) * 0.5,
        torch.randn(40, generator=g) * 0.1,
        torch.randn(40, d, generator=g) * 0.3,
        torch.randn(d, generator=g) * 0.1,
        input_site=f"blocks.{layer}.hook_mlp_in",
        output_site=f"blocks.{layer}.hook_mlp_out",
        prefix_ends=list(prefix_ends),
        threshold=0.1,
    )


def identity_sae(d: int, site: str, scale: float = 1.0):
    """Reads and writes ``site``; y_hat == scale * y exactly (all latents always active)."""
    return JumpReLUTranscoder(
        torch.eye(d),
        torch.zeros(d),
        torch.eye(d) * scale,
        torch.zeros(d),
        input_site=site,
        output_site=site,
        threshold=torch.full((d,), -float("inf")),
    )


def evaluate(lm, tcs, tbs, *, mean_batches=1, force_full_forward=False, variants_per_pass=4):
    runs = prepare_runs(lm, tcs, n_sequences=len(tbs) * BATCH)
    plan = plan_downstream(
        lm, runs, tbs[:mean_batches], n_sequences=len(tbs) * BATCH, variants_per_pass=variants_per_pass
    )
    if force_full_forward:
        plan.splice_layer = {name: None for name in plan.splice_layer}
    run_pass(lm, runs, tbs, splice=plan, show_progress=False)
    return {run.name: run.results()["downstream"] for run in runs}, plan


def rule_mask(tb):
    """``[B, T-1]``: the rule written out here, independently: made at a kept (spliced) position, target real."""
    made_at_spliced = tb.keep[:, :-1]
    target_real = tb.attention_mask[:, 1:] == 1
    return made_at_spliced & target_real


def labels_for(tb):
    """Labels for the model's own ``labels=`` loss (HF shifts them): token t+1 is the label of position t."""
    labels = torch.full_like(tb.input_ids, -100)
    labels[:, 1:] = tb.input_ids[:, 1:].masked_fill(~rule_mask(tb), -100)
    return labels


def model_loss(lm, tbs, hook=None):
    """Mean next-token loss over kept labels by the model's own ``labels=`` loss, token-weighted over batches."""
    total, count = 0.0, 0
    for tb in tbs:
        labels = labels_for(tb)
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            out = lm.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, labels=labels, use_cache=False)
        total += out.loss.item() * n
        count += n
    return total / count


def mlp_out_module(lm, layer):
    block = lm.layers[layer]
    return block.post_feedforward_layernorm if lm.family in ("gemma2", "gemma3") else block.mlp


def spliced_reference(lm, tc, tbs, layer):
    """CE and KL with ``tc``'s reconstruction forced into the MLP output by a plain hook (full forward)."""
    module = mlp_out_module(lm, layer)
    ce_total, kl_total, count = 0.0, 0.0, 0
    for tb in tbs:
        keep = tb.keep.reshape(-1)
        with torch.no_grad():
            clean = lm.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, use_cache=False).logits.float()
            x_store = {}
            pre = (
                lm.layers[layer].post_attention_layernorm
                if lm.family in ("llama",)
                else (
                    lm.layers[layer].pre_feedforward_layernorm
                    if lm.family.startswith("gemma")
                    else lm.layers[layer].ln_2
                )
            )
            h1 = pre.register_forward_pre_hook(lambda m, a: x_store.__setitem__("x", a[0].detach()))

            def replace(m, a, out):
                flat = out.reshape(-1, out.shape[-1]).clone()
                x = x_store["x"].reshape(-1, out.shape[-1])[keep].float()
                flat[keep] = tc(x)[0].to(flat.dtype)
                return flat.reshape(out.shape)

            h2 = module.register_forward_hook(replace)
            try:
                spliced = lm.model(
                    input_ids=tb.input_ids, attention_mask=tb.attention_mask, use_cache=False
                ).logits.float()
            finally:
                h1.remove()
                h2.remove()
        lab_keep = rule_mask(tb)
        lp_clean = torch.log_softmax(clean[:, :-1][lab_keep], -1).double()
        lp = torch.log_softmax(spliced[:, :-1][lab_keep], -1).double()
        labels = tb.input_ids[:, 1:][lab_keep]
        ce_total += -lp.gather(-1, labels[:, None]).sum().item()
        p = lp_clean.exp()
        kl_total += (p * (lp_clean - lp)).sum().item()
        count += labels.numel()
    return ce_total / count, kl_total / count


@pytest.mark.parametrize("family", FAMILIES)
def test_ce_clean_is_the_models_own_loss(tiny_lm, family):
    lm = tiny_lm(family)
    tbs = batches(lm)
    res, _ = evaluate(lm, {"m": matryoshka(lm.d_model, 1)}, tbs)
    assert res["m"]["ce_clean"] == pytest.approx(model_loss(lm, tbs), rel=1e-5)
    assert res["m"]["n_tokens"] == sum(int(rule_mask(tb).sum()) for tb in tbs)
    assert "spliced position" in res["m"]["token_rule"]


@pytest.mark.parametrize("family", FAMILIES)
def test_spliced_ce_and_kl_match_a_plain_hook_forward(tiny_lm, family):
    lm = tiny_lm(family)
    tbs = batches(lm)
    tc = matryoshka(lm.d_model, 1)
    res, plan = evaluate(lm, {"m": tc}, tbs)
    assert plan.splice_layer["m"] == 1  # the resumed path
    ce, kl = spliced_reference(lm, tc, tbs, 1)
    assert res["m"]["ce_spliced"] == pytest.approx(ce, rel=1e-4)
    assert res["m"]["kl_div"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert res["m"]["delta_loss"] == pytest.approx(ce - res["m"]["ce_clean"], rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_stack_equals_full_forward(tiny_lm, family):
    lm = tiny_lm(family)
    tbs = batches(lm)
    tcs = {"m": matryoshka(lm.d_model, 0), "b": matryoshka(lm.d_model, 1, seed=3)}
    resumed, _ = evaluate(lm, tcs, tbs, variants_per_pass=3)
    full, _ = evaluate(lm, tcs, tbs, force_full_forward=True)
    for name in tcs:
        assert resumed[name]["path"] == "resumed" and full[name]["path"] == "resumed"  # path label set at planning
        for a, b in zip(resumed[name]["per_prefix"], full[name]["per_prefix"]):
            # Loss recovered is a ratio of these CEs (checked below too); on random tiny models its
            # denominator can be ~0, which magnifies float32 rounding, so compare the CEs themselves.
            for key in ("ce_spliced", "kl_div"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (name, key)
        for key in ("ce_zero_ablation", "ce_mean_ablation", "ce_clean"):
            assert resumed[name][key] == pytest.approx(full[name][key], rel=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "llama", "gpt2"])
def test_exact_target_gives_zero_delta_and_full_recovery(tiny_lm, family):
    lm = tiny_lm(family)
    tbs = batches(lm)
    res, _ = evaluate(lm, {"id": identity_sae(lm.d_model, "blocks.1.hook_mlp_out")}, tbs)
    r = res["id"]
    assert r["delta_loss"] == 0.0 and r["kl_div"] == pytest.approx(0.0, abs=1e-7)
    assert r["loss_recovered_zero"] == pytest.approx(1.0, abs=1e-12)
    assert r["loss_recovered_mean"] == pytest.approx(1.0, abs=1e-12)


def test_zero_reconstruction_recovers_nothing(tiny_lm):
    lm = tiny_lm("llama")
    tbs = batches(lm)
    res, _ = evaluate(lm, {"zero": identity_sae(lm.d_model, "blocks.1.hook_mlp_out", scale=0.0)}, tbs)
    r = res["zero"]
    assert r["ce_spliced"] == r["ce_zero_ablation"] and r["loss_recovered_zero"] == 0.0
    assert r["kl_div"] == pytest.approx(r["kl_div_zero_ablation"], rel=1e-12)


def test_mean_ablation_matches_a_hand_computed_baseline(tiny_lm):
    lm = tiny_lm("gpt2")
    tbs = batches(lm)
    res, plan = evaluate(lm, {"m": matryoshka(lm.d_model, 1)}, tbs, mean_batches=2)
    module = mlp_out_module(lm, 1)
    outs = []
    h = module.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
    with torch.no_grad():
        for tb in tbs[:2]:
            lm.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, use_cache=False)
    h.remove()
    kept = torch.cat([o.reshape(-1, o.shape[-1])[tb.keep.reshape(-1)] for o, tb in zip(outs, tbs[:2])])
    mean = kept.double().mean(0)
    assert torch.allclose(plan.site_means["blocks.1.hook_mlp_out"].double(), mean, atol=1e-6)

    class MeanTC(torch.nn.Module):
        def forward(self, x):
            return mean.float().expand(x.shape[0], -1), None

    ce, _ = spliced_reference(lm, MeanTC(), tbs, 1)
    assert res["m"]["ce_mean_ablation"] == pytest.approx(ce, rel=1e-4)


def test_full_prefix_equals_the_same_transcoder_without_prefixes(tiny_lm):
    lm = tiny_lm("gemma2")
    tbs = batches(lm)
    nested = matryoshka(lm.d_model, 1, seed=5)
    plain = matryoshka(lm.d_model, 1, seed=5, cls=BatchTopKTranscoder, prefix_ends=(40,))
    res, _ = evaluate(lm, {"nested": nested, "plain": plain}, tbs)
    full = res["nested"]["per_prefix"][-1]
    assert len(res["nested"]["per_prefix"]) == 3
    assert full["ce_spliced"] == res["nested"]["ce_spliced"] == pytest.approx(res["plain"]["ce_spliced"], rel=1e-6)
    assert full["kl_div"] == pytest.approx(res["plain"]["kl_div"], rel=1e-5)


def test_per_sequence_sums_add_up(tiny_lm):
    lm = tiny_lm("llama")
    tbs = batches(lm)
    runs = prepare_runs(lm, {"m": matryoshka(lm.d_model, 1)}, n_sequences=len(tbs) * BATCH)
    plan = plan_downstream(lm, runs, tbs[:1], n_sequences=len(tbs) * BATCH)
    run_pass(lm, runs, tbs, splice=plan, show_progress=False)
    acc = runs[0].accumulators["downstream"]
    table = acc.state["per_sequence"]
    fields = acc.per_sequence_fields
    assert table[:, 0].sum() == acc.state["n"][0]
    i = fields.index("ce_prefix_40")
    assert table[:, i].sum().item() == pytest.approx(
        acc.state["ce_sum"][acc.columns.index("prefix_40")].item(), rel=1e-12
    )


def test_clean_next_token_matches_the_definitions():
    """CE and KL(p_clean || p) from the log-space shortcut equal log_softmax + the textbook sums (fp64)."""
    g = torch.Generator().manual_seed(0)
    clean_logits = torch.randn(50, 300, generator=g) * 4
    logits = clean_logits + torch.randn(50, 300, generator=g)
    logits[0, :] = -1e4  # a row where the variant gives every token vanishing probability...
    logits[0, 3] = 50.0  # ...but one
    labels = torch.randint(0, 300, (50,), generator=g)
    clean = CleanNextToken(clean_logits, labels)
    ce, kl = clean.versus(logits)
    lp_c = torch.log_softmax(clean_logits.double(), -1)
    lp = torch.log_softmax(logits.double(), -1)
    ref_ce = -lp.gather(-1, labels[:, None]).squeeze(-1)
    ref_kl = (lp_c.exp() * (lp_c - lp)).sum(-1)
    assert torch.allclose(ce.double(), ref_ce, rtol=1e-5, atol=1e-3)
    assert torch.allclose(kl.double(), ref_kl, rtol=1e-5, atol=2e-5)
    assert torch.allclose(clean.ce.double(), -lp_c.gather(-1, labels[:, None]).squeeze(-1), rtol=1e-5, atol=1e-5)
    same_ce, same_kl = clean.versus(clean_logits.clone())
    assert torch.equal(same_kl, torch.zeros(50)) and torch.equal(same_ce, clean.ce)


def padded_batches(lm):
    """Packed batches changed by hand: a mid-sequence EOS in one row and right padding in another."""
    from transcoderbench.data import TokenBatch
    from transcoderbench.data.batching import keep_mask, special_token_ids

    out = []
    eos = lm.tokenizer.eos_token_id
    for tb in batches(lm, n=2):
        ids, mask = tb.input_ids.clone(), tb.attention_mask.clone()
        ids[0, 7] = eos
        mask[1, SEQ_LEN - 5 :] = 0
        ids[1, SEQ_LEN - 5 :] = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else eos
        keep = keep_mask(ids, mask, special_token_ids(lm.tokenizer))
        out.append(TokenBatch(input_ids=ids, attention_mask=mask, keep=keep, seq_index=tb.seq_index))
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_token_rule_against_per_position_ce_by_hand(tiny_lm, family):
    """Per-position CE of a hook-spliced forward, selected by the rule here: BOS->first, EOS- and PAD-made
    predictions and predictions of PAD are left out; the clean and spliced CE and their delta use the same ones."""
    lm = tiny_lm(family)
    tbs = padded_batches(lm)
    tc = matryoshka(lm.d_model, 1, seed=2)
    res, _ = evaluate(lm, {"m": tc}, tbs)
    r = res["m"]
    ce_clean_sum, n = 0.0, 0
    for tb in tbs:
        with torch.no_grad():
            logits = lm.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, use_cache=False).logits
        per_position = torch.nn.functional.cross_entropy(
            logits[:, :-1].double().transpose(1, 2), tb.input_ids[:, 1:], reduction="none"
        )
        mask = rule_mask(tb)
        assert not mask[:, 0].any()  # BOS predicting the first token never counts
        ce_clean_sum += per_position[mask].sum().item()
        n += int(mask.sum())
        assert int(mask.sum()) < int(tb.keep[:, 1:].sum())  # the old rule counted more (BOS->first)
    assert r["n_tokens"] == n
    assert r["ce_clean"] == pytest.approx(ce_clean_sum / n, rel=1e-5)
    ce, kl = spliced_reference(lm, tc, tbs, 1)
    assert r["ce_spliced"] == pytest.approx(ce, rel=1e-4)
    assert r["kl_div"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert r["delta_loss"] == pytest.approx(ce - ce_clean_sum / n, rel=1e-3, abs=1e-6)
