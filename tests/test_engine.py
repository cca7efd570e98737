"""The single pass, checked against an independent reference built from plain hooks and sklearn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import r2_score

from transcoderbench.data import resolve_text_source, special_token_ids, token_batches
from transcoderbench.errors import UserError
from transcoderbench.evaluate import prepare_runs, run_pass
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder

SEQ_LEN, BATCH, N_BATCHES = 24, 3, 4


def random_transcoders(d: int, layer: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mat = MatryoshkaTranscoder(
        torch.randn(d, 48, generator=g) * 0.4,
        torch.randn(48, generator=g) * 0.1,
        torch.randn(48, d, generator=g) * 0.2,
        torch.randn(d, generator=g) * 0.1,
        input_site=f"blocks.{layer}.hook_mlp_in",
        output_site=f"blocks.{layer}.hook_mlp_out",
        prefix_ends=[8, 24, 48],
        threshold=0.05,
        input_unit_norm=True,
    )
    jump = JumpReLUTranscoder(
        torch.randn(d, 32, generator=g) * 0.4,
        torch.randn(32, generator=g) * 0.1,
        torch.randn(32, d, generator=g) * 0.2,
        torch.zeros(d),
        input_site=f"blocks.{layer}.ln2.hook_normalized",
        output_site=f"blocks.{layer}.hook_mlp_out",
        threshold=torch.rand(32, generator=g) * 0.3,
    )
    return {"mat": mat, "jump": jump}


def batches(lm):
    return list(
        token_batches(resolve_text_source(None), lm.tokenizer, seq_len=SEQ_LEN, batch_size=BATCH, n_batches=N_BATCHES)
    )


def reference_activations(lm, tbs, layer: int):
    """MLP input/output of ``layer`` by plain forward hooks on a full forward (no transcoderbench code)."""
    block = lm.layers[layer]
    if lm.family == "gemma2":
        norm_in, norm_out = block.pre_feedforward_layernorm, block.post_feedforward_layernorm
    else:
        norm_in, norm_out = block.post_attention_layernorm, block.mlp
    got: dict[str, list] = {"x": [], "y": []}
    h1 = norm_in.register_forward_pre_hook(lambda m, a: got["x"].append(a[0].detach().clone()))
    h2 = norm_out.register_forward_hook(lambda m, a, o: got["y"].append(o.detach().clone()))
    try:
        with torch.no_grad():
            for tb in tbs:
                lm.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask)
    finally:
        h1.remove()
        h2.remove()
    specials = torch.tensor(sorted(special_token_ids(lm.tokenizer)))
    keep = torch.cat([~torch.isin(tb.input_ids, specials).reshape(-1) for tb in tbs])
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in got["x"]]).double()
    y = torch.cat([t.reshape(-1, t.shape[-1]) for t in got["y"]]).double()
    return x, y, keep


@pytest.mark.parametrize("family", ["gemma2", "llama"])
def test_pass_matches_hooks_and_sklearn(tiny_lm, family):
    lm = tiny_lm(family)
    layer = 1
    tcs = random_transcoders(lm.d_model, layer)
    runs = prepare_runs(lm, tcs)
    tbs = batches(lm)
    stats = run_pass(lm, runs, tbs, show_progress=False)
    x, y, keep = reference_activations(lm, tbs, layer)
    assert stats.n_tokens_evaluated == int(keep.sum()) < keep.numel()
    assert stats.n_batches == N_BATCHES and stats.n_positions == N_BATCHES * BATCH * SEQ_LEN

    # Matryoshka on resid_mid, by hand: standardise, relu, threshold, decode, unstandardise.
    mat = tcs["mat"].double()
    xm = x[keep]
    mu = xm.mean(-1, keepdim=True)
    sd = (xm - mu).std(-1, keepdim=True)
    f = torch.relu(((xm - mu) / (sd + 1e-5)) @ mat.W_enc + mat.b_enc)
    f = f * (f > mat.threshold)
    y_hat = (f @ mat.W_dec + mat.b_dec) * sd + mu
    res = runs[0].results()
    yk = y[keep].numpy()
    fvu_ref = 1 - r2_score(yk, y_hat.detach().numpy(), multioutput="variance_weighted")
    assert res["reconstruction"]["fvu"] == pytest.approx(fvu_ref, rel=1e-5)
    assert res["sparsity"]["l0_mean"] == pytest.approx((f > 0).sum(-1).double().mean().item(), rel=1e-9)
    for p, end in zip(res["prefixes"]["per_prefix"], (8, 24, 48)):
        yp = (f[:, :end] @ mat.W_dec[:end] + mat.b_dec) * sd + mu
        assert p["fvu"] == pytest.approx(
            1 - r2_score(yk, yp.detach().numpy(), multioutput="variance_weighted"), rel=1e-5
        )

    # JumpReLU on the gain-free normalised input (eps read from the model's own norm module).
    jump = tcs["jump"].double()
    norm = (
        lm.layers[layer].pre_feedforward_layernorm if family == "gemma2" else lm.layers[layer].post_attention_layernorm
    )
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    xn = xm * torch.rsqrt(xm.pow(2).mean(-1, keepdim=True) + eps)
    pre = xn @ jump.W_enc + jump.b_enc
    fj = pre * (pre > jump.threshold)
    yj = fj @ jump.W_dec + jump.b_dec
    res_j = runs[1].results()
    fvu_j = 1 - r2_score(yk, yj.detach().numpy(), multioutput="variance_weighted")
    assert res_j["reconstruction"]["fvu"] == pytest.approx(fvu_j, rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(torch.tensor(yk), yj, dim=-1).mean().item()
    assert res_j["reconstruction"]["cosine_similarity"] == pytest.approx(cos, rel=1e-4)


def test_bos_positions_are_excluded(tiny_lm):
    """Including BOS would change FVU: the engine's value equals the reference without BOS only."""
    lm = tiny_lm("llama")
    tcs = random_transcoders(lm.d_model, 1)
    runs = prepare_runs(lm, {"mat": tcs["mat"]})
    tbs = batches(lm)
    run_pass(lm, runs, tbs, show_progress=False)
    x, y, keep = reference_activations(lm, tbs, 1)
    mat = tcs["mat"].double()
    yh_all = mat(x)[0].detach().numpy()
    with_bos = 1 - r2_score(y.numpy(), yh_all, multioutput="variance_weighted")
    without = 1 - r2_score(y[keep].numpy(), yh_all[keep.numpy()], multioutput="variance_weighted")
    got = runs[0].results()["reconstruction"]["fvu"]
    assert got == pytest.approx(without, rel=1e-5)
    assert abs(with_bos - without) > 1e-3


def test_streaming_equals_one_big_batch(tiny_lm):
    lm = tiny_lm("gpt2")
    tcs = {"mat": random_transcoders(lm.d_model, 0)["mat"]}
    tbs = batches(lm)
    many = prepare_runs(lm, tcs)
    run_pass(lm, many, tbs, show_progress=False)
    merged = type(tbs[0])(
        *(torch.cat([getattr(tb, k) for tb in tbs]) for k in ("input_ids", "attention_mask", "keep", "seq_index"))
    )
    one = prepare_runs(lm, {"mat": random_transcoders(lm.d_model, 0)["mat"]})
    run_pass(lm, one, [merged], show_progress=False)
    a, b = many[0].results(), one[0].results()
    for key in ("fvu", "mse", "mae", "cosine_similarity", "l2_ratio", "relative_reconstruction_bias"):
        assert a["reconstruction"][key] == pytest.approx(b["reconstruction"][key], rel=1e-6), key
    assert a["sparsity"]["l0_mean"] == pytest.approx(b["sparsity"]["l0_mean"], rel=1e-12)
    assert a["sparsity"]["dead_latents"] == b["sparsity"]["dead_latents"]


def test_dead_latents_and_l0_exact_on_hand_built_transcoder(tiny_lm):
    """Latents 0 and 3 always fire (bias only), latent 5 fires on no token, the rest never: L0 = 2."""
    lm = tiny_lm("llama")
    d, n = lm.d_model, 8
    b_enc = torch.full((n,), -5.0)
    b_enc[[0, 3]] = 5.0
    tc = JumpReLUTranscoder(
        torch.zeros(d, n),
        b_enc,
        torch.randn(n, d),
        torch.zeros(d),
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_out",
        threshold=torch.zeros(n),
    )
    runs = prepare_runs(lm, {"hand": tc})
    stats = run_pass(lm, runs, batches(lm), show_progress=False)
    sp = runs[0].results()["sparsity"]
    assert sp["l0_mean"] == 2 and sp["l0_median"] == 2 and sp["l0_std"] == 0
    assert sp["dead_latents"] == n - 2 and sp["n_tokens"] == stats.n_tokens_evaluated
    assert sorted(runs[0].accumulators["sparsity"].dead_indices().tolist()) == [1, 2, 4, 5, 6, 7]
    assert sp["dense_latents"] == 2


def test_forward_stops_after_deepest_needed_layer(tiny_lm):
    lm = tiny_lm("llama")
    calls = []
    handle = lm.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        runs = prepare_runs(lm, {"mat": random_transcoders(lm.d_model, 1)["mat"]})
        stats = run_pass(lm, runs, batches(lm), show_progress=False)
        assert calls == [] and stats.stopped_early_after_layer == 1
        run_pass(lm, runs, batches(lm)[:1], show_progress=False, stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_width_mismatch_is_a_user_error(tiny_lm):
    lm = tiny_lm("llama")
    d = lm.d_model + 3
    tc = JumpReLUTranscoder(
        torch.zeros(d, 4),
        torch.zeros(4),
        torch.zeros(4, d),
        torch.zeros(d),
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_out",
        threshold=torch.zeros(4),
    )
    with pytest.raises(UserError, match=r"d_in=.* but site blocks\.0\.hook_mlp_in .* has width"):
        prepare_runs(lm, {"wide": tc})


def test_layer_out_of_range_is_a_user_error(tiny_lm):
    lm = tiny_lm("llama")
    tc = random_transcoders(lm.d_model, lm.n_layers + 5)["jump"]
    with pytest.raises(UserError):
        prepare_runs(lm, {"far": tc})
